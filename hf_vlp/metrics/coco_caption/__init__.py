"""The ``coco_caption`` evaluate metric module (``coco_caption.py``), loaded with
``hf_vlp.evaluation.load_metric("coco_caption")`` or ``evaluate.load(<this folder>)``."""
