"""Converters from the original releases to hf_vlp, one module per family, reachable as ``hf-vlp convert <family>``
or ``python conversion/convert_<family>.py``: ``convert_clip`` (OpenAI / open_clip / transformers CLIP),
``convert_albef`` (salesforce/ALBEF), ``convert_blip`` (salesforce/BLIP; transformers BLIP through
``blip_transformers``), ``convert_vilt`` (dandelin/ViLT and transformers ViLT directories), ``convert_vlmo``
(microsoft/unilm VLMo: bare ``.pt``, Lightning, DeepSpeed). Shared: ``common`` (strict key mapping, verification,
atomic output, the command-line skeleton), ``rules`` (timm ViT, BERT/xbert/MED and VLMo rule families),
``blip_heads`` (BLIP's layouts and heads), ``lightning_releases`` (what the ViLT and VLMo releases share) and the
independent forwards behind ``--verify``: ``albef_reference`` and ``vlmo_reference`` (transformers' BEiT layers). No
converter imports another.
"""
