"""Image-text retrieval recall@K as an ``evaluate`` metric module, with two input formats (configurations):

- ``"scores"`` (the default): one row of image->text scores per image query and the indices of that image's
  captions; text->image scores default to the transpose (a dual encoder's cosine similarities) or are passed as
  ``text_to_image_scores`` (a fusion model's ITM re-ranking, whose two directions differ);
- ``"ranks"``: each query's 0-based rank and its direction (``"i2t"`` or ``"t2i"``) - what
  :mod:`hf_vlp.evaluation.retrieval` computes chunk by chunk for galleries whose score matrix is too large to hold
  (or to pass through ``evaluate``'s Arrow storage: about 0.5 s per million scores).

Ranks count ties against the query and an image query is ranked by its best caption, as
:func:`hf_vlp.evaluation.retrieval.ranks_from_scores` does; recalls are fractions in [0, 1].
"""

import datasets
import evaluate
import numpy as np
import torch

from hf_vlp.evaluation.embeddings import check_positive_ints
from hf_vlp.evaluation.retrieval import (
    QUERY_DIRECTIONS,
    ranks_from_scores,
    recall_metrics_from_ranks,
    text_to_image_from_captions,
)

_CITATION = """\
@inproceedings{karpathy2015deep,
  title={Deep Visual-Semantic Alignments for Generating Image Descriptions},
  author={Karpathy, Andrej and Fei-Fei, Li},
  booktitle={CVPR},
  year={2015}
}
"""

_DESCRIPTION = """\
Recall@K of image->text (i2t) and text->image (t2i) retrieval: the share of queries whose ground truth is among the
K best-scored gallery items. An image query counts its best-ranked caption; ties count against the query (a
collapsed model that scores everything alike gets ~0). Also reports mean_recall, the average of every recall.
"""

_KWARGS_DESCRIPTION = """
Args ("scores" configuration, the default):
    predictions (`list` of `list` of `float`): per image query, its scores of every text ([Ni, Nt] in all).
    references (`list` of `list` of `int`): per image query, the indices of its captions; every text belongs to
        exactly one image.
    text_to_image_scores (`array` [Nt, Ni], optional): the text queries' scores of every image; default the
        transpose of `predictions`.
Args ("ranks" configuration):
    predictions (`list` of `int`): each query's 0-based rank of its (best) ground truth.
    references (`list` of `str`): each query's direction, "i2t" (an image query) or "t2i" (a text query).
Args (both):
    ks (`list` of `int`, default [1, 5, 10]): the K of recall@K.
    prefix (`str`, default ""): put before every key (e.g. "itm_").
Returns:
    {prefix}i2t_r{k}, {prefix}t2i_r{k} (`float`): recall@K of each direction, in [0, 1];
    {prefix}mean_recall (`float`): the average of those recalls.
Examples:
    >>> metric = hf_vlp.evaluation.load_metric("retrieval_recall")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.8, 0.2]], references=[[0], [1]], ks=[1])
    {'i2t_r1': 0.5, 't2i_r1': 1.0, 'mean_recall': 0.75}
"""

CONFIGS = ("default", "scores", "ranks")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalRecall(evaluate.Metric):
    """Image<->text recall@K from score matrices (``"scores"``) or from the queries' ranks (``"ranks"``)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in CONFIGS:
            raise ValueError(
                "retrieval_recall has the configurations 'scores' (the default) and 'ranks', got "
                f"{self.config_name!r}."
            )
        if self.config_name == "ranks":
            features = datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("string")}
            )
        else:
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            # rows of scores come back as Python lists: evaluate's "numpy" format takes plain values only
            format="numpy" if self.config_name == "ranks" else None,
        )

    def _compute(
        self,
        predictions: np.ndarray | list,
        references: np.ndarray | list,
        text_to_image_scores: np.ndarray | torch.Tensor | None = None,
        ks: list[int] | tuple[int, ...] = (1, 5, 10),
        prefix: str = "",
    ) -> dict[str, float]:
        ks = check_positive_ints(ks, "ks")
        if self.config_name == "ranks":
            if text_to_image_scores is not None:
                raise ValueError("text_to_image_scores belongs to the 'scores' configuration; 'ranks' takes ranks.")
            return self._from_ranks(predictions, references, ks, prefix)
        return self._from_scores(predictions, references, text_to_image_scores, ks, prefix)

    @staticmethod
    def _from_ranks(ranks: np.ndarray, directions: np.ndarray, ks: tuple[int, ...], prefix: str) -> dict[str, float]:
        directions = np.asarray(directions).astype(str)
        unknown = sorted(set(directions.tolist()) - set(QUERY_DIRECTIONS))
        if unknown:
            raise ValueError(f"references must name each query's direction, 'i2t' or 't2i'; got {unknown[:5]}.")
        ranks = torch.as_tensor(np.asarray(ranks, dtype=np.int64))
        image_ranks, text_ranks = (ranks[torch.as_tensor(directions == name)] for name in QUERY_DIRECTIONS)
        return recall_metrics_from_ranks(image_ranks, text_ranks, ks, prefix)

    @staticmethod
    def _from_scores(
        image_to_text: list[list[float]],
        captions: list[list[int]],
        text_to_image_scores: np.ndarray | torch.Tensor | None,
        ks: tuple[int, ...],
        prefix: str,
    ) -> dict[str, float]:
        if len({len(row) for row in image_to_text}) != 1:
            raise ValueError("Every image query needs a score for every text: the prediction rows differ in length.")
        image_to_text = torch.as_tensor(np.asarray(image_to_text, dtype=np.float32))
        num_images, num_texts = image_to_text.shape
        mapping = text_to_image_from_captions(captions, num_texts)
        if text_to_image_scores is None:
            scores_t2i = image_to_text.T
        else:
            scores_t2i = torch.as_tensor(np.asarray(text_to_image_scores), dtype=torch.float32)
            if tuple(scores_t2i.shape) != (num_texts, num_images):
                raise ValueError(
                    f"text_to_image_scores must be [texts, images] = [{num_texts}, {num_images}], got "
                    f"{list(scores_t2i.shape)}."
                )
        return recall_metrics_from_ranks(*ranks_from_scores(image_to_text, scores_t2i, mapping), ks, prefix)
