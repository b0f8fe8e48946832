r"""ViLT (Kim et al., 2021): one transformer over text embeddings and linearly embedded image patches.

    text  -> BERT word + position (+ type 0) embeddings -> LayerNorm --------+ modality row 0 --+
    image -> patch projection + per-image interpolated positions (+ cls) ----+ modality row 1 --+-> ViT blocks -> norm
                                                                                                  |
                                               text [CLS] -> pooler (tanh dense) -> cls_feats -> heads

No convolutional backbone and no region features: the image side is one patch projection. Images of different sizes
share a zero-padded canvas; each image's valid patch grid gets the position grid interpolated to its own size, and
padding patches are masked as attention keys.

This file holds the base model and the heads on ``cls_feats`` / the text states (MLM, VQA, NLVR2); pre-training
(ITM + MLM + word-patch alignment) and retrieval are in ``modeling_vilt_pretraining.py``. Every head keeps the
encoder under ``vilt.*``, so any head's checkpoint loads into any other (heads missing from it are initialised).
"""


from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import MaskedLMOutput, ModelOutput, SequenceClassifierOutput

from ...modules.attention import padding_mask
from ...modules.heads import FirstTokenPooler
from ...modules.text import BertStyleEmbeddings
from ...modules.towers import build_vision_tower
from ...modules.transformer import BlockOptions
from ...modules.vision import MaskedPatchEmbedding, VisionTransformer, check_finite_pixels, check_pixel_values
from ...objectives.mlm import masked_lm_loss
from ..modeling_utils import OutputKwargs, VlpPreTrainedModel
from ..single_stream_heads import SecondImageRowMixin, SoftScoreAnswersMixin, pooled_classifier, untied_mlm_head
from ..towers import MaskedLMOutputEmbeddingsMixin
from .configuration_vilt import VlpViltConfig


def block_options(config: VlpViltConfig) -> BlockOptions:
    """timm ViT blocks as ViLT trains them: exact GELU, LayerNorm eps 1e-6, dropout after the attention projection,
    after the activation and after ``fc2`` (``hidden_dropout_prob``), none on the attention probabilities."""
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=config.attention_probs_dropout_prob,
        hidden_dropout=config.hidden_dropout_prob,
        activation_dropout=config.hidden_dropout_prob,
    )


def pixel_mask_from_padding(pixel_values: torch.Tensor) -> torch.Tensor:
    """The original's mask when none is given: a pixel is real unless its channels sum to exactly 0 (the collate pads
    with 0 after normalisation; a real 8-bit pixel normalised with mean = std = 0.5 never sums to 0)."""
    return (pixel_values.sum(dim=1) != 0).long()


@dataclass
class VlpViltModelOutput(ModelOutput):
    """``last_hidden_state`` ``[B, L_text + L_image, D]`` after the final norm (text tokens first, then the image class
    token and the patch tokens); ``pooler_output`` the pooled text ``[CLS]`` (``cls_feats``); ``image_attention_mask``
    ``[B, L_image]`` (1 = image class token or real patch, 0 = padding slot) and ``patch_index`` ``[B, L_image - 1, 2]``
    the (row, column) of each patch token on the canvas's patch grid (-1 for padding slots). ``hidden_states``: the concatenated embeddings and
    every block's output (before the final norm)."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    image_attention_mask: torch.Tensor | None = None
    patch_index: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VlpViltPreTrainedModel(VlpPreTrainedModel):
    config: VlpViltConfig
    base_model_prefix = "vilt"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["PreNormBlock"]
    accepts_loss_kwargs = False
    model_card_template = "vilt"

    def model_card_fields(self) -> dict[str, Any]:
        config = self.config
        return {
            "description": (
                f"{config.num_hidden_layers} layers, width {config.hidden_size}, patch {config.patch_size}, position "
                f"grid {config.image_size // config.patch_size}x{config.image_size // config.patch_size}, "
                f"{config.max_position_embeddings} text positions"
            ),
            # only a VQA model's card names its answer vocabulary (the other heads carry a placeholder label count)
            "vqa_answers": config.num_labels if self.model_card_pipeline_tag == "visual-question-answering" else None,
            "text_positions": config.max_position_embeddings,
        }

    def _init_weights(self, module: nn.Module) -> None:
        """The original's ``init_weights``: linear and embedding weights N(0, 0.02), zero biases, LayerNorms 1/0; the
        ViT class and position embeddings trunc-normal(0.02) (timm)."""
        super()._init_weights(module)
        if isinstance(module, VisionTransformer):
            init.trunc_normal_(module.class_embedding, std=0.02)
            init.trunc_normal_(module.position_embedding, std=0.02)


class VlpViltModel(VlpViltPreTrainedModel):
    """The ViLT encoder: text and image embeddings, modality rows, the ViT blocks, the final norm and the pooler.

    ``transformer`` is a :class:`~hf_vlp.modules.vision.VisionTransformer` (patch projection with bias, class token,
    the position grid, the blocks and ``norm_post``); its blocks run over the concatenated sequence.
    """

    def __init__(self, config: VlpViltConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.text_embeddings = BertStyleEmbeddings(
            config.vocab_size,
            config.hidden_size,
            config.max_position_embeddings,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.text_layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            pad_token_id=config.pad_token_id,
        )
        self.modality_embeddings = nn.Embedding(config.modality_type_vocab_size, config.hidden_size)
        self.transformer = build_vision_tower(
            config, options=block_options(config), position_interpolation="bilinear_align_corners"
        )
        self.image_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pooler = FirstTokenPooler(config.hidden_size) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_embeddings.word_embeddings = value

    def embed_image(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        max_image_length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskedPatchEmbedding:
        """The image tokens before the modality row (the original's ``visual_embed``): class token then patch tokens
        with their interpolated positions, the token mask and each patch's grid cell.

        ``pixel_mask`` ``[B, H, W]`` (1 = real pixel) defaults to the pixels that are not exactly 0 in every channel.
        In training at most ``max_image_length`` patches are kept per image (default ``config.max_image_length``; -1:
        all), a random subset for an image with more (seed torch or pass ``generator`` to reproduce it); in eval mode
        every patch is kept. Kept patches stay in row-major order: the original also permutes them at random, which
        changes nothing but the order of the image tokens (attention does not see token order once positions are
        added), so the outputs here do not depend on the random state unless patches are dropped.
        """
        check_pixel_values(pixel_values)
        if not self.training:
            check_finite_pixels(pixel_values)
        if pixel_mask is None:
            pixel_mask = pixel_mask_from_padding(pixel_values)
        if max_image_length is None:
            max_image_length = self.config.max_image_length
        limit = max_image_length if self.training and max_image_length > 0 else None
        embedded = self.transformer.embed_masked(pixel_values, pixel_mask, limit, generator=generator, shuffle=False)
        embedded.tokens = self.image_dropout(embedded.tokens)
        embedded.patch_index = embedded.patch_index.masked_fill(~embedded.token_mask[:, 1:, None].bool(), -1)
        return embedded

    def image_tokens(
        self,
        pixel_values: torch.Tensor | None,
        pixel_mask: torch.Tensor | None = None,
        image_embeds: MaskedPatchEmbedding | None = None,
    ) -> MaskedPatchEmbedding:
        """``image_embeds`` when given, else :meth:`embed_image` of ``pixel_values``; an error without either."""
        if image_embeds is not None:
            return image_embeds
        if pixel_values is None:
            raise ValueError("ViLT encodes text with an image: pass pixel_values (and pixel_mask) or image_embeds")
        return self.embed_image(pixel_values, pixel_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        image_embeds: MaskedPatchEmbedding | None = None,
        image_token_type_idx: int = 1,
        image_modality_embedding: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpViltModelOutput | tuple:
        """Encode text ``input_ids`` ``[B, L]`` with the images ``pixel_values`` ``[B, 3, H, W]`` (zero-padded to one
        canvas, ``pixel_mask`` marking the real pixels) or with precomputed ``image_embeds`` (:meth:`embed_image`, e.g.
        one gallery image embedded once and scored against many texts).

        ``image_token_type_idx`` picks the modality row added to the image tokens (1; NLVR2's second image 2), or
        ``image_modality_embedding`` ``[D]`` gives that vector directly. ``token_type_ids`` select BERT token types
        (the original always uses type 0, the default).
        """
        image_embeds = self.image_tokens(pixel_values, pixel_mask, image_embeds)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if image_embeds.tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"one image per text: got {image_embeds.tokens.shape[0]} images and {input_ids.shape[0]} texts"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if image_modality_embedding is None:
            if not 0 < image_token_type_idx < self.modality_embeddings.num_embeddings:
                raise ValueError(
                    f"image_token_type_idx must index an image row of the modality embeddings (1.."
                    f"{self.modality_embeddings.num_embeddings - 1}), got {image_token_type_idx}"
                )
            image_modality_embedding = self.modality_embeddings.weight[image_token_type_idx]
        text_tokens = self.text_embeddings(input_ids, token_type_ids) + self.modality_embeddings.weight[0]
        image_tokens = image_embeds.tokens + image_modality_embedding
        tokens = torch.cat([text_tokens, image_tokens.to(text_tokens.dtype)], dim=1)
        keep = torch.cat([attention_mask.to(image_embeds.token_mask.dtype), image_embeds.token_mask], dim=1)
        encoded = self.transformer.encoder(
            tokens,
            attention_mask=padding_mask(keep, tokens.dtype),
            output_hidden_states=kwargs["output_hidden_states"],
            output_attentions=kwargs["output_attentions"],
        )
        last = self.transformer.norm_post(encoded.last_hidden_state)
        return VlpViltModelOutput(
            last_hidden_state=last,
            pooler_output=self.pooler(last) if self.pooler is not None else None,
            image_attention_mask=image_embeds.token_mask,
            patch_index=image_embeds.patch_index,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


def text_states(outputs: VlpViltModelOutput, input_ids: torch.Tensor) -> torch.Tensor:
    """The final states at the text positions ``[B, L_text, D]`` (the original's ``text_feats``)."""
    return outputs.last_hidden_state[:, : input_ids.shape[1]]


class VlpViltForMaskedLM(MaskedLMOutputEmbeddingsMixin, VlpViltPreTrainedModel):
    """Masked language modelling over the image: the MLM head on the text states; loss = cross-entropy over
    ``labels != -100``."""

    def __init__(self, config: VlpViltConfig) -> None:
        super().__init__(config)
        self.vilt = VlpViltModel(config)
        self.mlm_head = untied_mlm_head(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> MaskedLMOutput | tuple:
        """MLM logits ``[B, L, vocab]`` for (masked) ``input_ids`` grounded on the images; the loss with ``labels``."""
        outputs = self.vilt(
            input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask, return_dict=True, **kwargs
        )
        logits = self.mlm_head(text_states(outputs, input_ids))
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class VlpViltForQuestionAnswering(SoftScoreAnswersMixin, VlpViltPreTrainedModel):
    """VQA as multi-label classification over ``config.num_labels`` answers (VQAv2: 3,129; ``config.id2label`` names
    them) from the pooled ``[CLS]``. ``labels`` are soft scores ``[B, num_labels]`` (VQAv2: 0.3 / 0.6 / 0.9 / 1.0 for
    1 / 2 / 3 / 4+ annotators); loss = binary cross-entropy averaged over the batch and the answers, times
    ``num_labels`` (a sum over answers, as the original)."""

    model_card_pipeline_tag = "visual-question-answering"

    def __init__(self, config: VlpViltConfig) -> None:
        super().__init__(config)
        self.vilt = VlpViltModel(config)
        self.classifier = pooled_classifier(config, config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> SequenceClassifierOutput | tuple:
        outputs = self.vilt(
            input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask, return_dict=True, **kwargs
        )
        logits = self.classifier(outputs.pooler_output)
        return SequenceClassifierOutput(
            loss=self.answer_loss(logits, labels), logits=logits, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


@dataclass
class VlpViltVisualReasoningOutput(ModelOutput):
    """NLVR2 ``logits`` ``[B, 2]`` (1 = the statement is true of the image pair), ``loss`` with ``labels``; the pooled
    ``[CLS]`` of each pass (``pooler_output_1``, ``pooler_output_2``)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    pooler_output_1: torch.Tensor | None = None
    pooler_output_2: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VlpViltForVisualReasoning(SecondImageRowMixin, VlpViltPreTrainedModel):
    """NLVR2 by ViLT's "pair" method: the text is encoded twice, with the first image (modality row 1) and with the
    second (its own modality row, ``second_image_modality_embedding``), and the classifier reads both pooled
    ``[CLS]`` vectors side by side.

    The second image's row is a parameter of this head, not a third row of the shared table, so that a pre-trained
    checkpoint (two rows) loads unchanged; when it is missing from a checkpoint it starts as a copy of the image row,
    as the original initialises its third row. ``hidden_states``/``attentions`` are those of the first pass.
    """

    model_card_task = "visual-reasoning"

    def __init__(self, config: VlpViltConfig) -> None:
        super().__init__(config)
        self.vilt = VlpViltModel(config)
        self.second_image_modality_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.classifier = pooled_classifier(config, 2 * config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        pixel_values_2: torch.Tensor | None = None,
        pixel_mask_2: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpViltVisualReasoningOutput | tuple:
        """``pixel_values``/``pixel_values_2`` are the two images of each pair; ``labels`` ``[B]`` (1 = true)."""
        if pixel_values is None or pixel_values_2 is None:
            raise ValueError("NLVR2 needs both images of each pair: pass pixel_values and pixel_values_2")
        first = self.vilt(
            input_ids, attention_mask, token_type_ids, pixel_values, pixel_mask, return_dict=True, **kwargs
        )
        second = self.vilt(
            input_ids, attention_mask, token_type_ids, pixel_values_2, pixel_mask_2,
            image_modality_embedding=self.second_image_modality_embedding, return_dict=True,
        )
        logits = self.classifier(torch.cat([first.pooler_output, second.pooler_output], dim=-1))
        loss = nn.functional.cross_entropy(logits, labels.to(logits.device).long()) if labels is not None else None
        return VlpViltVisualReasoningOutput(
            loss=loss,
            logits=logits,
            pooler_output_1=first.pooler_output,
            pooler_output_2=second.pooler_output,
            hidden_states=first.hidden_states,
            attentions=first.attentions,
        )


__all__ = [
    "VlpViltForMaskedLM",
    "VlpViltForQuestionAnswering",
    "VlpViltForVisualReasoning",
    "VlpViltModel",
    "VlpViltModelOutput",
    "VlpViltPreTrainedModel",
    "VlpViltVisualReasoningOutput",
    "block_options",
    "pixel_mask_from_padding",
    "text_states",
]
