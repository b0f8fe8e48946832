"""hf_vlp's model-card templates (``<architecture>.md``), installed as package data next to ``hf_vlp`` and read with
``importlib.resources`` by :mod:`hf_vlp.integrations.model_card`."""
