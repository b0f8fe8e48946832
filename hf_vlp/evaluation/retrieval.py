"""Image-text retrieval recall@K, computed in chunks so large galleries fit in memory.

A 5k-image / 25k-caption gallery (COCO 5k test) has a 125M-entry similarity matrix; it is never
built. Queries are scored one chunk at a time against the whole gallery and only one integer per
query is kept: its rank.

- image -> text: an image is correct at K if ANY of its captions is among the top-K texts, so
  its rank is the number of other images' captions scoring at least as high as its best caption.
- text -> image: the rank of the caption's own image among all images.

Ties count against the query (a collapsed model that maps everything to one vector scores
~0, not 1). Recalls are fractions in [0, 1], computed from the ranks by the packaged ``retrieval_recall`` metric
module (:mod:`hf_vlp.metrics`; ``evaluate``'s interface for the same numbers).

``make_compute_metrics`` adapts this to ``transformers.Trainer(compute_metrics=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import check_positive_ints, embed_images, embed_texts
from .metric_modules import compute_metric

__all__ = [
    "QUERY_DIRECTIONS",
    "RetrievalComputeMetrics",
    "image_to_text_ranks",
    "make_compute_metrics",
    "ranks_from_scores",
    "recall_at_k",
    "recall_at_k_from_scores",
    "recall_metrics",
    "recall_metrics_from_ranks",
    "retrieval_metrics_from_model",
    "retrieval_recall",
    "text_to_image_from_captions",
    "text_to_image_ranks",
]

# the two query directions, as the metric keys name them: image -> text, text -> image
QUERY_DIRECTIONS = ("i2t", "t2i")


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")


def _prepare_embeddings(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    image_embeds, text_embeds = torch.as_tensor(image_embeds), torch.as_tensor(text_embeds)
    for name, embeds in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if embeds.dim() != 2 or embeds.shape[0] == 0:
            raise ValueError(f"`{name}` must be a non-empty [N, E] matrix, got shape {tuple(embeds.shape)}.")
        if not torch.isfinite(embeds).all():
            raise ValueError(f"`{name}` contains NaN or infinite values; the model's features are broken.")
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"Embedding sizes differ: images {image_embeds.shape[1]}, texts {text_embeds.shape[1]}; both "
            "must come from the same joint embedding space."
        )
    image_embeds = image_embeds.float()
    text_embeds = text_embeds.to(image_embeds.device).float()
    if normalize:
        image_embeds, text_embeds = F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)
    return image_embeds, text_embeds


def _prepare_text_to_image(
    text_to_image: Sequence[int] | torch.Tensor | np.ndarray, num_images: int, num_texts: int, device: torch.device
) -> torch.Tensor:
    if not isinstance(text_to_image, torch.Tensor):
        text_to_image = torch.as_tensor(np.asarray(text_to_image))
    mapping = text_to_image.flatten().long().to(device)
    if mapping.shape[0] != num_texts:
        raise ValueError(f"`text_to_image` has {mapping.shape[0]} entries but there are {num_texts} texts.")
    if mapping.min() < 0 or mapping.max() >= num_images:
        raise ValueError(
            f"`text_to_image` must hold image indices in [0, {num_images}); got values in "
            f"[{int(mapping.min())}, {int(mapping.max())}]."
        )
    captions_per_image = torch.bincount(mapping, minlength=num_images)
    uncaptioned = (captions_per_image == 0).nonzero().flatten().tolist()
    if uncaptioned:
        raise ValueError(
            f"{len(uncaptioned)} image(s) have no caption in `text_to_image` (first: {uncaptioned[:5]}); "
            "every gallery image needs at least one caption — drop caption-less images first."
        )
    return mapping


def _count_at_least(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per row, how many scores are >= that row's threshold (int32 sums are ~2x faster on CPU)."""
    return (scores >= thresholds[:, None]).sum(dim=1, dtype=torch.int32).long()


def _image_ranks(
    score_rows: Callable[[int, int], torch.Tensor], num_images: int, text_to_image: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Per image, the number of other images' captions scoring at least as high as its best caption; ``score_rows(
    start, stop)`` gives the ``[stop - start, Nt]`` scores of images ``start..stop``."""
    # Group caption indices by image so a chunk of images owns one contiguous run of captions.
    caption_order = torch.argsort(text_to_image, stable=True)
    caption_owner = text_to_image[caption_order]
    run_starts = torch.searchsorted(caption_owner, torch.arange(num_images + 1, device=caption_owner.device))
    ranks = []
    for start in range(0, num_images, chunk_size):
        stop = min(start + chunk_size, num_images)
        scores = score_rows(start, stop)
        run = slice(int(run_starts[start]), int(run_starts[stop]))
        owners = caption_owner[run] - start
        caption_scores = scores[owners, caption_order[run]]
        best = scores.new_full((stop - start,), float("-inf")).scatter_reduce(0, owners, caption_scores, "amax")
        own_at_best = owners.new_zeros(stop - start).scatter_add_(
            0, owners, (caption_scores >= best[owners]).long()
        )
        ranks.append(_count_at_least(scores, best) - own_at_best)
    return torch.cat(ranks)


def _text_ranks(
    score_rows: Callable[[int, int], torch.Tensor], num_texts: int, text_to_image: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Per text, the number of other images scoring at least as high as its own; ``score_rows(start, stop)`` gives
    the ``[stop - start, Ni]`` scores of texts ``start..stop``."""
    ranks = []
    for start in range(0, num_texts, chunk_size):
        scores = score_rows(start, min(start + chunk_size, num_texts))
        own_score = scores.gather(1, text_to_image[start : start + chunk_size, None]).squeeze(1)
        ranks.append(_count_at_least(scores, own_score) - 1)  # minus the own image itself
    return torch.cat(ranks)


def image_to_text_ranks(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """For each image, the 0-based rank of its best-scoring caption among all texts ``[Ni]``.

    That rank is the number of other images' captions scoring at least as high as the best own
    caption. Inputs must already be validated (see ``retrieval_recall``). Peak extra memory is
    ``chunk_size x Nt`` scores.
    """
    _check_chunk_size(chunk_size)
    return _image_ranks(
        lambda start, stop: image_embeds[start:stop] @ text_embeds.T, image_embeds.shape[0], text_to_image, chunk_size
    )


def text_to_image_ranks(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """For each text, the 0-based rank of its own image among all images ``[Nt]``.

    Peak extra memory is ``chunk_size x Ni`` scores.
    """
    _check_chunk_size(chunk_size)
    return _text_ranks(
        lambda start, stop: text_embeds[start:stop] @ image_embeds.T, text_embeds.shape[0], text_to_image, chunk_size
    )


def ranks_from_scores(
    image_to_text: torch.Tensor,
    text_to_image_scores: torch.Tensor,
    text_to_image: torch.Tensor,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks from explicit score matrices (a fusion model's ITM re-ranking, ``-inf`` or a fill value outside
    each query's candidates), ties against the query as above: per image among the texts (``image_to_text``
    ``[Ni, Nt]``), per text among the images (``text_to_image_scores`` ``[Nt, Ni]``)."""
    _check_chunk_size(chunk_size)
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long, device=image_to_text.device)
    image_ranks = _image_ranks(
        lambda start, stop: image_to_text[start:stop], image_to_text.shape[0], text_to_image, chunk_size
    )
    text_ranks = _text_ranks(
        lambda start, stop: text_to_image_scores[start:stop], text_to_image_scores.shape[0], text_to_image, chunk_size
    )
    return image_ranks, text_ranks


def recall_at_k(ranks: torch.Tensor, ks: Iterable[int]) -> dict[int, float]:
    """Fraction of queries whose 0-based rank is below ``k``, for each ``k``."""
    return {k: (ranks < k).float().mean().item() for k in ks}


def recall_metrics_from_ranks(
    image_ranks: torch.Tensor, text_ranks: torch.Tensor, ks: Iterable[int], prefix: str = ""
) -> dict[str, float]:
    """``{prefix}i2t_r{k}`` and ``{prefix}t2i_r{k}`` from the image and text queries' ranks, and
    ``{prefix}mean_recall`` (their average), as fractions: the computation of the ``retrieval_recall`` metric
    module (:func:`recall_metrics` goes through the module)."""
    ks = tuple(ks)
    for name, ranks in zip(QUERY_DIRECTIONS, (image_ranks, text_ranks)):
        if ranks.numel() == 0:
            raise ValueError(f"No {name} queries: recall@K needs the ranks of both directions' queries.")
    i2t, t2i = recall_at_k(image_ranks, ks), recall_at_k(text_ranks, ks)
    metrics = {f"{prefix}i2t_r{k}": i2t[k] for k in ks} | {f"{prefix}t2i_r{k}": t2i[k] for k in ks}
    metrics[f"{prefix}mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics


def recall_metrics(
    image_ranks: torch.Tensor, text_ranks: torch.Tensor, ks: Iterable[int], prefix: str = ""
) -> dict[str, float]:
    """``{prefix}i2t_r{k}``, ``{prefix}t2i_r{k}`` and ``{prefix}mean_recall`` of the image and text queries' ranks,
    computed by the packaged ``retrieval_recall`` metric module (``"ranks"`` configuration)."""
    ranks = torch.cat([torch.as_tensor(image_ranks).flatten(), torch.as_tensor(text_ranks).flatten()]).cpu()
    directions = [QUERY_DIRECTIONS[0]] * len(image_ranks) + [QUERY_DIRECTIONS[1]] * len(text_ranks)
    return compute_metric(
        "retrieval_recall", "ranks", predictions=ranks.tolist(), references=directions, ks=list(ks), prefix=prefix
    )


def text_to_image_from_captions(captions_per_image: Sequence[Sequence[int]], num_texts: int) -> torch.Tensor:
    """Each text's image index ``[Nt]`` from each image's caption indices; every text must belong to exactly one
    image and every image needs a caption."""
    mapping = torch.full((num_texts,), -1, dtype=torch.long)
    for image, captions in enumerate(captions_per_image):
        captions = [int(caption) for caption in captions]
        if not captions:
            raise ValueError(f"Image {image} has no caption; every gallery image needs at least one.")
        if min(captions) < 0 or max(captions) >= num_texts:
            raise ValueError(f"Image {image}'s captions must be text indices in [0, {num_texts}); got {captions}.")
        taken = [caption for caption in captions if mapping[caption] >= 0]
        if taken:
            raise ValueError(
                f"Texts {taken[:5]} are listed for image {image} and another one; a text describes one image."
            )
        mapping[captions] = image
    orphans = (mapping < 0).nonzero().flatten().tolist()
    if orphans:
        raise ValueError(f"Texts {orphans[:5]} belong to no image: list every text among one image's captions.")
    return mapping


def recall_at_k_from_scores(
    image_to_text: torch.Tensor,
    text_to_image: torch.Tensor,
    image_to_texts: list[list[int]],
    text_to_image_index: list[int],
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@K in percent from score matrices, as ALBEF's ``itm_eval``: an image query's rank is that of its
    best-ranked ground-truth caption; keys ``txt_r{k}``/``img_r{k}`` plus ``txt_r_mean``, ``img_r_mean``, ``r_mean``.

    Ties are broken by a stable descending sort (the original uses numpy's reversed ``argsort``), not counted
    against the query as in :func:`ranks_from_scores`."""
    if image_to_text.shape != text_to_image.T.shape:
        raise ValueError(
            f"image_to_text {tuple(image_to_text.shape)} must be the transpose shape of text_to_image "
            f"{tuple(text_to_image.shape)}"
        )
    if len(image_to_texts) != image_to_text.shape[0] or len(text_to_image_index) != text_to_image.shape[0]:
        raise ValueError("pass one caption list per image (image_to_texts) and one image index per text")
    positions_i2t = image_to_text.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    positions_t2i = text_to_image.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    image_ranks = torch.stack([positions_i2t[row, captions].min() for row, captions in enumerate(image_to_texts)])
    text_ranks = positions_t2i[torch.arange(len(text_to_image_index)), torch.tensor(text_to_image_index)]
    result: dict[str, float] = {}
    for name, ranks in (("txt", image_ranks), ("img", text_ranks)):
        result |= {f"{name}_r{k}": 100.0 * recall for k, recall in recall_at_k(ranks, ks).items()}
        result[f"{name}_r_mean"] = sum(result[f"{name}_r{k}"] for k in ks) / len(ks)
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def retrieval_recall(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor | np.ndarray,
    ks: Iterable[int] = (1, 5, 10),
    chunk_size: int = 1024,
    normalize: bool = True,
) -> dict[str, float]:
    """Recall@K for image->text and text->image retrieval over a whole gallery.

    ``text_to_image[j]`` is the index of the image that text ``j`` describes; an image may have
    several captions and every image needs at least one. Embeddings are cosine-compared
    (re-normalised unless ``normalize=False``). Returns ``i2t_r{k}``, ``t2i_r{k}`` for each ``k``
    and ``mean_recall`` (their average), as fractions.
    """
    ks = check_positive_ints(ks, "ks")
    _check_chunk_size(chunk_size)
    image_embeds, text_embeds = _prepare_embeddings(image_embeds, text_embeds, normalize)
    mapping = _prepare_text_to_image(text_to_image, image_embeds.shape[0], text_embeds.shape[0], image_embeds.device)

    return recall_metrics(
        image_to_text_ranks(image_embeds, text_embeds, mapping, chunk_size),
        text_to_image_ranks(image_embeds, text_embeds, mapping, chunk_size),
        ks,
    )


def retrieval_metrics_from_model(
    model: nn.Module,
    processor: Any,
    images: Iterable[Any] | torch.Tensor,
    texts: Iterable[str],
    text_to_image: Sequence[int] | torch.Tensor | None = None,
    ks: Iterable[int] = (1, 5, 10),
    batch_size: int = 64,
    text_batch_size: int = 256,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Embed ``images`` and ``texts`` with a dual encoder in batches, then ``retrieval_recall``.

    ``text_to_image`` defaults to one caption per image, text ``i`` describing image ``i``.
    """
    image_embeds = embed_images(model, processor, images, batch_size=batch_size, device=device)
    text_embeds = embed_texts(model, processor, texts, batch_size=text_batch_size, device=device)
    if text_to_image is None:
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"Got {image_embeds.shape[0]} images and {text_embeds.shape[0]} texts; pass `text_to_image` "
                "(the image index of each text) when images have several captions."
            )
        text_to_image = torch.arange(text_embeds.shape[0])
    return retrieval_recall(image_embeds, text_embeds, text_to_image, ks=ks, chunk_size=chunk_size)


# --- Trainer integration ----------------------------------------------------------------------------


def _is_embedding_matrix(array: Any) -> bool:
    """A 2-D float matrix with unit-norm rows (normalised embeddings, not padded logits)."""
    if not isinstance(array, (np.ndarray, torch.Tensor)) or array.ndim != 2 or array.shape[0] == 0:
        return False
    if array.shape[1] < 2:
        return False
    tensor = torch.as_tensor(array)
    if not tensor.is_floating_point():
        return False
    norms = tensor.float().norm(dim=-1)
    return bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-2))


def _as_field_tuple(predictions: Any) -> tuple[Any, ...]:
    """The predictions as one tuple of output fields, whatever way Trainer delivered them."""
    if isinstance(predictions, (np.ndarray, torch.Tensor)):
        return (predictions,)
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], (tuple, list)):
        # eval_do_concat_batches=False: one tuple per batch; stitch each field back together.
        fields = []
        for position in range(len(predictions[0])):
            parts = [batch[position] for batch in predictions]
            fields.append(np.concatenate([np.asarray(p) for p in parts]) if _stackable(parts) else parts)
        return tuple(fields)
    return tuple(predictions)


def _stackable(parts: Sequence[Any]) -> bool:
    """Per-batch [b, E] matrices with one common width (not square per-batch logits)."""
    if not all(isinstance(part, (np.ndarray, torch.Tensor)) and part.ndim == 2 for part in parts):
        return False
    return len({part.shape[1] for part in parts}) == 1


class RetrievalComputeMetrics:
    """``compute_metrics`` for ``transformers.Trainer`` on dual encoders: recall@K over the whole eval set.

    Trainer hands over ``EvalPrediction.predictions`` as a tuple of the model's non-loss output
    fields, concatenated over batches (nested outputs such as ``text_model_output`` arrive as
    dicts; square per-batch ``logits_per_image`` come padded with -100, hence unusable). The
    normalised ``image_embeds``/``text_embeds`` are taken from that tuple: at
    ``embeds_positions=(image_position, text_position)`` when given, else detected as the two
    top-level ``[N, E]`` matrices with unit-norm rows, read in transformers' ``CLIPOutput`` order
    (``text_embeds`` before ``image_embeds``; ``VlpClipOutput`` keeps that order).

    Row ``i`` of the images pairs with row ``i`` of the texts. When the eval set repeats an image
    over several rows (several captions), give ``image_ids`` (one hashable id per eval row, in
    dataset order) so each image enters the gallery once with all its captions.

    Works with ``batch_eval_metrics=True`` too: per-batch embeddings are accumulated on the CPU
    and the recall is computed when ``compute_result`` is true.

    Trainer calls ``compute_metrics`` only when it has labels or computes an eval loss: the
    model's ``forward`` must default to ``return_loss=True``, or every eval batch must carry a
    scalar ``return_loss=True`` (from the collator) — otherwise this is silently never called.
    """

    def __init__(
        self,
        embeds_positions: tuple[int, int] | None = None,
        image_ids: Sequence[Hashable] | None = None,
        ks: Iterable[int] = (1, 5, 10),
        chunk_size: int = 1024,
    ) -> None:
        self.embeds_positions = embeds_positions
        self.image_ids = list(image_ids) if image_ids is not None else None
        self.ks = check_positive_ints(ks, "ks")
        _check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        self._image_batches: list[torch.Tensor] = []
        self._text_batches: list[torch.Tensor] = []

    def find_embeddings(self, predictions: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_embeds, text_embeds)`` from ``EvalPrediction.predictions``."""
        fields = _as_field_tuple(predictions)
        if self.embeds_positions is not None:
            image_position, text_position = self.embeds_positions
            try:
                image_embeds, text_embeds = fields[image_position], fields[text_position]
            except IndexError:
                raise ValueError(
                    f"`embeds_positions={self.embeds_positions}` is out of range: predictions have "
                    f"{len(fields)} fields."
                ) from None
        else:
            candidates = [i for i, field in enumerate(fields) if _is_embedding_matrix(field)]
            shapes = {i: tuple(fields[i].shape) for i in candidates}
            if len(candidates) != 2 or shapes[candidates[0]][1] != shapes[candidates[1]][1]:
                described = [_describe(field) for field in fields]
                raise ValueError(
                    "Could not find exactly two normalised [N, E] embedding matrices in the eval predictions "
                    f"(fields: {described}; candidates at {candidates}). Pass "
                    "`embeds_positions=(image_position, text_position)`, or make the model return normalised "
                    "`image_embeds`/`text_embeds` at evaluation."
                )
            text_position, image_position = candidates
            image_embeds, text_embeds = fields[image_position], fields[text_position]
        for name, embeds in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
            if not isinstance(embeds, (np.ndarray, torch.Tensor)) or embeds.ndim != 2:
                raise ValueError(f"The prediction field used as {name} is {_describe(embeds)}, not an [N, E] matrix.")
        return torch.as_tensor(image_embeds).detach().cpu().float(), torch.as_tensor(text_embeds).detach().cpu().float()

    def __call__(self, eval_prediction: Any, compute_result: bool = True) -> dict[str, float]:
        image_embeds, text_embeds = self.find_embeddings(eval_prediction.predictions)
        if image_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"Eval predictions hold {image_embeds.shape[0]} image rows and {text_embeds.shape[0]} text rows; "
                "rows must pair one to one."
            )
        self._image_batches.append(image_embeds)
        self._text_batches.append(text_embeds)
        if not compute_result:
            return {}
        image_embeds, text_embeds = torch.cat(self._image_batches), torch.cat(self._text_batches)
        self._image_batches, self._text_batches = [], []
        image_embeds, text_to_image = self._gallery(image_embeds)
        return retrieval_recall(image_embeds, text_embeds, text_to_image, ks=self.ks, chunk_size=self.chunk_size)

    def _gallery(self, image_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deduplicate image rows by ``image_ids``; return gallery images and each text's image index."""
        num_rows = image_rows.shape[0]
        if self.image_ids is None:
            return image_rows, torch.arange(num_rows)
        if len(self.image_ids) != num_rows:
            raise ValueError(
                f"`image_ids` has {len(self.image_ids)} entries but the eval set produced {num_rows} rows; give one "
                "id per eval-dataset row, in dataset order."
            )
        gallery_index: dict[Hashable, int] = {}
        gallery_rows: list[int] = []
        text_to_image = []
        for row, image_id in enumerate(self.image_ids):
            if image_id not in gallery_index:
                gallery_index[image_id] = len(gallery_rows)
                gallery_rows.append(row)
            text_to_image.append(gallery_index[image_id])
        return image_rows[torch.tensor(gallery_rows)], torch.tensor(text_to_image)


def _describe(field: Any) -> str:
    if isinstance(field, (np.ndarray, torch.Tensor)):
        return f"array{tuple(field.shape)}"
    if isinstance(field, Mapping):
        return f"{type(field).__name__}({', '.join(map(str, field.keys()))})"
    return type(field).__name__


def make_compute_metrics(
    embeds_positions: tuple[int, int] | None = None,
    image_ids: Sequence[Hashable] | None = None,
    ks: Iterable[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> RetrievalComputeMetrics:
    """A ``Trainer(compute_metrics=...)`` callable reporting retrieval recall@K (see ``RetrievalComputeMetrics``)."""
    return RetrievalComputeMetrics(embeds_positions=embeds_positions, image_ids=image_ids, ks=ks, chunk_size=chunk_size)
