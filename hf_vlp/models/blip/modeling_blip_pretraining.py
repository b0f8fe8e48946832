"""BLIP pre-training (``models/blip_pretrain.py``) and image-text retrieval (``models/blip_retrieval.py`` +
``train_retrieval.py``): the heads with momentum towers and feature queues.

Both run the momentum-contrastive step of :mod:`hf_vlp.objectives.contrastive` (online features against ``[momentum batch ;
queue]``, soft targets distilled from the momentum towers) and image-text matching over
``[positives ; (text b, negative image) ; (negative text, image b)]``, the negatives' token ids re-run through the MED
in its image-grounded encoder role with ``[ENC]`` first. Pre-training adds the captioning LM loss through the MED's
decoder role (``[DEC]`` first, label smoothing 0.1); retrieval ranks a gallery by ITC top-k then ITM + cosine.

The momentum text tower is an encoder-only MED: the original's ``text_encoder_m`` is a ``BertModel`` whose
cross-attention is an EMA of the (decoder-shared) online one, so the EMA pairs every encoder-role module of the online
MED - not the decoder's causal self-attention - with the momentum copy (:func:`encoder_role_modules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn

from ...objectives.contrastive import (
    ImageTextRetrievalOutput,
    MomentumContrastiveOutput,
    MomentumContrastiveStep,
    RetrievalFeatures,
    RetrievalScores,
    check_matching_pairs,
    check_negative_indices,
    diagonal_targets,
    rerank_top_k,
    same_id_mask,
)
from ...objectives.lm import IGNORE_INDEX, shifted_lm_loss
from ...objectives.losses import id_match_targets, sample_hard_negatives
from ...objectives.momentum import ModulePair
from ..modeling_utils import OutputKwargs
from ..momentum_contrastive import ImageTextRetrievalHeadMixin, MomentumContrastiveMixin
from ..towers import MaskedLMOutputEmbeddingsMixin
from .configuration_blip import VlpBlipConfig, VlpBlipTextConfig
from .modeling_blip import (
    BlipTowersMixin,
    VlpBlipPreTrainedModel,
    VlpBlipTextModel,
    check_no_token_types,
    with_first_token,
)


def encoder_role_modules(text_model: VlpBlipTextModel) -> nn.ModuleList:
    """The MED modules the encoder role runs, in a fixed order: the embeddings, then per layer the bidirectional
    self-attention ``attn``/``norm1``, the cross-attention ``cross_attn``/``norm_cross`` and the MLP ``mlp``/``norm2``.

    Pairs an online MED that also holds the decoder role (pre-training) with its encoder-only momentum copy for the
    EMA: both give the same parameters in the same order."""
    transformer = text_model.transformer
    if "encoder" not in transformer.roles:
        raise ValueError(f"the text model holds no encoder role (roles {transformer.roles}); nothing to pair")
    modules: list[nn.Module] = [transformer.embeddings]
    for layer in transformer.encoder.layers:
        modules += [layer.attn, layer.norm1, layer.cross_attn, layer.norm_cross, layer.mlp, layer.norm2]
    return nn.ModuleList(modules)


# --------------------------------------------------------------------------------------------------- shared base


class VlpBlipMomentumModel(MomentumContrastiveMixin, BlipTowersMixin, VlpBlipPreTrainedModel):
    """Base of the BLIP heads with frozen momentum towers and feature queues (pre-training, retrieval).

    Builds the online towers (``vision_model``, ``text_model`` with the head's ``text_roles``, ``vision_proj``,
    ``text_proj``, ``itm_head``, ``temp``), their momentum copies (``momentum_vision_model``, ``momentum_vision_proj``,
    ``momentum_text_model`` - encoder role only - and ``momentum_text_proj``) and the ``image_queue``/``text_queue``
    through the momentum-contrastive base shared with ALBEF
    (:class:`~hf_vlp.models.momentum_contrastive.MomentumContrastiveMixin`). The ITM re-encodes the text ids with
    ``[ENC]`` first; retrieval re-ranking adds the cosine to the ITM logit. The EMA step runs in
    ``hf_vlp.MomentumCallback`` once per optimizer step (the original runs it at the start of every forward); the
    callback also ramps ``distill_alpha``.
    """

    itm_text_field = "input_ids"
    retrieval_adds_similarity = True

    def build_momentum_text_model(self, config: VlpBlipTextConfig) -> VlpBlipTextModel:
        return VlpBlipTextModel(config, roles=("encoder",))

    def check_token_type_ids(self, token_type_ids: torch.Tensor | None) -> None:
        check_no_token_types(token_type_ids)

    def momentum_text_pair(self) -> ModulePair:
        """The encoder role's modules of the online and momentum MEDs (:func:`encoder_role_modules`)."""
        return encoder_role_modules(self.text_model), encoder_role_modules(self.momentum_text_model)

    def pair_itm_logits(
        self, texts: torch.Tensor, attention_mask: torch.Tensor | None, image_states: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits ``[N, 2]`` (column 1 = match) of pairs (text ids row n, image row n): the image-grounded encoder
        with ``[ENC]`` put first, ``itm_head`` on its first state."""
        encoder_ids = with_first_token(texts, self._special_id("enc_token_id"))
        states = self.text_model(
            encoder_ids, attention_mask, encoder_hidden_states=image_states, mode="multimodal", return_dict=True
        ).last_hidden_state
        return self.itm_head(states[:, 0])


# --------------------------------------------------------------------------------------------------- pre-training


@dataclass
class VlpBlipForPretrainingOutput(MomentumContrastiveOutput):
    """BLIP pre-training outputs: the ITC/ITM fields of :class:`~hf_vlp.objectives.contrastive.MomentumContrastiveOutput`
    (``itm_logits`` ``[3B, 2]`` over positives and both hard negatives) and the captioning LM's. The losses are set only
    with ``return_loss=True``; ``loss`` is their sum. ``lm_logits`` ``[B, L, vocab]`` are the decoder's next-token
    logits over ``[DEC]`` + the caption (position t predicts t + 1).
    """

    loss_lm: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None


class VlpBlipForPretraining(MaskedLMOutputEmbeddingsMixin, VlpBlipMomentumModel):
    """BLIP pre-training (``models/blip_pretrain.py``): ITC with momentum distillation against feature queues, ITM on
    hard negatives, and the captioning LM loss; ``loss = loss_itc + loss_itm + loss_lm``.

    One MED serves the three text roles (``text_model`` holds the encoder's and the decoder's self-attention, every
    other tensor shared, as the original's encoder/decoder tie); ``lm_head`` is tied to its word embeddings. Weight
    names are those of every BLIP head (``vision_model``, ``text_model``, ``vision_proj``, ``text_proj``, ``itm_head``,
    ``temp``, ``lm_head``), so a saved directory also loads into ``VlpBlipModel``,
    ``VlpBlipForConditionalGeneration`` and ``VlpBlipForImageTextRetrieval``. ITM hard negatives are drawn with the
    weights ``softmax(s) + config.itm_negative_eps`` (1e-4 in the original), the diagonal zeroed.

    Train with ``hf_vlp.MomentumCallback(alpha_warmup_epochs=2)``: the original ramps alpha over two epochs
    (``alpha = 0.4 * min(1, step / (2 * steps_per_epoch))``). Queues are filled by training-mode forwards
    (``update_queues`` overrides) with all-gathered momentum features, identical on every rank.
    """

    text_roles = ("encoder", "decoder")
    output_head_name = "lm_head"
    _tied_weights_keys = {"lm_head.decoder.weight": "text_model.transformer.embeddings.word_embeddings.weight"}

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.build_contrastive_heads(config)
        self.build_lm_head(config)
        self.build_momentum_towers(config)
        self.build_feature_queues(config)
        self.post_init()
        self.init_momentum()

    def lm_labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The original's decoder targets: the ids with ``[PAD]`` set to -100 (``[DEC]`` at 0 is dropped by the
        shift)."""
        return input_ids.masked_fill(input_ids == self._special_id("pad_token_id"), IGNORE_INDEX)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        lm_labels: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpBlipForPretrainingOutput | tuple:
        """One pre-training step's forward on ``B`` matching (image, caption) pairs; ``input_ids`` are the processor's
        ``[CLS] caption [SEP]`` (the model puts ``[ENC]``/``[DEC]`` first for the ITM and LM passes itself).

        Args:
            return_loss: compute ``loss_itc``/``loss_itm``/``loss_lm`` and their sum ``loss``.
            lm_labels: ``[B, L]`` LM targets aligned with ``input_ids`` (shifted here); default ``input_ids`` with
                ``[PAD]`` ignored, as the original.
            itm_negative_image_indices: ``[B]`` in-batch index of each text's negative image, and
                ``itm_negative_text_indices`` of each image's negative text (both or neither); otherwise drawn from
                ``softmax(in-batch logits) + config.itm_negative_eps`` with the diagonal zeroed.
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features; default ``self.training``.
            generator: random generator for the hard negatives.
            token_type_ids: accepted when all zero (BERT tokenizers emit them; BLIP has no token types).
            output_hidden_states, output_attentions: the online towers' (``vision_model_output``,
                ``text_model_output``).
        """
        check_matching_pairs(input_ids, pixel_values, "pre-training")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        self.check_token_type_ids(token_type_ids)
        if lm_labels is not None and lm_labels.shape != input_ids.shape:
            raise ValueError(
                f"lm_labels must align with input_ids (shape {tuple(input_ids.shape)}), got {tuple(lm_labels.shape)}; "
                "the model shifts them itself"
            )
        itc_itm = self._pretraining_itc_itm(
            input_ids, pixel_values, attention_mask, None, itm_negative_image_indices, itm_negative_text_indices,
            alpha, update_queues, return_loss, generator, interpolate_pos_encoding, kwargs,
        )

        decoder_ids = with_first_token(input_ids, self._special_id("bos_token_id"))
        decoded = self.text_model(
            decoder_ids, itc_itm.attention_mask, encoder_hidden_states=itc_itm.step.image_states, mode="decoder",
            return_dict=True,
        ).last_hidden_state
        lm_logits = self.lm_head(decoded)

        loss = loss_lm = None
        if return_loss:
            labels = self.lm_labels(decoder_ids) if lm_labels is None else lm_labels
            loss_lm = shifted_lm_loss(lm_logits, labels, self.config.label_smoothing)
            loss = itc_itm.loss_itc + itc_itm.loss_itm + loss_lm
        return VlpBlipForPretrainingOutput(loss=loss, loss_lm=loss_lm, **itc_itm.output_fields(), lm_logits=lm_logits)


# --------------------------------------------------------------------------------------------------- retrieval


@dataclass
class VlpBlipForImageTextRetrievalOutput(ImageTextRetrievalOutput):
    """BLIP retrieval fine-tuning outputs (the fields of :class:`hf_vlp.objectives.contrastive.ImageTextRetrievalOutput`)."""


# one features type serves ALBEF and BLIP; the BLIP name stays importable
VlpBlipRetrievalFeatures = RetrievalFeatures


class VlpBlipForImageTextRetrieval(ImageTextRetrievalHeadMixin, VlpBlipMomentumModel):
    """BLIP image-text retrieval (``models/blip_retrieval.py`` + ``train_retrieval.py``).

    Training (``forward`` with ``image_ids``): ITC with momentum distillation against the feature queues, every column
    showing the same image id - in the batch or in ``idx_queue`` - a positive (targets uniform over them); plus ITM on
    hard negatives drawn from the ONLINE in-batch similarities (``softmax``, same-id entries zeroed, no added constant);
    ``loss = loss_itc + loss_itm``. Inference (:meth:`score_matrices`): ITC cosine top-``k`` per query, re-scored by
    the ITM match logit of the image-grounded encoder (``[ENC]`` first) PLUS the cosine, every other entry -100.

    Two switches (class attributes, overridable per instance) cover the released code's details:

    - ``itc_positives = "image_id"`` (the paper's and LAVIS's targets). The released ``blip_retrieval.py`` computes the
      id targets and then overwrites them with the diagonal (salesforce/BLIP issue #41): set ``"diagonal"`` to train
      exactly as it does (``idx_queue`` is still filled).
    - ``itm_negative_eps = 0.0`` as the original (``config.itm_negative_eps`` is pre-training's 1e-4); a positive value
      keeps every negative reachable when the softmax underflows (tiny models, very low ``temp``).

    Negatives come from this rank's batch (the original's ``negative_all_rank: False``, its Flickr30k setting).
    Weights: as ``VlpBlipModel`` plus ``momentum_*`` (frozen EMA copies; train with ``hf_vlp.MomentumCallback``, alpha
    ramped over one epoch) and ``image_queue``/``text_queue``/``idx_queue``. A ``VlpBlipForPretraining`` directory loads
    too (decoder and LM head ignored, ``idx_queue`` starting at -100 at the feature queues' pointer), as the original
    fine-tuning starts.
    """

    text_roles = ("encoder",)
    retrieval_output_class = VlpBlipForImageTextRetrievalOutput
    itc_positives: str = "image_id"
    itm_negative_eps: float = 0.0
    _keys_to_ignore_on_load_unexpected = [r"\.causal_attn\.", r"\.norm_causal\.", r"^lm_head\."]
    _keys_to_ignore_on_load_missing = [r"^idx_queue\."]

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        self.build_contrastive_heads(config)
        self.build_momentum_towers(config)
        self.build_feature_queues(config, with_ids=True)
        self.post_init()
        self.init_momentum()

    @torch.no_grad()
    def _itc_hard_targets(self, step: MomentumContrastiveStep, image_ids: torch.Tensor) -> torch.Tensor:
        if self.itc_positives == "image_id":
            return id_match_targets(image_ids, self.idx_queue.with_batch(image_ids)[0])
        if self.itc_positives == "diagonal":
            return diagonal_targets(step)
        raise ValueError(f"itc_positives must be 'image_id' or 'diagonal', got {self.itc_positives!r}")

    @torch.no_grad()
    def _retrieval_negatives(
        self, step: MomentumContrastiveStep, image_ids: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard negatives from the ONLINE in-batch similarities (``softmax``, same-id entries zeroed), as the
        original's retrieval (its pre-training draws from the queue-step logits)."""
        online = step.image_embeds @ step.text_embeds.T / self.temp
        return sample_hard_negatives(
            online.detach(), online.T.detach(), same_id_mask(image_ids), generator, eps=float(self.itm_negative_eps)
        )


__all__ = [
    "RetrievalScores",
    "VlpBlipForImageTextRetrieval",
    "VlpBlipForImageTextRetrievalOutput",
    "VlpBlipForPretraining",
    "VlpBlipForPretrainingOutput",
    "VlpBlipMomentumModel",
    "VlpBlipRetrievalFeatures",
    "encoder_role_modules",
    "rerank_top_k",
]
