"""Heads shared by the single-network models, whose one transformer reads text and image tokens together (ViLT,
VLMo): both originals build the same MLM head, VQA/NLVR2 classifiers, soft-score VQA loss and NLVR2 second-image
modality row on a pooled text ``[CLS]``.

- :func:`untied_mlm_head`: BERT's transform (LayerNorm ``mlm_layer_norm_eps``) and a decoder with its own weights
  (neither original ties it to the word embeddings).
- :func:`pooled_classifier`: ``Linear(input, 2D) -> LayerNorm(head_layer_norm_eps) -> GELU -> Linear(2D, labels)``.
- :class:`SoftScoreAnswersMixin`: VQA as independent binary answers with soft scores.
- :class:`SecondImageRowMixin`: NLVR2's modality row of the second image as a head parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import initialization as init

from ..modules.heads import MaskedLMHead, MlpClassifierHead
from ..objectives.losses import soft_target_bce_loss

IMAGE_MODALITY_ROW = 1


def untied_mlm_head(config: Any) -> MaskedLMHead:
    """The MLM head over ``config.vocab_size`` words: dense, activation, LayerNorm eps ``mlm_layer_norm_eps``, decoder."""
    return MaskedLMHead(
        config.hidden_size, config.vocab_size, activation=config.hidden_act, layer_norm_eps=config.mlm_layer_norm_eps
    )


def pooled_classifier(config: Any, input_size: int, num_labels: int) -> MlpClassifierHead:
    """The VQA / NLVR2 classifier over ``input_size`` pooled features (``2 * hidden_size`` wide, LayerNorm eps
    ``head_layer_norm_eps``, the config's activation)."""
    return MlpClassifierHead(
        input_size,
        num_labels,
        intermediate_size=2 * config.hidden_size,
        activation=config.hidden_act,
        layer_norm_eps=config.head_layer_norm_eps,
    )


class SoftScoreAnswersMixin:
    """VQA over a fixed answer vocabulary: each answer a binary label with a soft score (VQAv2: 0.3 / 0.6 / 0.9 / 1.0
    for 1 / 2 / 3 / 4+ annotators). The loss is binary cross-entropy averaged over the batch and the answers, times
    the number of answers, as both originals; the answer probabilities are sigmoids."""

    def answer_loss(self, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The soft-score loss, ``None`` without ``labels``; an error unless they are ``[batch, num_labels]``."""
        if labels is None:
            return None
        if labels.shape != logits.shape:
            raise ValueError(
                f"labels must be soft answer scores [batch, num_labels] = {tuple(logits.shape)}, got "
                f"{tuple(labels.shape)}"
            )
        return soft_target_bce_loss(logits, labels)

    @torch.no_grad()
    def answer_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Each answer's probability (a sigmoid: the answers are independent binary labels)."""
        return logits.float().sigmoid()


class SecondImageRowMixin:
    """NLVR2's pair method encodes the text with each image; the second image gets its own modality row,
    ``second_image_modality_embedding``, a parameter of the head rather than a third row of the shared table, so
    that a pre-trained checkpoint (two rows) loads unchanged. When a checkpoint lacks it, it starts as a copy of the
    image row, as both originals initialise their third row. The model keeps its table at
    ``<base_model_prefix>.modality_embeddings``."""

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            rows = getattr(self, self.base_model_prefix).modality_embeddings.weight
            init.copy_(self.second_image_modality_embedding, rows[IMAGE_MODALITY_ROW].detach())


__all__ = ["SecondImageRowMixin", "SoftScoreAnswersMixin", "pooled_classifier", "untied_mlm_head"]
