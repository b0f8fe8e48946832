"""COCO caption metrics (BLEU-1..4, CIDEr-D) as an ``evaluate`` metric module.

The scoring is :func:`hf_vlp.evaluation.captioning.coco_caption_scores`: the scorers of ``pycocoevalcap`` (the COCO
caption evaluation code; pure Python for these metrics) over captions tokenised by a pure-Python stand-in for the PTB
tokenizer, so no Java is needed. Needs ``pip install pycocoevalcap`` (or ``pip install 'hf_vlp[captioning]'``).
"""

import evaluate

from hf_vlp.evaluation.captioning import coco_caption_scores
from hf_vlp.metrics import text_with_one_or_many_references

_CITATION = """\
@article{chen2015microsoft,
  title={Microsoft {COCO} Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
          Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""

_DESCRIPTION = """\
Corpus BLEU-1..4 and CIDEr-D of one generated caption per image against the image's reference captions, as the COCO
caption evaluation reports them (BLEU with the closest reference length for the brevity penalty; CIDEr-D with sigma
6, x10). Captions are lowercased and tokenised as the PTB tokenizer does plain English, punctuation dropped. CIDEr's
document frequencies come from the evaluated references, so it needs several images to mean much.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`, or `list` of `str`): each image's reference captions (or one caption).
Returns:
    Bleu_1, Bleu_2, Bleu_3, Bleu_4 (`float`): corpus BLEU-n in [0, 1];
    CIDEr (`float`): CIDEr-D in [0, 10] (usually reported x100).
Examples:
    >>> metric = hf_vlp.evaluation.load_metric("coco_caption")
    >>> scores = metric.compute(predictions=["a dog runs"], references=[["a dog runs", "a dog is running"]])
    >>> round(scores["Bleu_1"], 6)
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoCaption(evaluate.Metric):
    """BLEU-1..4 and CIDEr-D with the COCO caption scorers."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=text_with_one_or_many_references(),
            reference_urls=["https://github.com/tylin/coco-caption", "https://pypi.org/project/pycocoevalcap/"],
        )

    def _compute(self, predictions: list[str], references: list) -> dict[str, float]:
        return coco_caption_scores(predictions, references)
