"""VQA accuracy as the official VQAv2 evaluation computes it, as an ``evaluate`` metric module.

The scoring lives in :mod:`hf_vlp.evaluation.vqa_answers` (normalisation, leave-one-out averaging, questions with
fewer than ten answers); this module gives it ``evaluate``'s interface (``add_batch``, ``compute``, distributed
gathering).
"""

import evaluate

from hf_vlp.evaluation.vqa_answers import vqa_score
from hf_vlp.metrics import text_with_one_or_many_references

_CITATION = """\
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
"""

_DESCRIPTION = """\
VQA accuracy: each predicted answer and the question's human answers are normalised as the official VQA evaluation
does (punctuation, periods, number words to digits, articles, contractions); the question's accuracy is the mean,
over the subsets that leave one human answer out, of min(1, matching answers / 3). With ten answers, 1, 2, 3 and 4+
matching annotators score 0.3, 0.6, 0.9 and 1.0. One answer is scored by exact match after normalisation; with two
or three answers the threshold is the answers left in a subset (n - 1). The result is the mean over questions, in
[0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the predicted answer of each question.
    references (`list` of `list` of `str`, or `list` of `str`): each question's human answers (ten in VQAv2), or
        its single answer.
Returns:
    vqa_accuracy (`float`): the mean VQA accuracy of the questions, in [0, 1].
Examples:
    >>> metric = hf_vlp.evaluation.load_metric("vqa_accuracy")
    >>> metric.compute(predictions=["Two", "a dog"], references=[["2"] * 10, ["dog"] * 2 + ["cat"] * 8])
    {'vqa_accuracy': 0.8}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
    """VQAv2 accuracy (official normalisation and leave-one-out averaging)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=text_with_one_or_many_references(),
            reference_urls=["https://github.com/GT-Vision-Lab/VQA", "https://visualqa.org/evaluation.html"],
        )

    def _compute(self, predictions: list[str], references: list) -> dict[str, float]:
        if not predictions:
            raise ValueError("No predictions to score: pass at least one question's answer.")
        scores = [vqa_score(prediction, answers) for prediction, answers in zip(predictions, references)]
        return {"vqa_accuracy": float(sum(scores) / len(scores))}
