"""The momentum-contrastive base shared by ALBEF's and BLIP's pre-training and retrieval heads.

A head built on :class:`MomentumContrastiveMixin` holds the online towers under the flat names every ALBEF/BLIP head
uses (``vision_model``, ``text_model``, ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``), and the mixin adds,
the same way for both architectures:

- the frozen momentum copies ``momentum_vision_model``, ``momentum_vision_proj``, ``momentum_text_model``,
  ``momentum_text_proj`` and the feature queues ``image_queue``/``text_queue`` (+ ``idx_queue`` for retrieval);
- the EMA pairs (``momentum_pairs``), the ITC step against the queues (``_contrastive_step``), the ITM triplets;
- the retrieval interface every evaluation, CapFilt and training task calls: :meth:`encode_images`,
  :meth:`encode_texts`, :meth:`score_matrices`, :meth:`rank`, plus :meth:`get_itm_logits`; retrieval heads add the
  training ``forward`` of :class:`ImageTextRetrievalHeadMixin`.

A model supplies what differs: its momentum text tower (:meth:`build_momentum_text_model`), what its ITM reads for a
text (``itm_text_field``: ALBEF fuses the unimodal text states, BLIP re-encodes the ids with ``[ENC]`` first), the ITM
logits of (text, image) pairs (:meth:`pair_itm_logits`) and whether retrieval re-ranking adds the cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ..objectives.contrastive import (
    ImageTextRetrievalOutput,
    MomentumContrastiveStep,
    RetrievalFeatures,
    RetrievalScores,
    check_image_ids,
    check_matching_pairs,
    check_negative_indices,
    clamp_temperature_,
    contrastive_output_fields,
    diagonal_targets,
    distilled_itc,
    enqueue_momentum_features,
    itm_triplets,
    momentum_contrastive_step,
    rerank_top_k,
    retrieval_queue_update,
    same_id_mask,
    sample_itm_negatives,
)
from ..objectives.losses import id_match_targets
from ..objectives.momentum import FeatureQueue, ModulePair, MomentumModelMixin
from .modeling_utils import OutputKwargs


@dataclass
class ItcItmResult:
    """Pre-training's contrastive part: the step, ``loss_itc``/``loss_itm`` (``None`` unless asked), the ITM logits
    and labels over the triplets, the negatives used, and the resolved ``attention_mask`` and ``alpha``."""

    step: "ContrastiveStep"
    loss_itc: torch.Tensor | None
    loss_itm: torch.Tensor | None
    itm_logits: torch.Tensor
    itm_labels: torch.Tensor
    negative_image_indices: torch.Tensor
    negative_text_indices: torch.Tensor
    attention_mask: torch.Tensor
    alpha: float

    def output_fields(self) -> dict[str, Any]:
        """The ITC/ITM fields of a pre-training output (losses, logits, features, ITM triplets)."""
        return {
            "loss_itc": self.loss_itc,
            "loss_itm": self.loss_itm,
            **contrastive_output_fields(self.step.itc),
            "itm_logits": self.itm_logits,
            "itm_labels": self.itm_labels,
            "itm_negative_image_indices": self.negative_image_indices,
            "itm_negative_text_indices": self.negative_text_indices,
            **self.step.tower_output_fields(),
        }


@dataclass
class ContrastiveStep:
    """The batch's online tower outputs (their states feed the ITM and the MLM/LM), the momentum image tokens
    (distillation teachers) and its momentum-contrastive step (ITC logits, features for the queues)."""

    vision_outputs: ModelOutput
    text_outputs: ModelOutput
    momentum_image_states: torch.Tensor
    itc: MomentumContrastiveStep

    @property
    def image_states(self) -> torch.Tensor:
        return self.vision_outputs.last_hidden_state

    @property
    def text_states(self) -> torch.Tensor:
        return self.text_outputs.last_hidden_state

    def tower_output_fields(self) -> dict[str, ModelOutput]:
        return {"vision_model_output": self.vision_outputs, "text_model_output": self.text_outputs}


class MomentumContrastiveMixin(MomentumModelMixin):
    """ITC + ITM heads with momentum towers and feature queues (ALBEF, BLIP). Put it before the architecture's
    ``PreTrainedModel`` base; build the online towers, then call :meth:`build_momentum_towers` and
    :meth:`build_feature_queues` before ``post_init`` (the registration order fixes the initialisation order).

    The model provides ``vision_model``/``text_model``/``vision_proj``/``text_proj``/``itm_head``/``temp``,
    ``encode_image(pixel_values, interpolate_pos_encoding)``, ``build_momentum_text_model(text_config)`` (the momentum
    copy of the text tower's unimodal part) and ``pair_itm_logits(texts, attention_mask, image_states)`` -> ``[N, 2]``
    ITM logits (column 1 = match) of pairs (text row n, image row n), ``texts`` being what ``itm_text_field`` names.
    """

    accepts_loss_kwargs = False
    # what pair_itm_logits reads for a text: its unimodal "hidden_states" or its "input_ids"
    itm_text_field: str = "hidden_states"
    # whether retrieval re-ranking scores a candidate by ITM logit + cosine (BLIP) or by the ITM logit alone (ALBEF)
    retrieval_adds_similarity: bool = False
    retrieval_output_class: type[ImageTextRetrievalOutput] = ImageTextRetrievalOutput

    # ------------------------------------------------------------------------------------------------ building

    def build_momentum_towers(self, config: Any) -> None:
        """``momentum_vision_model``, ``momentum_vision_proj``, ``momentum_text_model``, ``momentum_text_proj``: frozen
        EMA copies of the online towers (filled by ``init_momentum``)."""
        vision, text = config.vision_config, config.text_config
        self.momentum_vision_model = type(self.vision_model)(vision)
        self.momentum_vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.momentum_text_model = self.build_momentum_text_model(text)
        self.momentum_text_proj = nn.Linear(text.hidden_size, config.embed_dim)

    def build_feature_queues(self, config: Any, with_ids: bool = False) -> None:
        """``image_queue``/``text_queue`` of normalised momentum features and, ``with_ids``, the retrieval
        ``idx_queue`` of image ids (empty slots -100)."""
        self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)
        if with_ids:
            self.idx_queue = FeatureQueue(1, config.queue_size, dtype=torch.long, fill_value=-100)

    def momentum_text_pair(self) -> ModulePair:
        """The (online, momentum) text modules of the EMA; heads with text parts outside the towers override it."""
        return self.text_model, self.momentum_text_model

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) module pairs for the EMA, the originals' ``model_pairs``."""
        return [
            (self.vision_model, self.momentum_vision_model),
            (self.vision_proj, self.momentum_vision_proj),
            self.momentum_text_pair(),
            (self.text_proj, self.momentum_text_proj),
        ]

    # ------------------------------------------------------------------------------------------------ shared steps

    def _contrastive_step(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **flags: bool,
    ) -> ContrastiveStep:
        """Clamp ``temp``; encode both modalities with the online and momentum towers (unimodal text, ``[CLS]``
        first); score the online features against [momentum batch ; queue] as the originals' ITC does."""
        clamp_temperature_(self.temp, self.config.temp_min, self.config.temp_max)
        vision_outputs = self.encode_image(pixel_values, interpolate_pos_encoding, **flags)
        text_outputs = self.encode_text(input_ids, attention_mask, token_type_ids, **flags)
        image_states, text_states = vision_outputs.last_hidden_state, text_outputs.last_hidden_state
        with torch.no_grad():
            momentum_image_states = self.momentum_vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
            ).last_hidden_state
            momentum_text_states = self.momentum_text_model(
                input_ids, attention_mask, token_type_ids=token_type_ids, mode="text", return_dict=True
            ).last_hidden_state
        itc = momentum_contrastive_step(
            image_states[:, 0],
            text_states[:, 0],
            momentum_image_states[:, 0],
            momentum_text_states[:, 0],
            vision_proj=self.vision_proj,
            text_proj=self.text_proj,
            momentum_vision_proj=self.momentum_vision_proj,
            momentum_text_proj=self.momentum_text_proj,
            image_queue=self.image_queue,
            text_queue=self.text_queue,
            temp=self.temp,
        )
        return ContrastiveStep(vision_outputs, text_outputs, momentum_image_states, itc)

    def check_token_type_ids(self, token_type_ids: torch.Tensor | None) -> None:
        """Reject ``token_type_ids`` the text tower cannot take (default: any are taken)."""

    def _itm_texts(self, input_ids: torch.Tensor, step: ContrastiveStep) -> torch.Tensor:
        return step.text_states if self.itm_text_field == "hidden_states" else input_ids

    def _itm_on_triplets(
        self,
        texts: torch.Tensor,
        attention_mask: torch.Tensor,
        image_states: torch.Tensor,
        negative_image_indices: torch.Tensor,
        negative_text_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM logits and labels over ``[positives ; (text b, negative image) ; (negative text, image b)]``."""
        triplets = itm_triplets((texts, attention_mask), (image_states,), negative_image_indices, negative_text_indices)
        (itm_texts, itm_masks), (itm_images,) = triplets.text, triplets.image
        logits = self.pair_itm_logits(itm_texts, itm_masks, itm_images)
        return logits, triplets.labels.to(logits.device)

    def _pretraining_itc_itm(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        negative_image_indices: torch.Tensor | None,
        negative_text_indices: torch.Tensor | None,
        alpha: float | None,
        update_queues: bool | None,
        return_loss: bool | None,
        generator: torch.Generator | None,
        interpolate_pos_encoding: bool,
        output_flags: dict[str, bool],
    ) -> ItcItmResult:
        """Pre-training's ITC (distilled, diagonal targets) and ITM on hard negatives drawn from the in-batch logits
        (diagonal excluded, ``itm_negative_eps`` added) unless given; enqueues the momentum features when
        ``update_queues`` (default ``self.training``). ``alpha`` defaults to ``self.distill_alpha``, the
        ``attention_mask`` to all ones."""
        alpha = self.distill_alpha if alpha is None else float(alpha)
        update_queues = self.training if update_queues is None else update_queues
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        step = self._contrastive_step(
            input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding, **output_flags
        )
        itc = step.itc
        loss_itc = distilled_itc(itc, diagonal_targets(itc), alpha, self.temp) if return_loss else None
        if update_queues:
            enqueue_momentum_features(itc, self.image_queue, self.text_queue)
        if negative_image_indices is None:
            negative_image_indices, negative_text_indices = sample_itm_negatives(
                itc, None, generator, eps=self.itm_negative_eps
            )
        itm_logits, itm_labels = self._itm_on_triplets(
            self._itm_texts(input_ids, step), attention_mask, step.image_states, negative_image_indices,
            negative_text_indices,
        )
        loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels) if return_loss else None
        return ItcItmResult(
            step, loss_itc, loss_itm, itm_logits, itm_labels, negative_image_indices, negative_text_indices,
            attention_mask, alpha,
        )

    # ------------------------------------------------------------------------------------------------ retrieval

    def _itc_hard_targets(self, step: MomentumContrastiveStep, image_ids: torch.Tensor) -> torch.Tensor:
        """Retrieval's ITC hard targets: uniform over every column showing the same image id (batch and queue)."""
        return id_match_targets(image_ids, self.idx_queue.with_batch(image_ids)[0])

    def _retrieval_negatives(
        self, step: MomentumContrastiveStep, image_ids: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Retrieval's ITM hard negatives: drawn from the step's in-batch logits, never sharing the image id."""
        return sample_itm_negatives(step, same_id_mask(image_ids), generator, eps=self.itm_negative_eps)

    def get_itm_logits(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Image-text matching logits ``[B, 2]`` (column 1 = match) of pairs (image b, text b), from ``pixel_values``
        or precomputed ``image_hidden_states`` (the ViT tokens)."""
        image_hidden_states = self.image_tokens(pixel_values, image_hidden_states, interpolate_pos_encoding)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        texts = input_ids
        if self.itm_text_field == "hidden_states":
            texts = self.text_model(input_ids, attention_mask, mode="text", return_dict=True).last_hidden_state
        return self.pair_itm_logits(texts, attention_mask, image_hidden_states)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> RetrievalFeatures:
        """Gallery image features: ViT tokens and normalised ``vision_proj([CLS])`` (encode a gallery in chunks and
        :meth:`RetrievalFeatures.cat` them)."""
        states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        embeds = nn.functional.normalize(self.vision_proj(states[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, hidden_states=states)

    @torch.no_grad()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RetrievalFeatures:
        """Gallery text features: normalised ``text_proj`` of the unimodal ``[CLS]``, the padding mask and what the
        ITM re-reads (the unimodal states or the ids, ``itm_text_field``). Pad every chunk to one length (the
        originals use ``padding='max_length'``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.text_model(input_ids, attention_mask, mode="text", return_dict=True).last_hidden_state
        embeds = nn.functional.normalize(self.text_proj(states[:, 0]), dim=-1)
        if self.itm_text_field == "hidden_states":
            return RetrievalFeatures(embeds, hidden_states=states, attention_mask=attention_mask)
        return RetrievalFeatures(embeds, input_ids=input_ids, attention_mask=attention_mask)

    @torch.no_grad()
    def score_matrices(
        self,
        images: RetrievalFeatures,
        texts: RetrievalFeatures,
        k: int = 256,
        fill_value: float = -100.0,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """The originals' retrieval scores: for each image the ``k`` texts of highest ITC cosine (and for each text the
        ``k`` images) get the ITM match logit ``itm_head(...)[:, 1]`` (plus the cosine when
        ``retrieval_adds_similarity``: BLIP); every other entry is ``fill_value``. ``k`` is 256 for COCO and 128 for
        Flickr30k in the originals, capped at the gallery size. ``batch_size`` queries are fused per call (see
        :func:`~hf_vlp.objectives.contrastive.rerank_top_k`)."""
        images.require("images", "hidden_states", built_by="encode_images")
        texts.require("texts", self.itm_text_field, "attention_mask", built_by="encode_texts")
        text_inputs = getattr(texts, self.itm_text_field)

        def match_logits(image_indices: torch.Tensor, text_indices: torch.Tensor) -> torch.Tensor:
            return self.pair_itm_logits(
                text_inputs[text_indices], texts.attention_mask[text_indices], images.hidden_states[image_indices]
            )[:, 1]

        return rerank_top_k(
            images.embeds @ texts.embeds.T, match_logits, k, add_similarity=self.retrieval_adds_similarity,
            fill_value=fill_value, batch_size=batch_size,
        )

    @torch.no_grad()
    def rank(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        k: int = 256,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """:meth:`score_matrices` of a gallery small enough to encode in one batch per modality."""
        return self.score_matrices(
            self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask), k=k, batch_size=batch_size
        )


class ImageTextRetrievalHeadMixin:
    """The retrieval fine-tuning ``forward`` of a :class:`MomentumContrastiveMixin` head (ALBEF, BLIP): ITC distilled
    against the queues with image-id positives (``_itc_hard_targets``) and ITM on hard negatives
    (``_retrieval_negatives``) when ``image_ids`` are given, else the contrastive logits and the positives' ITM logits.
    Put it first among the head's bases."""

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> ImageTextRetrievalOutput | tuple:
        """One fine-tuning step's forward on ``B`` matching (image, caption) pairs.

        Args:
            token_type_ids: the text's token types (BLIP, which has none, accepts them all zero).
            image_ids: ``[B]`` integer id of each pair's image (captions of one image share it; ids must be >= 0
                because the empty queue slots hold -100). Given, the losses are computed and the hard negatives
                drawn; without them only the contrastive logits and the positives' ITM logits are returned.
            itm_negative_image_indices: ``[B]`` in-batch index of each text's negative image, and
                ``itm_negative_text_indices`` of each image's negative text (both or neither); otherwise drawn by
                ``_retrieval_negatives`` (softmaxed in-batch similarities, same-id entries zeroed).
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features and ids (needs ``image_ids``); default
                ``self.training and image_ids is not None``.
            generator: random generator for the hard negatives.
            output_hidden_states, output_attentions: the online towers' (``vision_model_output``,
                ``text_model_output``).
        """
        self.check_token_type_ids(token_type_ids)
        check_matching_pairs(input_ids, pixel_values, "retrieval training")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        image_ids = check_image_ids(image_ids, input_ids.shape[0], input_ids.device)
        update_queues = retrieval_queue_update(update_queues, self.training, image_ids)
        alpha = self.distill_alpha if alpha is None else float(alpha)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        step = self._contrastive_step(
            input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding, **kwargs
        )
        itc = step.itc
        loss = loss_itc = loss_itm = itm_labels = None
        if image_ids is not None:
            loss_itc = distilled_itc(itc, self._itc_hard_targets(itc, image_ids), alpha, self.temp)
        if update_queues:
            enqueue_momentum_features(itc, self.image_queue, self.text_queue, image_ids, self.idx_queue)
        texts = self._itm_texts(input_ids, step)
        if image_ids is None:  # only the positives
            itm_logits = self.pair_itm_logits(texts, attention_mask, step.image_states)
            itm_negative_image_indices = itm_negative_text_indices = None
        else:
            if itm_negative_image_indices is None:
                itm_negative_image_indices, itm_negative_text_indices = self._retrieval_negatives(
                    itc, image_ids, generator
                )
            itm_logits, itm_labels = self._itm_on_triplets(
                texts, attention_mask, step.image_states, itm_negative_image_indices, itm_negative_text_indices
            )
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            loss = loss_itc + loss_itm
        return self.retrieval_output_class(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            **contrastive_output_fields(itc),
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            itm_negative_image_indices=itm_negative_image_indices,
            itm_negative_text_indices=itm_negative_text_indices,
            **step.tower_output_fields(),
        )


__all__ = ["ContrastiveStep", "ImageTextRetrievalHeadMixin", "ItcItmResult", "MomentumContrastiveMixin"]
