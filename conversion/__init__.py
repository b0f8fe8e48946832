"""Converters from the original releases to hf_vlp, one module per family, reachable as ``hf-vlp convert <family>``
or ``python conversion/convert_<family>.py``: ``convert_clip`` (OpenAI / open_clip / transformers CLIP),
``convert_albef`` (salesforce/ALBEF), ``convert_blip`` (salesforce/BLIP; transformers BLIP through
``blip_transformers``), ``convert_vilt`` (dandelin/ViLT and transformers ViLT directories). Shared: ``common`` (strict
key mapping, verification, atomic output, the command-line skeleton), ``rules`` (timm ViT and BERT/xbert/MED rule
families), ``blip_heads`` (BLIP's layouts and heads) and ``albef_reference`` (the independent forward behind
``convert_albef.py --verify``). No converter imports another.
"""
