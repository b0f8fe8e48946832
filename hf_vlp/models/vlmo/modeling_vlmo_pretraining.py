"""VLMo pre-training (image-text contrast twice, matching on hard negatives, masked language modelling) and image-text
retrieval.

Pre-training, per step of ``B`` pairs (the original's third stage, ``task_mlm_itm_itc``):

- ITC: the dual encoder's normalised projected ``[CLS]`` features, contrasted over the global batch (features gathered
  with gradient from every process, :func:`~hf_vlp.objectives.losses.contrastive_loss`); and a second contrast whose
  features re-run each unimodal pass's top blocks through the VL-FFN (``vl_*`` projections and ``logit_vl_scale``),
  which trains the VL-FFN for fusion. ``loss_itc`` is the mean of the two.
- ITM: each text's negative image and each image's negative text are drawn from the first contrast's softmaxed
  similarities against the whole global batch (the original's ``compute_itm_hardneg``), then ``3B`` fused pairs
  (positives, negative image, negative text) are classified.
- MLM: a fused pass of the masked text with its image, weighted by ``mlm_weight`` (0.25).

Retrieval is the dual encoder: each gallery image and text is embedded once and ranked by cosine similarity; with
``k`` the fused ITM logit of each query's ``k`` best candidates is added to their cosine (the original's
``compute_irtr_recall_with_rerank``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from ...modules.heads import ItmHead
from ...objectives.contrastive import (
    RetrievalFeatures,
    RetrievalScores,
    check_matching_pairs,
    check_negative_indices,
    itm_triplets,
    rerank_top_k,
)
from ...objectives.distributed import all_gather_no_grad, get_rank
from ...objectives.losses import contrastive_loss, sample_hard_negatives
from ...objectives.mlm import mask_tokens, masked_lm_loss
from ..modeling_utils import OutputKwargs
from .configuration_vlmo import VlpVlmoConfig
from ..single_stream_heads import untied_mlm_head
from ..towers import MaskedLMOutputEmbeddingsMixin
from .modeling_vlmo import VlpVlmoModel, VlpVlmoPreTrainedModel


def patch_grid(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """The patch grid ``(rows, columns)`` of images ``[B, C, H, W]``."""
    return pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size


@torch.no_grad()
def global_hard_negatives(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VLMo's ITM negatives: for this process's ``B`` texts one image, and for its images one text, drawn from the
    softmaxed scaled similarities against every process's batch (own pair excluded). Returns indices into the
    gathered batch ``[world * B]`` (the batch itself in one process)."""
    all_image_embeds, all_text_embeds = all_gather_no_grad(image_embeds), all_gather_no_grad(text_embeds)
    batch = image_embeds.shape[0]
    positives = torch.zeros(batch, all_text_embeds.shape[0], dtype=torch.bool, device=image_embeds.device)
    own = torch.arange(batch, device=image_embeds.device)
    positives[own, own + get_rank() * batch] = True
    return sample_hard_negatives(
        logit_scale * image_embeds @ all_text_embeds.t(),
        logit_scale * text_embeds @ all_image_embeds.t(),
        positives,
        generator,
    )


class VlmoRetrievalMixin:
    """The retrieval interface (``encode_images``, ``encode_texts``, ``score_matrices``, ``rank``) of a VLMo head with
    an ``itm_head``: the dual encoder ranks, the fused ITM logit optionally re-ranks the top ``k``."""

    has_contrastive_stage = True

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> RetrievalFeatures:
        """Gallery images: normalised ``image_projection([CLS])`` of the image-only pass, and the embedded image tokens
        a re-ranking fuses with each candidate text."""
        tokens = self.vlmo.embed_image(pixel_values)[0]
        outputs = self.vlmo.encode_image(image_tokens=tokens)
        embeds = nn.functional.normalize(self.vlmo.image_projection(outputs.last_hidden_state[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, hidden_states=tokens)

    @torch.no_grad()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RetrievalFeatures:
        """Gallery texts: normalised ``text_projection([CLS])`` of the text-only pass, with the ids and mask a
        re-ranking fuses (pad every chunk to one length, as the processor does)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        outputs = self.vlmo.encode_text(input_ids, attention_mask)
        embeds = nn.functional.normalize(self.vlmo.text_projection(outputs.last_hidden_state[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, input_ids=input_ids, attention_mask=attention_mask)

    @torch.no_grad()
    def score_matrices(
        self,
        images: RetrievalFeatures,
        texts: RetrievalFeatures,
        k: int | None = None,
        fill_value: float = -100.0,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """Cosine similarities ``[images, texts]`` of the dual encoder (the released models' ranking). With ``k``, each
        query's ``k`` most similar candidates are fused and get ``itm_head(...)[:, 1]`` added to their cosine, every
        other entry ``fill_value``; without, both directions are the cosine."""
        similarities = images.embeds @ texts.embeds.T
        if k is None:
            return RetrievalScores(similarities, similarities, similarities.T)
        images.require("images", "hidden_states", built_by="encode_images")
        texts.require("texts", "input_ids", "attention_mask", built_by="encode_texts")

        def match_logits(image_indices: torch.Tensor, text_indices: torch.Tensor) -> torch.Tensor:
            fused = self.vlmo.encode_fused(
                texts.input_ids[text_indices], texts.attention_mask[text_indices],
                image_tokens=images.hidden_states[image_indices],
            )
            return self.itm_head(fused.pooler_output)[:, 1]

        return rerank_top_k(
            similarities, match_logits, k, add_similarity=True, fill_value=fill_value, batch_size=batch_size
        )

    @torch.no_grad()
    def rank(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        k: int | None = None,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """:meth:`score_matrices` of a gallery small enough to encode in one batch per modality."""
        return self.score_matrices(
            self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask), k=k, batch_size=batch_size
        )


def fused_itm(
    model: "VlpVlmoForPretraining | VlpVlmoForImageTextRetrieval",
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor,
    negative_image_indices: torch.Tensor,
    negative_text_indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ITM logits ``[3B, 2]`` and labels of the positives, (text b, negative image), (negative text, image b); the
    negatives index every process's batch."""
    texts, images = (input_ids, attention_mask), (pixel_values,)
    candidates = dict(
        text_candidates=tuple(all_gather_no_grad(t) for t in texts),
        image_candidates=(all_gather_no_grad(pixel_values),),
    )
    rows = itm_triplets(texts, images, negative_image_indices, negative_text_indices, **candidates)
    fused = model.vlmo.encode_fused(rows.text[0], rows.text[1], rows.image[0])
    return model.itm_head(fused.pooler_output), rows.labels


@dataclass
class VlpVlmoForPretrainingOutput(ModelOutput):
    """Pre-training outputs. ``loss = loss_itc + loss_itm + mlm_weight * loss_mlm``; ``loss_itc`` is the mean of the
    dual-encoder and the VL-FFN contrasts, ``loss_mlm`` unweighted. ``logits_per_image`` ``[B, B]`` are this
    process's images against its texts times ``exp(logit_scale)`` (``vl_logits_per_image`` with ``logit_vl_scale``);
    ``*_embeds`` the normalised features. ``itm_logits`` ``[3B, 2]`` (positives, negative image, negative text) with
    ``itm_labels`` 1/0/0 and the negatives' indices into the global batch; ``mlm_logits`` over the masked text
    ``mlm_input_ids`` with ``mlm_labels``."""

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    vl_logits_per_image: torch.Tensor | None = None
    vl_logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    vl_image_embeds: torch.Tensor | None = None
    vl_text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    itm_negative_image_indices: torch.Tensor | None = None
    itm_negative_text_indices: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mlm_input_ids: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None
    vision_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None


class VlpVlmoForPretraining(VlmoRetrievalMixin, MaskedLMOutputEmbeddingsMixin, VlpVlmoPreTrainedModel):
    """VLMo's image-text pre-training: ITC (dual encoder + VL-FFN path), ITM with global hard negatives, MLM.

    Stage-wise training (``hf-vlp train vlmo --stage``) uses this head for the image-text stage; the text-only stage
    is :class:`~hf_vlp.models.vlmo.VlpVlmoForMaskedLM` without images. The retrieval interface ranks by the dual
    encoder (re-ranking with this head's ITM when ``k`` is given)."""

    def __init__(self, config: VlpVlmoConfig) -> None:
        super().__init__(config)
        width = config.hidden_size
        self.vlmo = VlpVlmoModel(config)
        self.vl_image_projection = nn.Linear(width, width, bias=False)
        self.vl_text_projection = nn.Linear(width, width, bias=False)
        self.logit_vl_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.itm_head = ItmHead(width)
        self.mlm_head = untied_mlm_head(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VlpVlmoForPretraining):
            init.constant_(module.logit_vl_scale, self.config.logit_scale_init_value)

    def mask_tokens(
        self, input_ids: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-level BERT masking (``mlm_probability``, 80/10/10) when the batch brings no masking; the collators
        pass whole-word masking as the original trains."""
        config = self.config
        specials = tuple(i for i in (config.pad_token_id, config.cls_token_id, config.sep_token_id) if i is not None)
        return mask_tokens(
            input_ids, vocab_size=config.vocab_size, mask_token_id=config.mask_token_id, special_token_ids=specials,
            mlm_probability=config.mlm_probability, generator=generator,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpVlmoForPretrainingOutput | tuple:
        """One pre-training step's forward on ``B`` matching (image, text) pairs.

        Args:
            return_loss: compute the losses (default ``True``; the collators pass it as well).
            mlm_input_ids, mlm_labels: a given masking (both or neither); otherwise ``input_ids`` are masked here.
            itm_negative_image_indices: ``[B]`` index, into the global batch, of each text's negative image, and
                ``itm_negative_text_indices`` of each image's negative text (both or neither); otherwise drawn.
            generator: random generator for the hard negatives and the masking.
            output_hidden_states, output_attentions: the image-only and text-only passes' (``vision_model_output``,
                ``text_model_output``).
        """
        check_matching_pairs(input_ids, pixel_values, "pre-training")
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("pass both mlm_input_ids and mlm_labels (a given masking), or neither")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        return_loss = True if return_loss is None else return_loss
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        vlmo = self.vlmo

        vision = vlmo.encode_image(pixel_values, keep_vl_input=True, **kwargs)
        text = vlmo.encode_text(input_ids, attention_mask, keep_vl_input=True, **kwargs)
        image_embeds, text_embeds = vlmo.contrastive_embeds(vision.last_hidden_state, text.last_hidden_state)
        grid = patch_grid(pixel_values, self.config.patch_size)
        vl_image_states = vlmo.encode_vl_expert(vision.vl_input, "image", grid=grid)
        vl_text_states = vlmo.encode_vl_expert(text.vl_input, "text", attention_mask)
        vl_image_embeds = nn.functional.normalize(self.vl_image_projection(vl_image_states[:, 0]), dim=-1)
        vl_text_embeds = nn.functional.normalize(self.vl_text_projection(vl_text_states[:, 0]), dim=-1)
        scale, vl_scale = self.vlmo.logit_scale.exp(), self.logit_vl_scale.exp()

        if itm_negative_image_indices is None:
            itm_negative_image_indices, itm_negative_text_indices = global_hard_negatives(
                image_embeds, text_embeds, scale, generator
            )
        itm_logits, itm_labels = fused_itm(
            self, input_ids, attention_mask, pixel_values, itm_negative_image_indices, itm_negative_text_indices
        )

        if mlm_input_ids is None:
            mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, generator)
        mlm_states = vlmo.encode_fused(mlm_input_ids, attention_mask, pixel_values).last_hidden_state
        mlm_logits = self.mlm_head(mlm_states[:, : input_ids.shape[1]])

        loss = loss_itc = loss_itm = loss_mlm = None
        if return_loss:
            loss_itc = (
                contrastive_loss(image_embeds, text_embeds, scale)
                + contrastive_loss(vl_image_embeds, vl_text_embeds, vl_scale)
            ) / 2
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            loss_mlm = masked_lm_loss(mlm_logits, mlm_labels)
            loss = loss_itc + loss_itm + self.config.mlm_weight * loss_mlm
        logits_per_image = scale * image_embeds @ text_embeds.t()
        vl_logits_per_image = vl_scale * vl_image_embeds @ vl_text_embeds.t()
        return VlpVlmoForPretrainingOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_mlm=loss_mlm,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            vl_logits_per_image=vl_logits_per_image,
            vl_logits_per_text=vl_logits_per_image.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            vl_image_embeds=vl_image_embeds,
            vl_text_embeds=vl_text_embeds,
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            itm_negative_image_indices=itm_negative_image_indices,
            itm_negative_text_indices=itm_negative_text_indices,
            mlm_logits=mlm_logits,
            mlm_input_ids=mlm_input_ids,
            mlm_labels=mlm_labels,
            vision_model_output=vision,
            text_model_output=text,
        )


@dataclass
class VlpVlmoForImageTextRetrievalOutput(ModelOutput):
    """Retrieval fine-tuning outputs: ``loss = loss_itc + retrieval_itm_weight * loss_itm`` (ITM only when that weight
    is positive), the dual encoder's ``logits_per_image`` ``[B, B]`` and normalised ``*_embeds``, the ITM logits and
    labels of the ``3B`` fused pairs when ITM is trained."""

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    vision_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None


class VlpVlmoForImageTextRetrieval(VlmoRetrievalMixin, VlpVlmoPreTrainedModel):
    """VLMo retrieval: the dual encoder fine-tuned with the contrastive loss over the global batch (the original's
    ``compute_irtr``), plus, with ``config.retrieval_itm_weight > 0``, ITM on global hard negatives so that the
    optional fused re-ranking (``score_matrices(..., k=...)``) is trained too. The ``itm_head`` loads from a
    pre-training checkpoint."""

    def __init__(self, config: VlpVlmoConfig) -> None:
        super().__init__(config)
        self.vlmo = VlpVlmoModel(config)
        self.itm_head = ItmHead(config.hidden_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpVlmoForImageTextRetrievalOutput | tuple:
        """One fine-tuning step on ``B`` matching (image, caption) pairs (``return_loss`` defaults to ``True``)."""
        check_matching_pairs(input_ids, pixel_values, "retrieval training")
        return_loss = True if return_loss is None else return_loss
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        vision = self.vlmo.encode_image(pixel_values, **kwargs)
        text = self.vlmo.encode_text(input_ids, attention_mask, **kwargs)
        image_embeds, text_embeds = self.vlmo.contrastive_embeds(vision.last_hidden_state, text.last_hidden_state)
        scale = self.vlmo.logit_scale.exp()
        itm_logits = itm_labels = loss = loss_itc = loss_itm = None
        weight = self.config.retrieval_itm_weight
        if weight > 0:
            negatives = global_hard_negatives(image_embeds, text_embeds, scale, generator)
            itm_logits, itm_labels = fused_itm(self, input_ids, attention_mask, pixel_values, *negatives)
        if return_loss:
            loss = loss_itc = contrastive_loss(image_embeds, text_embeds, scale)
            if itm_logits is not None:
                loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
                loss = loss + weight * loss_itm
        logits_per_image = scale * image_embeds @ text_embeds.t()
        return VlpVlmoForImageTextRetrievalOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            vision_model_output=vision,
            text_model_output=text,
        )


__all__ = [
    "VlmoRetrievalMixin",
    "VlpVlmoForImageTextRetrieval",
    "VlpVlmoForImageTextRetrievalOutput",
    "VlpVlmoForPretraining",
    "VlpVlmoForPretrainingOutput",
    "global_hard_negatives",
]
