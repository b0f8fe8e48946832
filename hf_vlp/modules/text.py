"""Text towers.

``CausalTextTransformer`` is CLIP's (and CoCa's unimodal) text encoder: token + learned absolute position
embeddings, pre-norm blocks under a causal mask, a final LayerNorm, and pooling at the end-of-text token (CLIP) or at a
class token appended after the text (CoCa).

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

from .attention import padding_mask
from .transformer import BlockOptions, LayerOutputs, Mlp, PreNormEncoder, attention_from_options


def end_of_text_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the first ``eos_token_id`` in every row; a row without one is an error.

    Picking the token by id (not by ``argmax``) keeps pooling correct whatever the pad id and vocabulary order.
    The check of a CPU tensor reads the data on the host, so it runs in eager mode only: under ``torch.compile``,
    ``torch.export`` or ``torch.jit.trace`` it would be data-dependent control flow (unexportable, or baked into the
    trace); a row without the token then pools position 0. The model's processor always appends the token.
    """
    is_eos = input_ids == eos_token_id
    found = is_eos.any(dim=-1)
    if input_ids.device.type != "cpu":  # no host sync on accelerators: the check runs asynchronously there
        torch._assert_async(found.all(), f"input_ids contain a row without the end-of-text token {eos_token_id}")
    elif not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and not bool(found.all()):
        rows = torch.nonzero(~found).flatten().tolist()
        raise ValueError(
            f"input_ids rows {rows} contain no end-of-text token (id {eos_token_id}). Tokenize the text with the "
            "model's processor, which appends it, or set text_config.eos_token_id to your tokenizer's end-of-text id."
        )
    return is_eos.int().argmax(dim=-1)


CLS_MASK_ALIGNMENTS = ("shifted", "aligned")
# which query rows the pad mask of a class-token tower applies to: open_clip 3.x masks every row, <= 2.32 the class
# token's only (the two give the same pooled output and the same token states at real positions)
CLS_MASK_ROWS = ("all", "cls")


def shifted_key_visibility(keep: torch.Tensor, num_keys: int) -> torch.Tensor:
    """open_clip's pad visibility of ``num_keys`` keys from ``keep`` ``[B, L]`` (the real tokens): key ``j`` is visible
    iff ``j == 0`` or token ``j - 1`` is real (its validity vector ``[True, keep]``, one position late)."""
    keep = keep.bool()
    return torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)[:, :num_keys]


def cls_row_mask(keep: torch.Tensor, alignment: str, dtype: torch.dtype, rows: str = "cls") -> torch.Tensor:
    """Additive mask ``[B, 1, L + 1, L + 1]`` hiding padded keys from the appended class token's query row
    (``rows="cls"``) or from every query row (``rows="all"``, open_clip 3.x).

    ``keep`` ``[B, L]`` marks the real tokens. ``"aligned"``: the class token sees the real tokens and itself.
    ``"shifted"``: open_clip's ``build_cls_mask`` as the released CoCa models run it, whose validity vector is
    ``[True, keep]`` over the ``L + 1`` keys (one position late: the class token sees the first pad slot and, when the
    text is padded, not itself).
    """
    if rows not in CLS_MASK_ROWS:
        raise ValueError(f"rows must be one of {CLS_MASK_ROWS}, got {rows!r}")
    batch, length = keep.shape
    keep = keep.bool()
    if alignment == "shifted":
        visible = shifted_key_visibility(keep, length + 1)
    else:
        visible = torch.cat([keep, keep.new_ones(batch, 1)], dim=1)
    mask = torch.zeros(batch, 1, length + 1, length + 1, dtype=dtype, device=keep.device)
    if rows == "all":
        return mask.masked_fill_(~visible[:, None, None, :], torch.finfo(dtype).min)
    mask[:, 0, -1].masked_fill_(~visible, torch.finfo(dtype).min)
    return mask


class CausalTextTransformer(nn.Module):
    """Token/position embeddings, causal pre-norm encoder, final norm and pooling (CLIP's and CoCa's text tower).

    CLIP (the default): pooling at the end-of-text token. Padding needs no mask there: pads follow the end-of-text
    token, which the causal mask hides them from, so ``attention_mask`` is accepted and ignored (right padding, as
    CLIP's tokenizer does) unless ``use_padding_mask`` hides padded keys from every query.

    CoCa (``embed_cls=True``): a learned ``cls_embedding`` is appended after the tokens (with its own position, so
    there are ``context_length + 1`` positions) and the causal mask is extended over it; its query row (every
    query row with ``cls_mask_rows="all"``, open_clip 3.x) also hides the pads (``attention_mask``, else
    ``input_ids != pad_token_id``; ``cls_mask_alignment`` as :func:`cls_row_mask`). The pooled output is that last token after ``norm_final``; ``last_hidden_state`` holds the text tokens' states without
    ``norm_final`` (open_clip's ``tokens``, the multimodal decoder's input); ``hidden_states`` include the class
    token. :meth:`token_states` runs the text tokens alone, incrementally with a key/value cache (caption decoding).
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        num_layers: int,
        vocab_size: int,
        context_length: int,
        eos_token_id: int | None,
        config: Any = None,
        use_padding_mask: bool = False,
        embed_cls: bool = False,
        pad_token_id: int | None = 0,
        cls_mask_alignment: str = "shifted",
        cls_mask_rows: str = "cls",
    ) -> None:
        super().__init__()
        if cls_mask_rows not in CLS_MASK_ROWS:
            raise ValueError(f"cls_mask_rows must be one of {CLS_MASK_ROWS}, got {cls_mask_rows!r}")
        if cls_mask_alignment not in CLS_MASK_ALIGNMENTS:
            raise ValueError(f"cls_mask_alignment must be one of {CLS_MASK_ALIGNMENTS}, got {cls_mask_alignment!r}")
        if eos_token_id is None and not embed_cls:
            raise ValueError(
                "end-of-text pooling needs eos_token_id (or embed_cls=True to pool an appended class token)"
            )
        width = options.hidden_size
        self.context_length = context_length
        self.eos_token_id = eos_token_id
        self.use_padding_mask = use_padding_mask
        self.embed_cls = embed_cls
        self.pad_token_id = pad_token_id
        self.cls_mask_alignment = cls_mask_alignment
        self.cls_mask_rows = cls_mask_rows
        self.token_embedding = nn.Embedding(vocab_size, width)
        num_positions = context_length + 1 if embed_cls else context_length
        self.position_embedding = nn.Parameter(torch.empty(num_positions, width).normal_(std=0.01))
        if embed_cls:
            self.cls_embedding = nn.Parameter(torch.empty(width).normal_(std=0.01))
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
        if self.embed_cls:
            tokens, mask = self._embed_with_cls(input_ids, attention_mask)
        else:
            eos_positions = end_of_text_positions(input_ids, self.eos_token_id)
            tokens = self.token_embedding(input_ids) + self.position_embedding[:length]
            mask = None
            if self.use_padding_mask and attention_mask is not None:
                mask = padding_mask(attention_mask, tokens.dtype)
        outputs = dict(output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        encoded = self.encoder(tokens, attention_mask=mask, is_causal=True, **outputs)
        if self.embed_cls:
            last = encoded.last_hidden_state[:, :-1]
            pooled = self.norm_final(encoded.last_hidden_state[:, -1])
        else:
            last = self.norm_final(encoded.last_hidden_state)
            pooled = last[torch.arange(last.shape[0], device=last.device), eos_positions]
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    def token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        """The text tokens' states without the class token and without ``norm_final`` (a class-token tower's
        ``last_hidden_state``; the class token comes last, so no text token sees it), computed incrementally: with a
        key/value ``cache`` holding ``P`` positions, ``input_ids`` are the new tokens at positions ``P..``.

        ``attention_mask`` ``[B, P + L]`` marks the real tokens of the whole sequence (cached and new); pads are hidden
        from every query as :meth:`forward` hides them with ``cls_mask_rows="all"``. ``None``: every token is real (a
        decoded sequence holds no padding). ``pooler_output`` is ``None``.
        """
        if not self.embed_cls:
            raise ValueError("token_states is for a class-token tower (embed_cls=True); use forward")
        past = cache.get_seq_length(self.encoder.layers[0].attn.layer_idx) if cache is not None else 0
        length = input_ids.shape[1]
        if past + length > self.context_length:
            raise ValueError(
                f"the text reaches position {past + length}, beyond the context length {self.context_length}; "
                "generate at most that many tokens (max_length)"
            )
        tokens = self.token_embedding(input_ids) + self.position_embedding[past : past + length]
        mask = None
        if attention_mask is not None:
            if attention_mask.shape[1] != past + length:
                raise ValueError(
                    f"attention_mask covers {attention_mask.shape[1]} positions, expected cached + new = {past + length}"
                )
            if self.cls_mask_alignment == "shifted":
                visible = shifted_key_visibility(attention_mask, past + length)
            else:
                visible = attention_mask.bool()
            mask = padding_mask(visible, tokens.dtype)
        encoded = self.encoder(
            tokens,
            attention_mask=mask,
            is_causal=True,
            cache=cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=encoded.last_hidden_state,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    def _embed_with_cls(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with the class token appended and positions added, and the additive mask of its row."""
        batch, length = input_ids.shape
        tokens = self.token_embedding(input_ids)
        cls = self.cls_embedding.to(tokens.dtype).expand(batch, 1, -1)
        tokens = torch.cat([tokens, cls], dim=1) + self.position_embedding[: length + 1]
        if attention_mask is None:
            if self.pad_token_id is None:
                raise ValueError("pass attention_mask, or set pad_token_id so the class token can skip the pads")
            attention_mask = input_ids != self.pad_token_id
        mask = cls_row_mask(attention_mask, self.cls_mask_alignment, tokens.dtype, self.cls_mask_rows)
        if self.use_padding_mask:
            keep = torch.cat([attention_mask.bool(), attention_mask.new_ones(batch, 1, dtype=torch.bool)], dim=1)
            mask = mask + padding_mask(keep, tokens.dtype)
        return tokens, mask


# --------------------------------------------------------------------------------------------------- BERT-style

TEXT_ENCODER_MODES = ("text", "fusion", "full")


class BertStyleEmbeddings(nn.Module):
    """BERT's input embeddings: word + learned absolute position (+ token type) -> LayerNorm -> dropout.

    ``type_vocab_size=0`` leaves token types out (BLIP's ``med.py``); otherwise type ids default to zeros, so row 0 of
    ``token_type_embeddings`` is added everywhere, as BERT does when the caller passes none (ALBEF).
    ``absolute_positions=False`` adds no position embedding and has no table (VLMo, whose attention carries relative
    positions instead); the length is then not limited here.
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
        absolute_positions: bool = True,
    ) -> None:
        super().__init__()
        self.max_position_embeddings = max_position_embeddings
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size) if absolute_positions else None
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
        if self.position_embeddings is not None and position_offset + length > self.max_position_embeddings:
            raise ValueError(
                f"input_ids reach position {position_offset + length}, beyond max_position_embeddings "
                f"{self.max_position_embeddings}; truncate the text (the processor's max_length) to fit."
            )
        embeddings = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                embeddings = embeddings + self.token_type_embeddings.weight[0]
            else:
                embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids were given but this model has no token-type embeddings")
        if self.position_embeddings is not None:
            positions = torch.arange(position_offset, position_offset + length, device=input_ids.device)
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

        if self_attention:
            self.attn = attention_from_options(options, config=config, layer_idx=layer_idx)
            self.norm1 = nn.LayerNorm(width, eps=options.layer_norm_eps)
        if causal_self_attention:
            self.causal_attn = attention_from_options(options, config=config, layer_idx=layer_idx)
            self.norm_causal = nn.LayerNorm(width, eps=options.layer_norm_eps)
        if cross_attention:
            self.cross_attn = attention_from_options(
                options, config=config, cross_attention=True, kv_size=kv_size or width
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
        collected = LayerOutputs(hidden_states, output_hidden_states, output_attentions, attention_kinds=2)
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
            collected.add(hidden_states, self_weights, cross_weights)
        return BertStyleEncoderOutput(
            hidden_states, collected.hidden_states(), collected.attention_weights(0), collected.attention_weights(1)
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
        self_mask = padding_mask(attention_mask, dtype)
        cross_mask = padding_mask(encoder_attention_mask, dtype)
        flags = {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        encoded = self.encoder(hidden_states, self_mask, encoder_hidden_states, cross_mask, mode=mode, **flags)
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=encoded.last_hidden_state,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            cross_attentions=encoded.cross_attentions,
        )
