"""The ``retrieval_recall`` evaluate metric module (``retrieval_recall.py``), loaded with
``hf_vlp.evaluation.load_metric("retrieval_recall")`` or ``evaluate.load(<this folder>)``."""
