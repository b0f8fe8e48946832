"""The project's metrics as ``evaluate`` metric modules, shipped inside the package so they load offline.

Each folder ``<name>/`` holds the module script ``<name>.py``, loadable with ``evaluate.load(<folder>)`` (or with
:func:`hf_vlp.evaluation.load_metric`, which finds the folder in the installed package):

- ``vqa_accuracy``: VQAv2 accuracy with the official answer normalisation and leave-one-out averaging;
- ``retrieval_recall``: image->text and text->image recall@K from score matrices (``"scores"``, the default) or from
  each query's rank (``"ranks"``, what the chunked gallery evaluations produce);
- ``coco_caption``: BLEU-1..4 and CIDEr-D with the COCO caption scorers (``pycocoevalcap``).

The scripts compute through :mod:`hf_vlp.evaluation`, so a metric gives the same numbers through ``evaluate`` and
through the evaluation functions of the training tasks (which call these modules).
"""

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent

__all__ = ["METRICS_DIR", "text_with_one_or_many_references"]


def text_with_one_or_many_references() -> list[Any]:
    """``evaluate`` features for a text prediction against one reference or a list of them (captions, VQA answers).
    One reference comes first: a list does not encode as a string, but a string would encode as a list of letters."""
    import datasets

    text = datasets.Value("string")
    return [
        datasets.Features({"predictions": text, "references": text}),
        datasets.Features({"predictions": text, "references": datasets.Sequence(text)}),
    ]
