"""Text towers.

``CausalTextTransformer`` is CLIP's (and CoCa's unimodal) text encoder: token + learned absolute position
embeddings, pre-norm blocks under a causal mask, a final LayerNorm, and pooling at the end-of-text token.

``BertStyleEmbeddings``, ``PostNormBlock``, ``BertStyleEncoder`` and ``BertStyleTextTransformer`` are the BERT-style text/fusion encoder of ALBEF
(xbert) and BLIP (med): post-norm layers, the upper ones cross-attending to image tokens.

BLIP's multimodal mixture of encoder-decoder, built from these blocks, lives with BLIP
(``hf_vlp.models.blip.modeling_blip_text``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling

from .attention import Attention, padding_mask
from .transformer import BlockOptions, Mlp, PreNormEncoder


def end_of_text_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the first ``eos_token_id`` in every row; a row without one is an error.

    Picking the token by id (not by ``argmax``) keeps pooling correct whatever the pad id and vocabulary order.
    """
    is_eos = input_ids == eos_token_id
    found = is_eos.any(dim=-1)
    if input_ids.device.type != "cpu":  # no host sync on accelerators: the check runs asynchronously there
        torch._assert_async(found.all(), f"input_ids contain a row without the end-of-text token {eos_token_id}")
    elif not bool(found.all()):
        rows = torch.nonzero(~found).flatten().tolist()
        raise ValueError(
            f"input_ids rows {rows} contain no end-of-text token (id {eos_token_id}). Tokenize the text with the "
            "model's processor, which appends it, or set text_config.eos_token_id to your tokenizer's end-of-text id."
        )
    return is_eos.int().argmax(dim=-1)


class CausalTextTransformer(nn.Module):
    """Token/position embeddings, causal pre-norm encoder, final norm and end-of-text pooling.

    Padding needs no mask: pads follow the end-of-text token, which the causal mask hides them from. The
    ``attention_mask`` argument is therefore accepted and ignored (right padding, as CLIP's tokenizer does).
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        num_layers: int,
        vocab_size: int,
        context_length: int,
        eos_token_id: int,
        config: Any = None,
    ) -> None:
        super().__init__()
        width = options.hidden_size
        self.context_length = context_length
        self.eos_token_id = eos_token_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(context_length, width).normal_(std=0.01))
        self.encoder = PreNormEncoder(options, num_layers, config=config)
        self.norm_final = nn.LayerNorm(width, eps=options.layer_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.context_length:
            raise ValueError(
                f"input_ids length {length} exceeds the context length {self.context_length}; tokenize with the "
                "model's processor, which truncates (keeping the end-of-text token) and warns."
            )
        eos_positions = end_of_text_positions(input_ids, self.eos_token_id)
        tokens = self.token_embedding(input_ids) + self.position_embedding[:length]
        encoded = self.encoder(
            tokens, is_causal=True, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        last = self.norm_final(encoded.last_hidden_state)
        pooled = last[torch.arange(last.shape[0], device=last.device), eos_positions]
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


# --------------------------------------------------------------------------------------------------- BERT-style

TEXT_ENCODER_MODES = ("text", "fusion", "full")


class BertStyleEmbeddings(nn.Module):
    """BERT's input embeddings: word + learned absolute position (+ token type) -> LayerNorm -> dropout.

    ``type_vocab_size=0`` leaves token types out (BLIP's ``med.py``); otherwise type ids default to zeros, so row 0 of
    ``token_type_embeddings`` is added everywhere, as BERT does when the caller passes none (ALBEF).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        max_position_embeddings: int,
        *,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.0,
        pad_token_id: int | None = 0,
    ) -> None:
        super().__init__()
        self.max_position_embeddings = max_position_embeddings
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size) if type_vocab_size else None
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """``[B, L]`` ids -> ``[B, L, D]``; ``position_offset`` skips positions already held in a key/value cache."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if position_offset + length > self.max_position_embeddings:
            raise ValueError(
                f"input_ids reach position {position_offset + length}, beyond max_position_embeddings "
                f"{self.max_position_embeddings}; truncate the text (the processor's max_length) to fit."
            )
        positions = torch.arange(position_offset, position_offset + length, device=input_ids.device)
        embeddings = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                embeddings = embeddings + self.token_type_embeddings.weight[0]
            else:
                embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were given but this model has no token-type embeddings")
        embeddings = embeddings + self.position_embeddings(positions)
        return self.dropout(self.norm(embeddings))


class PostNormBlock(GradientCheckpointingLayer):
    """BERT's post-norm layer, optionally with a cross-attention sub-layer between self-attention and the MLP.

    ``x = norm1(x + drop(attn(x)))``; with cross-attention ``x = norm_cross(x + drop(cross_attn(x, memory)))``;
    then ``x = norm2(x + drop(mlp(x)))``. ``kv_size`` is the width of the memory (e.g. the vision tower's).

    The self-attention sub-layer comes in two independent copies for BLIP's shared encoder/decoder layers:
    ``self_attention`` builds the bidirectional ``attn``/``norm1`` (encoder role), ``causal_self_attention`` a second
    ``causal_attn``/``norm_causal`` (decoder role); a call picks one with ``use_causal_self_attention``. Cross-attention
    and MLP are the same modules for both.
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        config: Any = None,
        cross_attention: bool = False,
        kv_size: int | None = None,
        layer_idx: int | None = None,
        self_attention: bool = True,
        causal_self_attention: bool = False,
    ) -> None:
        super().__init__()
        if not (self_attention or causal_self_attention):
            raise ValueError("a PostNormBlock needs a self-attention: set self_attention and/or causal_self_attention")
        width = options.hidden_size
        self.has_cross_attention = cross_attention
        self.has_self_attention = self_attention
        self.has_causal_self_attention = causal_self_attention

        def self_attention_module() -> Attention:
            return Attention(
                width,
                options.num_heads,
                config=config,
                qkv_bias=options.qkv_bias,
                dropout=options.attention_dropout,
                layer_idx=layer_idx,
            )

        if self_attention:
            self.attn = self_attention_module()
            self.norm1 = nn.LayerNorm(width, eps=options.layer_norm_eps)
        if causal_self_attention:
            self.causal_attn = self_attention_module()
            self.norm_causal = nn.LayerNorm(width, eps=options.layer_norm_eps)
        if cross_attention:
            self.cross_attn = Attention(
                width,
                options.num_heads,
                config=config,
                cross_attention=True,
                kv_size=kv_size or width,
                qkv_bias=options.qkv_bias,
                dropout=options.attention_dropout,
            )
            self.norm_cross = nn.LayerNorm(width, eps=options.layer_norm_eps)
        self.mlp = Mlp(width, options.intermediate_size, options.activation, options.hidden_dropout)
        self.norm2 = nn.LayerNorm(width, eps=options.layer_norm_eps)
        self.dropout = nn.Dropout(options.hidden_dropout) if options.hidden_dropout else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Any = None,
        output_attentions: bool = False,
        use_causal_self_attention: bool = False,
        use_cross_attention: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Masks are additive (see :func:`hf_vlp.modules.attention.padding_mask`).

        ``use_causal_self_attention`` runs the decoder-role ``causal_attn`` (always causal) instead of ``attn``;
        ``use_cross_attention=False`` skips the cross-attention sub-layer of a layer that has one (BLIP's unimodal
        ``mode='text'``). Returns ``(hidden_states, self-attention probabilities, cross-attention probabilities)``;
        probabilities are ``None`` unless ``output_attentions`` is set.
        """
        if use_causal_self_attention:
            if not self.has_causal_self_attention:
                raise ValueError(
                    "this layer has no causal (decoder) self-attention; build it with causal_self_attention=True"
                )
            attention, norm, is_causal = self.causal_attn, self.norm_causal, True
        else:
            if not self.has_self_attention:
                raise ValueError(
                    "this layer has only the causal (decoder) self-attention; run it with use_causal_self_attention=True "
                    "or build it with self_attention=True"
                )
            attention, norm = self.attn, self.norm1
        attended, self_weights = attention(
            hidden_states,
            attention_mask=attention_mask,
            is_causal=is_causal,
            cache=cache,
            output_attentions=output_attentions,
        )
        hidden_states = norm(hidden_states + self.dropout(attended))
        cross_weights = None
        if self.has_cross_attention and use_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("this layer cross-attends: pass encoder_hidden_states (e.g. the image tokens)")
            attended, cross_weights = self.cross_attn(
                hidden_states,
                encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                output_attentions=output_attentions,
            )
            hidden_states = self.norm_cross(hidden_states + self.dropout(attended))
        hidden_states = self.norm2(hidden_states + self.mlp(hidden_states))
        return hidden_states, self_weights, cross_weights


@dataclass
class BertStyleEncoderOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor | None, ...] | None = None


class BertStyleEncoder(nn.Module):
    """A stack of :class:`PostNormBlock` whose layers ``>= fusion_layer`` cross-attend to a memory.

    ``mode`` picks the layers that run, as ALBEF's xbert does: ``"text"`` the unimodal layers ``[0, fusion_layer)``,
    ``"fusion"`` the cross-attending layers ``[fusion_layer, num_layers)`` (input: the text mode's output),
    ``"full"`` all of them (xbert's ``multi_modal``). ``"text"`` then ``"fusion"`` equals one ``"full"`` pass.
    ``fusion_layer=0`` gives every layer a cross-attention (BLIP's ``med.py``); ``fusion_layer=num_layers`` none.
    ``self_attention``/``causal_self_attention`` say which self-attentions every layer holds (see
    :class:`PostNormBlock`).
    """

    def __init__(
        self,
        options: BlockOptions,
        num_layers: int,
        *,
        fusion_layer: int,
        kv_size: int | None = None,
        config: Any = None,
        self_attention: bool = True,
        causal_self_attention: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= fusion_layer <= num_layers:
            raise ValueError(f"fusion_layer must be between 0 and num_layers ({num_layers}), got {fusion_layer}")
        self.fusion_layer = fusion_layer
        self.layers = nn.ModuleList(
            PostNormBlock(
                options,
                config=config,
                cross_attention=i >= fusion_layer,
                kv_size=kv_size,
                layer_idx=i,
                self_attention=self_attention,
                causal_self_attention=causal_self_attention,
            )
            for i in range(num_layers)
        )

    def layer_range(self, mode: str) -> range:
        """Indices of the layers that ``mode`` runs."""
        if mode == "text":
            return range(0, self.fusion_layer)
        if mode == "fusion":
            return range(self.fusion_layer, len(self.layers))
        if mode == "full":
            return range(0, len(self.layers))
        raise ValueError(f"mode must be one of {TEXT_ENCODER_MODES}, got {mode!r}")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        mode: str = "full",
        is_causal: bool = False,
        cache: Any = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        use_causal_self_attention: bool = False,
        use_cross_attention: bool = True,
    ) -> BertStyleEncoderOutput:
        """Run the layers of ``mode``; masks are additive (see :func:`hf_vlp.modules.attention.padding_mask`).

        ``use_causal_self_attention`` and ``use_cross_attention`` are passed to every layer (see
        :meth:`PostNormBlock.forward`).
        """
        indices = self.layer_range(mode)
        cross_attends = use_cross_attention and any(self.layers[i].has_cross_attention for i in indices)
        if encoder_hidden_states is None and cross_attends:
            raise ValueError(f"mode {mode!r} runs cross-attention layers: pass encoder_hidden_states")
        all_states = [hidden_states] if output_hidden_states else None
        self_attentions = [] if output_attentions else None
        cross_attentions = [] if output_attentions else None
        for i in indices:
            hidden_states, self_weights, cross_weights = self.layers[i](
                hidden_states,
                attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                is_causal=is_causal,
                cache=cache,
                output_attentions=output_attentions,
                use_causal_self_attention=use_causal_self_attention,
                use_cross_attention=use_cross_attention,
            )
            if all_states is not None:
                all_states.append(hidden_states)
            if self_attentions is not None:
                self_attentions.append(self_weights)
                cross_attentions.append(cross_weights)
        return BertStyleEncoderOutput(
            hidden_states,
            tuple(all_states) if all_states is not None else None,
            tuple(self_attentions) if self_attentions is not None else None,
            tuple(cross_attentions) if cross_attentions is not None else None,
        )


class BertStyleTextTransformer(nn.Module):
    """:class:`BertStyleEmbeddings` + :class:`BertStyleEncoder`, taking 1/0 keep-masks (xbert's ``BertModel``).

    ``mode="text"`` and ``"full"`` embed ``input_ids``; ``mode="fusion"`` takes ``inputs_embeds``, the text mode's
    output states, and skips the embeddings (ALBEF's ``encoder_embeds``). ``encoder_attention_mask=None`` lets every
    text token see every memory token.
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        num_layers: int,
        fusion_layer: int,
        vocab_size: int,
        max_position_embeddings: int,
        type_vocab_size: int = 2,
        pad_token_id: int | None = 0,
        kv_size: int | None = None,
        config: Any = None,
    ) -> None:
        super().__init__()
        self.embeddings = BertStyleEmbeddings(
            vocab_size,
            options.hidden_size,
            max_position_embeddings,
            type_vocab_size=type_vocab_size,
            layer_norm_eps=options.layer_norm_eps,
            dropout=options.hidden_dropout,
            pad_token_id=pad_token_id,
        )
        self.encoder = BertStyleEncoder(options, num_layers, fusion_layer=fusion_layer, kv_size=kv_size, config=config)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        mode: str = "full",
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        if mode == "fusion":
            if inputs_embeds is None:
                raise ValueError("mode 'fusion' takes inputs_embeds: the text mode's last_hidden_state")
            hidden_states = inputs_embeds
        else:
            if input_ids is None:
                raise ValueError(f"mode {mode!r} needs input_ids")
            hidden_states = self.embeddings(input_ids, token_type_ids)
        dtype = hidden_states.dtype
        self_mask = padding_mask(attention_mask, dtype) if attention_mask is not None else None
        cross_mask = padding_mask(encoder_attention_mask, dtype) if encoder_attention_mask is not None else None
        encoded = self.encoder(
            hidden_states,
            self_mask,
            encoder_hidden_states,
            cross_mask,
            mode=mode,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=encoded.last_hidden_state,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            cross_attentions=encoded.cross_attentions,
        )
