r"""VLMo (Bao et al., 2022): one multiway transformer that is an image encoder, a text encoder and a fusion encoder.

    text  -> BERT word (+ type 0) embeddings -> LayerNorm -> + modality row 0 ----------------+
    image -> patch projection, class token (+ positions: base-plus) -> + modality row 1 ------+
                                                                                              v
    multiway blocks: shared norm1 + self-attention (+ the layer's relative-position bias), then the feed-forward
    expert of each token: V-FFN (image), L-FFN (text), VL-FFN (every token of a fused sequence, top blocks only)
                                                                                              v
                                                                                          final norm

Three modes run the same weights: image-only and text-only (the dual encoder: each modality's expert in every block,
the ``[CLS]`` projected for contrastive retrieval) and fusion (text first, then the image; the lower blocks route
each token to its modality's expert, the top blocks send all of them through the VL-FFN; the pooled text ``[CLS]``
feeds ITM, VQA and NLVR2).

This file holds the base model (the dual encoder, with ``forward`` giving CLIP-style similarity logits so the
zero-shot pipeline works, and the fusion pass for the heads) and the MLM, VQA and NLVR2 heads; pre-training and
retrieval are in ``modeling_vlmo_pretraining.py``. Every head keeps the model under ``vlmo.*``.
"""


from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput, SequenceClassifierOutput

from ...modules.attention import Attention, padding_mask
from ...modules.heads import FirstTokenPooler
from ...modules.multiway import MultiwayBlock, MultiwayEncoder
from ...modules.relative_position import MultimodalRelativePositionBias
from ...modules.text import BertStyleEmbeddings
from ...modules.transformer import BlockOptions, EncoderOutput, run_layers
from ...modules.vision import ClassPatchEmbedding, check_finite_pixels
from ...objectives.mlm import masked_lm_loss
from ..modeling_utils import OutputKwargs, VlpPreTrainedModel, model_forward
from ..single_stream_heads import SecondImageRowMixin, SoftScoreAnswersMixin, pooled_classifier, untied_mlm_head
from ..towers import DualEncoderOutput, ImageTextClassifierOutput, MaskedLMOutputEmbeddingsMixin, with_pooled_features
from .configuration_vlmo import VlpVlmoConfig

TEXT, IMAGE = 0, 1  # rows of the modality embeddings


def block_options(config: VlpVlmoConfig) -> BlockOptions:
    """VLMo's blocks: exact GELU, LayerNorm eps 1e-6, learned query and value biases and none on the keys, no
    dropout (the original trains with stochastic depth only)."""
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias="qv",
    )


def check_text(input_ids: torch.Tensor, config: VlpVlmoConfig) -> None:
    """``[B, L]`` ids with ``L <= max_text_length`` (the processor pads and truncates to it)."""
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] > config.max_text_length:
        raise ValueError(
            f"input_ids hold {input_ids.shape[1]} tokens, more than max_text_length {config.max_text_length}; "
            "tokenise with the model's processor, which truncates to it"
        )


@dataclass
class MultiwayOutput(BaseModelOutputWithPooling):
    """One pass of the multiway transformer: ``last_hidden_state`` after the final norm, ``pooler_output`` the pooled
    text ``[CLS]`` of a fused pass (``tanh(dense(x[:, 0]))``; ``None`` for unimodal passes), ``hidden_states`` the
    embeddings and every block's output (before the final norm), ``attentions``; ``vl_input`` the state entering
    block ``vl_ffn_start_layer`` when asked for (the pre-training re-runs the top blocks from it through the VL-FFN)."""

    vl_input: torch.Tensor | None = None


@dataclass
class VlpVlmoOutput(DualEncoderOutput):
    """Dual-encoder outputs: ``image_embeds``/``text_embeds`` the L2-normalised projected ``[CLS]`` features,
    ``logits_per_image`` their cosine similarities times ``exp(logit_scale)`` (``logits_per_text`` the transpose);
    ``vision_model_output``/``text_model_output`` the image-only and text-only passes."""


def joined_outputs(first: EncoderOutput, second: EncoderOutput) -> tuple[Any, Any]:
    """Hidden states and attentions of two consecutive runs of blocks as one pass's."""
    states = first.hidden_states + second.hidden_states[1:] if first.hidden_states is not None else None
    attentions = first.attentions + second.attentions if first.attentions is not None else None
    return states, attentions


class VlpVlmoPreTrainedModel(VlpPreTrainedModel):
    config: VlpVlmoConfig
    base_model_prefix = "vlmo"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["MultiwayBlock"]
    accepts_loss_kwargs = False
    model_card_template = "vlmo"

    def model_card_fields(self) -> dict[str, Any]:
        config = self.config
        grid = config.image_size // config.patch_size
        return {
            "description": (
                f"{config.num_hidden_layers} multiway blocks (VL-FFN from block {config.vl_ffn_start_layer}), width "
                f"{config.hidden_size}, {config.num_attention_heads} heads, patch {config.patch_size}, grid "
                f"{grid}x{grid}, {config.position_embedding_type} positions, {config.max_text_length} text tokens"
            ),
            # only a VQA model's card names its answer vocabulary (the other heads carry a placeholder label count)
            "vqa_answers": config.num_labels if self.model_card_pipeline_tag == "visual-question-answering" else None,
            "text_positions": config.max_text_length,
        }

    def _init_weights(self, module: nn.Module) -> None:
        """The original's initialisation: linear, embedding and LayerNorm weights as transformers' (normal 0.02,
        zero biases, 1/0), the class token and absolute positions trunc-normal(0.02), the relative-position table and
        the query/value biases zero, layer scale at ``layer_scale_init_value``, temperatures ln(1/0.07)."""
        super()._init_weights(module)
        config = self.config
        if isinstance(module, ClassPatchEmbedding):
            init.trunc_normal_(module.class_embedding, std=0.02)
            if module.position_embedding is not None:
                init.trunc_normal_(module.position_embedding, std=0.02)
        elif isinstance(module, MultimodalRelativePositionBias):
            init.zeros_(module.table)
        elif isinstance(module, Attention) and module.qkv_bias_mode == "qv":
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, MultiwayBlock) and module.layer_scale1 is not None:
            init.constant_(module.layer_scale1, config.layer_scale_init_value)
            init.constant_(module.layer_scale2, config.layer_scale_init_value)
        if isinstance(module, VlpVlmoModel):
            init.constant_(module.logit_scale, config.logit_scale_init_value)


class VlpVlmoModel(VlpVlmoPreTrainedModel):
    """The multiway transformer with its embeddings, the dual encoder's projections and temperature, and the fusion
    pooler.

    ``encode_image``/``encode_text``/``encode_fused`` run the three modes; ``forward`` is the dual encoder (similarity
    logits of every image against every text, as CLIP), ``get_image_features``/``get_text_features`` its projected
    features and ``get_multimodal_features`` the fused, pooled ``[CLS]`` of pairs (image b, text b).
    """

    def __init__(self, config: VlpVlmoConfig) -> None:
        super().__init__(config)
        width = config.hidden_size
        relative = config.uses_relative_positions
        self.text_embeddings = BertStyleEmbeddings(
            config.vocab_size,
            width,
            config.max_text_length,
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.text_layer_norm_eps,
            dropout=config.embedding_dropout_prob,
            pad_token_id=config.pad_token_id,
            absolute_positions=not relative,
        )
        self.image_embeddings = ClassPatchEmbedding(
            width, config.image_size, config.patch_size, config.num_channels, absolute_positions=not relative
        )
        self.modality_embeddings = nn.Embedding(config.modality_type_vocab_size, width)
        self.relative_position_bias = (
            MultimodalRelativePositionBias(
                config.patch_grid, config.relative_position_text_length, config.num_attention_heads,
                config.num_hidden_layers,
            )
            if relative
            else None
        )
        self.encoder = MultiwayEncoder(
            block_options(config),
            config.num_hidden_layers,
            vl_expert_start=config.vl_ffn_start_layer,
            drop_path_rate=config.drop_path_rate,
            layer_scale_init=config.layer_scale_init_value,
            config=config,
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.pooler = FirstTokenPooler(width)
        self.image_projection = nn.Linear(width, width, bias=False)
        self.text_projection = nn.Linear(width, width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_embeddings.word_embeddings = value

    # ------------------------------------------------------------------------------------------------ embeddings

    def embed_text(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """BERT's embeddings of ``[B, L]`` ids plus the text modality row: ``[B, L, D]``."""
        check_text(input_ids, self.config)
        return self.text_embeddings(input_ids, token_type_ids) + self.modality_embeddings.weight[TEXT]

    def embed_image(
        self, pixel_values: torch.Tensor, modality_embedding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Class token and patch tokens plus the image modality row (or ``modality_embedding`` ``[D]``, NLVR2's
        second image): ``[B, 1 + N, D]`` and the patch grid."""
        if not self.training:
            check_finite_pixels(pixel_values)
        tokens, grid = self.image_embeddings(pixel_values)
        if modality_embedding is None:
            modality_embedding = self.modality_embeddings.weight[IMAGE]
        return tokens + modality_embedding.to(tokens.dtype), grid

    def position_biases(
        self, kind: str, text_length: int | None = None, grid: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, ...] | None:
        """Each layer's relative-position bias for an ``"image"``, ``"text"`` or ``"fused"`` sequence (``None`` for
        the absolute-position variant)."""
        if self.relative_position_bias is None:
            return None
        return self.relative_position_bias(kind, text_length, grid)

    # ------------------------------------------------------------------------------------------------ the modes

    def run_blocks(
        self,
        hidden_states: torch.Tensor,
        modality: str,
        biases: tuple[torch.Tensor, ...] | None,
        attention_mask: torch.Tensor | None = None,
        split_position: int | None = None,
        layers: slice = slice(None),
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Blocks ``layers`` over ``hidden_states`` with one routing (see :class:`~hf_vlp.modules.multiway.MultiwayBlock`)
        and the padding ``attention_mask`` ``[B, N]`` (1 = attend)."""
        mask = padding_mask(attention_mask, hidden_states.dtype) if attention_mask is not None else None
        return run_layers(
            self.encoder.layers[layers], hidden_states, biases[layers] if biases is not None else None,
            output_hidden_states, output_attentions, modality=modality, attention_mask=mask,
            split_position=split_position,
        )

    def _encode_unimodal(
        self,
        tokens: torch.Tensor,
        modality: str,
        biases: tuple[torch.Tensor, ...] | None,
        attention_mask: torch.Tensor | None,
        keep_vl_input: bool,
        output_hidden_states: bool,
        output_attentions: bool,
    ) -> MultiwayOutput:
        start = self.config.vl_ffn_start_layer
        flags = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        lower = self.run_blocks(tokens, modality, biases, attention_mask, layers=slice(0, start), **flags)
        upper = self.run_blocks(
            lower.last_hidden_state, modality, biases, attention_mask, layers=slice(start, None), **flags
        )
        states, attentions = joined_outputs(lower, upper)
        return MultiwayOutput(
            last_hidden_state=self.norm(upper.last_hidden_state),
            hidden_states=states,
            attentions=attentions,
            vl_input=lower.last_hidden_state if keep_vl_input else None,
        )

    def encode_image(
        self,
        pixel_values: torch.Tensor | None = None,
        keep_vl_input: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        image_tokens: torch.Tensor | None = None,
    ) -> MultiwayOutput:
        """Image-only mode: ``[class token, patches]`` through every block's V-FFN, then the final norm; from
        ``pixel_values`` or from images embedded before (``image_tokens``, :meth:`embed_image`)."""
        if image_tokens is None:
            if pixel_values is None:
                raise ValueError("the image encoder needs pixel_values (or embedded image_tokens)")
            tokens, grid = self.embed_image(pixel_values)
        else:
            tokens, grid = image_tokens, self.square_grid(image_tokens)
        biases = self.position_biases("image", grid=grid)
        return self._encode_unimodal(
            tokens, "image", biases, None, keep_vl_input, output_hidden_states, output_attentions
        )

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        keep_vl_input: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MultiwayOutput:
        """Text-only mode: ``[CLS] text [SEP] (pad)`` through every block's L-FFN (padding masked as keys), then the
        final norm."""
        tokens = self.embed_text(input_ids, token_type_ids)
        biases = self.position_biases("text", text_length=input_ids.shape[1])
        return self._encode_unimodal(
            tokens, "text", biases, attention_mask, keep_vl_input, output_hidden_states, output_attentions
        )

    def encode_vl_expert(
        self,
        vl_input: torch.Tensor,
        modality: str,
        attention_mask: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """A unimodal pass's top blocks re-run through the VL-FFN from ``vl_input`` (pre-training's second
        contrastive path), then the final norm: ``[B, N, D]``. ``grid``: the images' patch grid (default the
        config's)."""
        if modality == "image":
            biases = self.position_biases("image", grid=grid)
        else:
            biases = self.position_biases("text", text_length=vl_input.shape[1])
        start = self.config.vl_ffn_start_layer
        upper = self.run_blocks(vl_input, "vl", biases, attention_mask, layers=slice(start, None))
        return self.norm(upper.last_hidden_state)

    def square_grid(self, image_tokens: torch.Tensor) -> tuple[int, int]:
        """The patch grid of embedded square images ``[B, 1 + N, D]`` (the config's when ``N`` matches it)."""
        patches = image_tokens.shape[1] - 1
        if patches == self.config.patch_grid[0] * self.config.patch_grid[1]:
            return self.config.patch_grid
        side = round(patches**0.5)
        if side * side != patches:
            raise ValueError(f"{patches} image tokens are not a square patch grid; pass pixel_values instead")
        return side, side

    def encode_fused(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_modality_embedding: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> MultiwayOutput:
        """Fusion mode over pairs (image b, text b): ``[text ; class token, patches]``; in blocks below
        ``vl_ffn_start_layer`` the text tokens take the L-FFN and the image tokens the V-FFN, above it every token takes
        the VL-FFN; final norm; ``pooler_output`` = pooled text ``[CLS]``. ``image_modality_embedding`` ``[D]``
        replaces the image modality row (NLVR2's second image); ``image_tokens`` are images embedded before
        (:meth:`embed_image`, e.g. a gallery image re-ranked against many texts) instead of ``pixel_values``."""
        if image_tokens is None:
            if pixel_values is None:
                raise ValueError("the fusion encoder needs pixel_values (or embedded image_tokens) with input_ids")
            image_tokens, grid = self.embed_image(pixel_values, image_modality_embedding)
        else:
            grid = self.square_grid(image_tokens)
        if image_tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(f"fusion takes pairs: got {image_tokens.shape[0]} images and {input_ids.shape[0]} texts")
        text = self.embed_text(input_ids, token_type_ids)
        image = image_tokens
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_length = input_ids.shape[1]
        tokens = torch.cat([text, image.to(text.dtype)], dim=1)
        keep = torch.cat([attention_mask, attention_mask.new_ones(image.shape[:2])], dim=1)
        encoded = self.run_blocks(
            tokens, "vl", self.position_biases("fused", text_length, grid), keep, split_position=text_length,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions,
        )
        last = self.norm(encoded.last_hidden_state)
        return MultiwayOutput(
            last_hidden_state=last,
            pooler_output=self.pooler(last),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    # ------------------------------------------------------------------------------------------------ public API

    @model_forward
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Unpack[OutputKwargs]) -> BaseModelOutputWithPooling | tuple:
        """The image-only pass with ``pooler_output`` = ``image_projection([CLS])`` ``[B, D]``, not normalised
        (transformers 5's convention); L2-normalised it is the original's ``cls_feats`` of ``infer_image``."""
        outputs = self.encode_image(pixel_values, **kwargs)
        return with_pooled_features(outputs, self.image_projection(outputs.last_hidden_state[:, 0]))

    @model_forward
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """The text-only pass with ``pooler_output`` = ``text_projection([CLS])`` ``[B, D]``, not normalised."""
        outputs = self.encode_text(input_ids, attention_mask, token_type_ids, **kwargs)
        return with_pooled_features(outputs, self.text_projection(outputs.last_hidden_state[:, 0]))

    @model_forward
    def get_multimodal_features(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        """The fused pass over pairs (image b, text b); ``pooler_output`` is the pooled text ``[CLS]`` the ITM, VQA
        and NLVR2 heads read."""
        return self.encode_fused(input_ids, attention_mask, pixel_values, token_type_ids, **kwargs)

    def contrastive_embeds(self, image_states: torch.Tensor, text_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised projected ``[CLS]`` features of image-only and text-only states."""
        image_embeds = nn.functional.normalize(self.image_projection(image_states[:, 0]), dim=-1)
        text_embeds = nn.functional.normalize(self.text_projection(text_states[:, 0]), dim=-1)
        return image_embeds, text_embeds

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpVlmoOutput | tuple:
        """The dual encoder: similarity logits of every image against every text (normalised projected ``[CLS]``
        features times ``exp(logit_scale)``, unclamped as the original). Fused features: :meth:`encode_fused` or
        :meth:`get_multimodal_features`."""
        if input_ids is None or pixel_values is None:
            raise ValueError(
                "VlpVlmoModel.forward scores images against texts: pass input_ids and pixel_values (one modality: "
                "get_text_features / get_image_features)"
            )
        vision_outputs = self.encode_image(pixel_values, **kwargs)
        text_outputs = self.encode_text(input_ids, attention_mask, token_type_ids, **kwargs)
        image_embeds, text_embeds = self.contrastive_embeds(
            vision_outputs.last_hidden_state, text_outputs.last_hidden_state
        )
        logits_per_image = self.logit_scale.exp() * image_embeds @ text_embeds.t()
        return VlpVlmoOutput(
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            image_embeds=image_embeds,
            text_embeds=text_embeds,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )


class VlpVlmoForMaskedLM(MaskedLMOutputEmbeddingsMixin, VlpVlmoPreTrainedModel):
    """Masked language modelling, grounded on the image (fusion mode) when ``pixel_values`` are given, on the text alone
    (text-only mode: the second pre-training stage, which trains the L-FFN) otherwise. Loss = cross-entropy over
    ``labels != -100`` (unweighted; the pre-training head weights it by ``mlm_weight``)."""

    def __init__(self, config: VlpVlmoConfig) -> None:
        super().__init__(config)
        self.vlmo = VlpVlmoModel(config)
        self.mlm_head = untied_mlm_head(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> MaskedLMOutput | tuple:
        """MLM logits ``[B, L, vocab]`` of (masked) ``input_ids``; the loss with ``labels``."""
        if pixel_values is None:
            outputs = self.vlmo.encode_text(input_ids, attention_mask, token_type_ids, **kwargs)
        else:
            outputs = self.vlmo.encode_fused(input_ids, attention_mask, pixel_values, token_type_ids, **kwargs)
        logits = self.mlm_head(outputs.last_hidden_state[:, : input_ids.shape[1]])
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class VlpVlmoForQuestionAnswering(SoftScoreAnswersMixin, VlpVlmoPreTrainedModel):
    """VQA as multi-label classification over ``config.num_labels`` answers (VQAv2: 3,129; ``config.id2label`` names
    them) from the fused, pooled ``[CLS]``. ``labels`` are soft scores ``[B, num_labels]``; loss = binary
    cross-entropy averaged over the batch and the answers, times ``num_labels``, as the original. The original
    fine-tunes at 480 px: images of another size than ``config.image_size`` get the relative-position table's patch
    rows (or the absolute positions) interpolated to their grid."""

    model_card_pipeline_tag = "visual-question-answering"

    def __init__(self, config: VlpVlmoConfig) -> None:
        super().__init__(config)
        self.vlmo = VlpVlmoModel(config)
        self.classifier = pooled_classifier(config, config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> SequenceClassifierOutput | tuple:
        outputs = self.vlmo.encode_fused(input_ids, attention_mask, pixel_values, token_type_ids, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        return SequenceClassifierOutput(
            loss=self.answer_loss(logits, labels), logits=logits, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class VlpVlmoForVisualReasoning(SecondImageRowMixin, VlpVlmoPreTrainedModel):
    """NLVR2: the text is fused with the first image (modality row 1) and with the second (its own modality row,
    ``second_image_modality_embedding``), and the classifier reads both pooled ``[CLS]`` vectors side by side.

    The original grows its modality table to three rows; here the second image's row is a parameter of this head, so a
    pre-trained checkpoint (two rows) loads unchanged, and it starts as a copy of the image row when a checkpoint
    lacks it, as the original initialises its third row. ``labels`` ``[B]`` (1 = the statement is true)."""

    model_card_task = "visual-reasoning"

    def __init__(self, config: VlpVlmoConfig) -> None:
        super().__init__(config)
        self.vlmo = VlpVlmoModel(config)
        self.second_image_modality_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.classifier = pooled_classifier(config, 2 * config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_2: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> ImageTextClassifierOutput | tuple:
        """``pixel_values``/``pixel_values_2`` are the two images of each pair. ``last_hidden_state`` (with
        ``output_hidden_states``) holds both fused passes' final states side by side ``[B, N, 2D]``."""
        if pixel_values is None or pixel_values_2 is None:
            raise ValueError("NLVR2 needs both images of each pair: pass pixel_values and pixel_values_2")
        first = self.vlmo.encode_fused(input_ids, attention_mask, pixel_values, token_type_ids, **kwargs)
        second = self.vlmo.encode_fused(
            input_ids, attention_mask, pixel_values_2, token_type_ids,
            image_modality_embedding=self.second_image_modality_embedding, **kwargs,
        )
        logits = self.classifier(torch.cat([first.pooler_output, second.pooler_output], dim=-1))
        loss = nn.functional.cross_entropy(logits, labels.view(-1).to(logits.device)) if labels is not None else None
        text_length = input_ids.shape[1]
        return ImageTextClassifierOutput.from_states(
            loss,
            logits,
            torch.cat([first.last_hidden_state[:, :text_length], second.last_hidden_state[:, :text_length]], dim=-1),
            torch.cat([first.last_hidden_state[:, text_length:], second.last_hidden_state[:, text_length:]], dim=-1),
            kwargs["output_hidden_states"],
            vision_outputs=first,
            text_outputs=second,
        )


__all__ = [
    "MultiwayOutput",
    "VlpVlmoForMaskedLM",
    "VlpVlmoForQuestionAnswering",
    "VlpVlmoForVisualReasoning",
    "VlpVlmoModel",
    "VlpVlmoOutput",
    "VlpVlmoPreTrainedModel",
]
