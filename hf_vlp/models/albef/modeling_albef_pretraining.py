"""ALBEF pre-training (``models/model_pretrain.py``) and image-text retrieval (``models/model_retrieval.py`` +
``Retrieval.py``): the ITC + ITM heads with momentum towers and feature queues, built on the momentum-contrastive base
shared with BLIP (:class:`~hf_vlp.models.momentum_contrastive.MomentumContrastiveMixin`). Pre-training adds MLM
distilled from the momentum text encoder; retrieval ranks galleries by ITC top-k then ITM re-ranking."""

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn

from ...objectives.contrastive import (
    ImageTextRetrievalOutput,
    MomentumContrastiveOutput,
    RetrievalFeatures,
    RetrievalScores,
    check_matching_pairs,
    check_negative_indices,
)
from ...objectives.mlm import distilled_mlm_loss, mask_tokens
from ...objectives.momentum import ModulePair
from ..modeling_utils import OutputKwargs
from ..momentum_contrastive import ImageTextRetrievalHeadMixin, MomentumContrastiveMixin
from ..towers import MaskedLMOutputEmbeddingsMixin, bert_prediction_head
from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig
from .modeling_albef import AlbefTowersMixin, VlpAlbefPreTrainedModel, VlpAlbefTextModel


@dataclass
class VlpAlbefForPretrainingOutput(MomentumContrastiveOutput):
    """ALBEF pretraining outputs: the ITC/ITM fields of :class:`~hf_vlp.objectives.contrastive.MomentumContrastiveOutput`
    (``itm_logits`` ``[3B, 2]`` over positives and both hard negatives) and the MLM's. The losses are set only with
    ``return_loss=True``; ``loss`` is their sum. ``mlm_logits`` are over ``mlm_input_ids`` (the masked text) and
    ``mlm_labels`` are -100 where a token was not masked.
    """

    loss_mlm: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mlm_input_ids: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None


class VlpAlbefMomentumModel(MomentumContrastiveMixin, AlbefTowersMixin, VlpAlbefPreTrainedModel):
    """Base of the ALBEF ITC + ITM heads: the flat online towers, their frozen momentum copies (the momentum text
    tower is a full ``VlpAlbefTextModel``) and the feature queues; the ITM fuses the unimodal text states.
    ``config.itm_negative_eps`` is 0 as in the original."""

    itm_text_field = "hidden_states"
    retrieval_adds_similarity = False

    def build_momentum_text_model(self, config: VlpAlbefTextConfig) -> VlpAlbefTextModel:
        return VlpAlbefTextModel(config)


class VlpAlbefForPretraining(MaskedLMOutputEmbeddingsMixin, VlpAlbefMomentumModel):
    """ALBEF pretraining (``models/model_pretrain.py``): ITC with momentum distillation against feature queues,
    ITM on hard negatives, and MLM distilled from the momentum model; ``loss = loss_itc + loss_itm + loss_mlm``.

    Online weights carry ``VlpAlbefForMaskedLM``'s flat names (``vision_model.*``, ``text_model.*``, ``vision_proj``,
    ``text_proj``, ``itm_head``, ``temp``, ``mlm_head.*``); the frozen EMA copies are
    ``momentum_vision_model``, ``momentum_vision_proj``, ``momentum_text_model``, ``momentum_text_proj`` and
    ``momentum_mlm_head``, and the queues ``image_queue``/``text_queue`` (normalised momentum features, each with its
    own ``ptr``). All of them are saved. Train with ``hf_vlp.MomentumCallback``: it runs the EMA step once per
    optimizer step (the original does it at the start of every forward) and ramps ``distill_alpha``. Queues are
    updated by training-mode forwards (``update_queues`` overrides) with all-gathered features.
    """

    _tied_weights_keys = {
        "mlm_head.decoder.weight": "text_model.transformer.embeddings.word_embeddings.weight",
        "momentum_mlm_head.decoder.weight": "momentum_text_model.transformer.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.mlm_head = bert_prediction_head(config.text_config)
        self.build_momentum_towers(config)
        self.momentum_mlm_head = bert_prediction_head(config.text_config)
        self.build_feature_queues(config)
        self.post_init()
        self.init_momentum()

    def momentum_text_pair(self) -> ModulePair:
        """The text encoder and its MLM head form one pair so the decoder tied to the word embeddings is counted
        once."""
        return (
            nn.ModuleList([self.text_model, self.mlm_head]),
            nn.ModuleList([self.momentum_text_model, self.momentum_mlm_head]),
        )

    def mask_tokens(
        self, input_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``input_ids`` for MLM as the original does (see :func:`mask_tokens`); needs
        ``config.text_config.mask_token_id`` and ``cls_token_id`` (set by the converter from the tokenizer)."""
        text = self.config.text_config
        mask_id, cls_id = text.mask_token_id, text.cls_token_id
        if mask_id is None or cls_id is None:
            raise ValueError(
                "MLM masking needs config.text_config.mask_token_id and cls_token_id (the tokenizer's [MASK] and "
                "[CLS] ids); set them, or pass mlm_input_ids and mlm_labels masked by the data collator."
            )
        special = tuple(i for i in (text.pad_token_id, cls_id) if i is not None)
        return mask_tokens(
            input_ids,
            vocab_size=text.vocab_size,
            mask_token_id=mask_id,
            special_token_ids=special,
            mlm_probability=self.config.mlm_probability,
            generator=generator,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpAlbefForPretrainingOutput | tuple:
        """One pretraining step's forward on ``B`` matching (image, text) pairs.

        Args:
            return_loss: compute ``loss_itc``/``loss_itm``/``loss_mlm`` and their sum ``loss``.
            mlm_input_ids, mlm_labels: a given MLM masking (both or neither); otherwise ``input_ids`` are masked here.
            itm_negative_image_indices: ``[B]`` in-batch index of the negative image of each text, and
                ``itm_negative_text_indices`` of the negative text of each image (both or neither); otherwise
                drawn from the softmaxed similarities with the diagonal masked.
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features; default ``self.training``.
            generator: random generator for the hard negatives and the masking.
            output_hidden_states, output_attentions: the online towers' (``vision_model_output``,
                ``text_model_output``).
        """
        check_matching_pairs(input_ids, pixel_values, "pretraining")
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("pass both mlm_input_ids and mlm_labels (a given masking), or neither")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        itc_itm = self._pretraining_itc_itm(
            input_ids, pixel_values, attention_mask, token_type_ids, itm_negative_image_indices,
            itm_negative_text_indices, alpha, update_queues, return_loss, generator, interpolate_pos_encoding, kwargs,
        )
        step, attention_mask = itc_itm.step, itc_itm.attention_mask

        # MLM, distilled from the momentum text encoder on the momentum image tokens
        if mlm_input_ids is None:
            mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, generator)
        mlm_logits = self.mlm_head(
            self.text_model(
                mlm_input_ids, attention_mask, token_type_ids, encoder_hidden_states=step.image_states, mode="full",
                return_dict=True,
            ).last_hidden_state
        )

        loss = loss_mlm = None
        if return_loss:
            with torch.no_grad():
                teacher_logits = self.momentum_mlm_head(
                    self.momentum_text_model(
                        mlm_input_ids, attention_mask, token_type_ids, encoder_hidden_states=step.momentum_image_states,
                        mode="full", return_dict=True,
                    ).last_hidden_state
                )
            loss_mlm = distilled_mlm_loss(mlm_logits, mlm_labels.to(mlm_logits.device), teacher_logits, itc_itm.alpha)
            loss = itc_itm.loss_itc + itc_itm.loss_itm + loss_mlm
        return VlpAlbefForPretrainingOutput(
            loss=loss,
            loss_mlm=loss_mlm,
            **itc_itm.output_fields(),
            mlm_logits=mlm_logits,
            mlm_input_ids=mlm_input_ids,
            mlm_labels=mlm_labels,
        )


@dataclass
class VlpAlbefForImageTextRetrievalOutput(ImageTextRetrievalOutput):
    """ALBEF retrieval fine-tuning outputs (the fields of :class:`hf_vlp.objectives.contrastive.ImageTextRetrievalOutput`)."""


# one features/scores type serves ALBEF and BLIP; the ALBEF names stay importable
VlpAlbefRetrievalFeatures = RetrievalFeatures
VlpAlbefRetrievalScores = RetrievalScores


class VlpAlbefForImageTextRetrieval(ImageTextRetrievalHeadMixin, VlpAlbefMomentumModel):
    """ALBEF image-text retrieval (``models/model_retrieval.py`` + ``Retrieval.py``).

    Training (``forward`` with ``image_ids``): ITC with momentum distillation against the feature queues where every
    column showing the same image id - in the batch or in ``idx_queue`` - is a positive (targets uniform over them),
    plus ITM on hard negatives never sharing the image id; ``loss = loss_itc + loss_itm``. Inference
    (:meth:`score_matrices`, from the shared base with :meth:`encode_images`, :meth:`encode_texts`, :meth:`rank`,
    :meth:`get_itm_logits`): ITC similarities, then the top ``k`` candidates of each query re-scored by the raw ITM
    match logit, every other entry -100.

    Weights: the flat online towers (as ``VlpAlbefModel``), ``momentum_*`` (frozen EMA copies; train with
    ``hf_vlp.MomentumCallback``), ``image_queue``/``text_queue``/``idx_queue``. A ``VlpAlbefForPretraining`` directory
    loads too (MLM heads ignored, ``idx_queue`` starting at -100), as the original fine-tuning starts. Unlike the
    original retrieval forward, ``temp`` is clamped to ``[temp_min, temp_max]`` as in pretraining (no effect inside
    that range).
    """

    retrieval_output_class = VlpAlbefForImageTextRetrievalOutput
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^momentum_mlm_head\."]
    _keys_to_ignore_on_load_missing = [r"^idx_queue\."]

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.build_momentum_towers(config)
        self.build_feature_queues(config, with_ids=True)
        self.post_init()
        self.init_momentum()


__all__ = [
    "VlpAlbefForImageTextRetrieval",
    "VlpAlbefForImageTextRetrievalOutput",
    "VlpAlbefForPretraining",
    "VlpAlbefForPretrainingOutput",
    "VlpAlbefMomentumModel",
    "VlpAlbefRetrievalFeatures",
    "VlpAlbefRetrievalScores",
]
