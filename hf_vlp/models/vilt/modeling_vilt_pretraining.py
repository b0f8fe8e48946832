"""ViLT pre-training (image-text matching + whole-word-masked language modelling + word-patch alignment) and
image-text retrieval.

Pre-training runs two passes per step, as the original: the MLM pass encodes the masked text with its own image, the
ITM pass the clean text with the image given by ``itm_image_index`` (its own for a positive, another example's for a
negative; the collator draws half of each). Word-patch alignment (WPA) measures, for every ITM pair, the optimal
transport cost between its word and patch states (IPOT); the loss lowers it for matched pairs and raises it for the
others. Loss = MLM + ITM + ``wpa_weight`` x WPA (unweighted sum of the first two, as the original).

Retrieval has no contrastive stage: every (image, text) pair of the gallery is encoded jointly and scored by one logit
(the ITM "match" logit of the pre-trained model - zero-shot - or ``rank_output`` after fine-tuning), each image embedded
once and reused for every text.
"""


import abc
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from ...modules.heads import ItmHead
from ...modules.vision import MaskedPatchEmbedding
from ...objectives.contrastive import RetrievalFeatures, RetrievalScores
from ...objectives.mlm import masked_lm_loss
from ...objectives.wpa import word_patch_alignment_distance, wpa_loss
from ..modeling_utils import OutputKwargs
from .configuration_vilt import VlpViltConfig
from ..single_stream_heads import untied_mlm_head
from ..towers import MaskedLMOutputEmbeddingsMixin
from .modeling_vilt import VlpViltModel, VlpViltPreTrainedModel, text_states

TEXTS_PER_SCORING_CALL = 64  # texts scored against one image per forward in exhaustive retrieval


def select_images(image_embeds: MaskedPatchEmbedding, index: torch.Tensor) -> MaskedPatchEmbedding:
    """The embedded images ``index`` ``[N]`` (rows may repeat): one image per text of a batch of pairs."""
    return MaskedPatchEmbedding(
        image_embeds.tokens[index], image_embeds.token_mask[index], image_embeds.patch_index[index], image_embeds.grid
    )


def flatten_texts(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, T, L]`` texts per image as ``[B * T, L]`` pairs (image-major)."""
    return tensor.flatten(0, 1) if tensor is not None else None


class ExhaustiveRetrievalMixin(abc.ABC):
    """The retrieval interface (``encode_images``, ``encode_texts``, ``score_matrices``, ``rank``) of a single-stream
    model: no contrastive embeddings, so every pair is scored by :meth:`pair_scores` (a head's match logit) and the
    first-stage ranking is the final one (``has_contrastive_stage = False``)."""

    has_contrastive_stage = False

    @abc.abstractmethod
    def pair_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        """The match score ``[N]`` of ``N`` pairs from their pooled ``[CLS]`` states."""

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> RetrievalFeatures:
        """Gallery images embedded once (every patch, row-major): tokens in ``hidden_states``, their mask in
        ``attention_mask``; chunks of different canvases join with :meth:`RetrievalFeatures.cat` (padded slots)."""
        embedded = self.vilt.embed_image(pixel_values, pixel_mask)
        return RetrievalFeatures(None, hidden_states=embedded.tokens, attention_mask=embedded.token_mask)

    @torch.no_grad()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RetrievalFeatures:
        """Gallery texts: the ids and padding mask the joint encoder reads (pad every chunk to one length)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return RetrievalFeatures(None, input_ids=input_ids, attention_mask=attention_mask)

    @torch.no_grad()
    def score_matrices(
        self,
        images: RetrievalFeatures,
        texts: RetrievalFeatures,
        k: int | None = None,
        fill_value: float = -100.0,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """Every (image, text) pair's match score ``[images, texts]``, as the original's exhaustive
        ``compute_irtr_recall``. ``k`` and ``fill_value`` are accepted for the shared interface and unused (nothing
        is pruned); ``batch_size`` images are scored per pass over the texts."""
        images.require("images", "hidden_states", "attention_mask", built_by="encode_images")
        texts.require("texts", "input_ids", "attention_mask", built_by="encode_texts")
        num_images, num_texts = images.hidden_states.shape[0], texts.input_ids.shape[0]
        scores = images.hidden_states.new_empty(num_images, num_texts, dtype=torch.float32)
        text_chunk = max(1, TEXTS_PER_SCORING_CALL // max(1, min(batch_size, num_images)))
        for image_start in range(0, num_images, batch_size):
            image_rows = torch.arange(image_start, min(image_start + batch_size, num_images), device=scores.device)
            for text_start in range(0, num_texts, text_chunk):
                text_rows = torch.arange(text_start, min(text_start + text_chunk, num_texts), device=scores.device)
                pair_images = image_rows.repeat_interleave(text_rows.shape[0])
                pair_texts = text_rows.repeat(image_rows.shape[0])
                embedded = MaskedPatchEmbedding(
                    images.hidden_states[pair_images], images.attention_mask[pair_images], None, (0, 0)
                )
                pooled = self.vilt(
                    texts.input_ids[pair_texts], texts.attention_mask[pair_texts], image_embeds=embedded,
                    return_dict=True,
                ).pooler_output
                scores[image_rows[:, None], text_rows[None, :]] = (
                    self.pair_scores(pooled).float().view(image_rows.shape[0], text_rows.shape[0])
                )
        return RetrievalScores(similarities=scores, image_to_text=scores, text_to_image=scores.T)

    @torch.no_grad()
    def rank(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """:meth:`score_matrices` of a gallery small enough to encode in one batch per modality."""
        return self.score_matrices(
            self.encode_images(pixel_values, pixel_mask), self.encode_texts(input_ids, attention_mask),
            batch_size=batch_size,
        )


@dataclass
class VlpViltForPretrainingOutput(ModelOutput):
    """``loss`` = ``loss_mlm + loss_itm + loss_wpa`` (``loss_wpa`` already weighted by ``wpa_weight``), each term only
    when its labels are given; ``itm_logits`` ``[B, 2]`` (column 1 = match) and ``wpa_distance`` ``[B]`` of the ITM
    pairs; ``mlm_logits`` ``[B, L, vocab]`` of the MLM pass (of the ITM pass when no MLM input is given);
    ``pooler_output`` and ``last_hidden_state`` of the ITM pass, ``image_attention_mask`` its image-token mask."""

    loss: torch.Tensor | None = None
    loss_mlm: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_wpa: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    wpa_distance: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    image_attention_mask: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VlpViltForPretraining(MaskedLMOutputEmbeddingsMixin, ExhaustiveRetrievalMixin, VlpViltPreTrainedModel):
    """ViLT pre-training: ITM head, MLM head (untied decoder) and word-patch alignment; zero-shot retrieval scores
    pairs by the ITM match logit."""

    def __init__(self, config: VlpViltConfig) -> None:
        super().__init__(config)
        self.vilt = VlpViltModel(config)
        self.itm_head = ItmHead(config.hidden_size)
        self.mlm_head = untied_mlm_head(config)
        self.post_init()

    def pair_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.itm_head(pooled)[:, 1]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        itm_labels: torch.Tensor | None = None,
        itm_image_index: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpViltForPretrainingOutput | tuple:
        """One pre-training step's forward on ``B`` (image, caption) examples.

        Args:
            input_ids: the clean captions (the ITM pass).
            mlm_input_ids: the masked captions of the MLM pass (whole-word masking, see the collator); ``labels`` are
                their MLM labels (-100 where nothing is masked). Without ``mlm_input_ids`` the MLM logits and loss come
                from the ITM pass.
            itm_labels: ``[B]`` 1 where text b is paired with its own image in the ITM pass, 0 for a negative.
            itm_image_index: ``[B]`` which image (row of ``pixel_values``) text b is paired with in the ITM pass
                (default: its own).
        """
        image_embeds = self.vilt.image_tokens(pixel_values, pixel_mask)
        itm_images = image_embeds
        if itm_image_index is not None:
            itm_images = select_images(image_embeds, itm_image_index.to(image_embeds.tokens.device).long())
        itm_pass = self.vilt(
            input_ids, attention_mask, token_type_ids, image_embeds=itm_images, return_dict=True, **kwargs
        )
        itm_logits = self.itm_head(itm_pass.pooler_output)
        if mlm_input_ids is None:
            mlm_logits = self.mlm_head(text_states(itm_pass, input_ids))
        else:
            mlm_pass = self.vilt(mlm_input_ids, attention_mask, token_type_ids, image_embeds=image_embeds, return_dict=True)
            mlm_logits = self.mlm_head(text_states(mlm_pass, mlm_input_ids))
        loss_mlm = masked_lm_loss(mlm_logits, labels) if labels is not None else None
        loss_itm = loss_wpa = wpa_distance = None
        if itm_labels is not None:
            itm_labels = itm_labels.to(itm_logits.device).long()
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            length = input_ids.shape[1]
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            wpa_distance = word_patch_alignment_distance(
                itm_pass.last_hidden_state[:, :length],
                itm_pass.last_hidden_state[:, length:],
                attention_mask,
                itm_pass.image_attention_mask,
                beta=self.config.wpa_beta,
                iterations=self.config.wpa_iterations,
            )
            loss_wpa = wpa_loss(wpa_distance, itm_labels, weight=self.config.wpa_weight)
        terms = [term for term in (loss_mlm, loss_itm, loss_wpa) if term is not None]
        return VlpViltForPretrainingOutput(
            loss=torch.stack(terms).sum() if terms else None,
            loss_mlm=loss_mlm,
            loss_itm=loss_itm,
            loss_wpa=loss_wpa,
            itm_logits=itm_logits,
            mlm_logits=mlm_logits,
            wpa_distance=wpa_distance,
            pooler_output=itm_pass.pooler_output,
            last_hidden_state=itm_pass.last_hidden_state,
            image_attention_mask=itm_pass.image_attention_mask,
            hidden_states=itm_pass.hidden_states,
            attentions=itm_pass.attentions,
        )


@dataclass
class VlpViltForImageTextRetrievalOutput(ModelOutput):
    """``logits``: the match score of each (image, text) pair, ``[B, 1]`` for ``B`` pairs or ``[B, T]`` for ``T`` texts
    per image; ``loss`` the cross-entropy with the first text as the positive (fine-tuning)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VlpViltForImageTextRetrieval(ExhaustiveRetrievalMixin, VlpViltPreTrainedModel):
    """Retrieval fine-tuning and scoring with ``rank_output`` (``Linear(D, 1)`` on the pooled ``[CLS]``).

    ``rank_output`` starts as the ITM head's "match" row when a checkpoint lacks it (the original's initialisation), so
    a pre-trained model fine-tunes from its zero-shot scorer; the ITM head itself is kept (frozen) as the original.
    Fine-tuning: each image with ``T`` texts, its own caption first and ``T - 1`` negatives (the original: 15), and a
    cross-entropy over the ``T`` scores towards the first.
    """

    def __init__(self, config: VlpViltConfig) -> None:
        super().__init__(config)
        self.vilt = VlpViltModel(config)
        self.itm_head = ItmHead(config.hidden_size)
        self.itm_head.requires_grad_(False)
        self.rank_output = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """transformers' loading, with the ITM head frozen again (loading materialises fresh, trainable tensors)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) on request
        model.itm_head.requires_grad_(False)
        return loaded

    def _init_weights(self, module: nn.Module) -> None:
        """``rank_output`` starts as the ITM head's match row (initialised or loaded before it: registered first)."""
        if module is getattr(self, "rank_output", None):
            init.copy_(module.weight, self.itm_head.weight[1:].detach())
            init.copy_(module.bias, self.itm_head.bias[1:].detach())
            return
        super()._init_weights(module)

    def pair_scores(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.rank_output(pooled)[:, 0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpViltForImageTextRetrievalOutput | tuple:
        """``input_ids`` ``[B, L]`` (text b with image b: logits ``[B, 1]``) or ``[B, T, L]`` (T texts per image, the
        positive first: logits ``[B, T]``, and the loss unless ``return_loss=False``)."""
        grouped = input_ids.ndim == 3
        if return_loss and not grouped:
            raise ValueError(
                "the retrieval loss needs input_ids [images, texts per image, length] with each image's own caption "
                "first (the ranking collator builds them)"
            )
        texts_per_image = input_ids.shape[1] if grouped else 1
        image_embeds = self.vilt.image_tokens(pixel_values, pixel_mask)
        if grouped:
            rows = torch.arange(input_ids.shape[0], device=image_embeds.tokens.device)
            image_embeds = select_images(image_embeds, rows.repeat_interleave(texts_per_image))
            input_ids, attention_mask = flatten_texts(input_ids), flatten_texts(attention_mask)
            token_type_ids = flatten_texts(token_type_ids)
        outputs = self.vilt(
            input_ids, attention_mask, token_type_ids, image_embeds=image_embeds, return_dict=True, **kwargs
        )
        logits = self.rank_output(outputs.pooler_output).view(-1, texts_per_image)
        loss = None
        if grouped and return_loss is not False:
            loss = nn.functional.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))
        return VlpViltForImageTextRetrievalOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "ExhaustiveRetrievalMixin",
    "VlpViltForImageTextRetrieval",
    "VlpViltForImageTextRetrievalOutput",
    "VlpViltForPretraining",
    "VlpViltForPretrainingOutput",
]
