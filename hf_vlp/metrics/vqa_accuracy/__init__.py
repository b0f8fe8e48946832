"""The ``vqa_accuracy`` evaluate metric module (``vqa_accuracy.py``), loaded with
``hf_vlp.evaluation.load_metric("vqa_accuracy")`` or ``evaluate.load(<this folder>)``."""
