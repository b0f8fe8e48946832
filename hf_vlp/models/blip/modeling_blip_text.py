"""BLIP's "multimodal mixture of encoder-decoder" (MED) text stack.

One stack of cross-attending post-norm layers serves as unimodal text encoder, image-grounded encoder and image-grounded
causal decoder. Every parameter is shared between the roles except the self-attention: a layer holds a bidirectional
self-attention (encoder role), a causal one (decoder role), or both, next to one cross-attention and one MLP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from ...modules.attention import padding_mask
from ...modules.text import BertStyleEmbeddings, BertStyleEncoder
from ...modules.transformer import BlockOptions


MED_MODES = ("text", "multimodal", "decoder")
MED_ROLES = ("encoder", "decoder")


class MedTextTransformer(nn.Module):
    """BLIP's multimodal mixture of encoder-decoder: :class:`BertStyleEmbeddings` without token types and a stack of
    :class:`PostNormBlock` that all cross-attend (``med.py``), shared by three roles picked per call by ``mode``:

    - ``"text"``: unimodal encoder; bidirectional self-attention and MLP, cross-attention skipped (``[CLS]`` -> ITC).
    - ``"multimodal"``: image-grounded encoder; bidirectional self-attention, cross-attention to
      ``encoder_hidden_states``, MLP (``[ENC]`` -> ITM, VQA question, NLVR).
    - ``"decoder"``: image-grounded decoder; causal self-attention, cross-attention, MLP (``[DEC]`` -> LM), with an
      optional key/value ``cache`` of the self-attention (incremental decoding).

    ``roles`` says which self-attentions the layers hold: ``"encoder"`` (the bidirectional ``attn``, modes ``text`` and
    ``multimodal``) and/or ``"decoder"`` (the causal ``causal_attn``, mode ``decoder``). Embeddings, cross-attention and
    MLP are single modules used by every role, so the original's encoder/decoder tie is one tensor here. The input ids
    are used as given: putting ``[ENC]``/``[DEC]`` at position 0 is the caller's (the model's) job.
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        num_layers: int,
        vocab_size: int,
        max_position_embeddings: int,
        pad_token_id: int | None = 0,
        kv_size: int | None = None,
        roles: tuple[str, ...] | list[str] = ("encoder",),
        config: Any = None,
    ) -> None:
        super().__init__()
        roles = tuple(roles)
        if not roles or len(set(roles)) != len(roles) or not set(roles) <= set(MED_ROLES):
            raise ValueError(f"roles must be a non-empty selection of {MED_ROLES} without repeats, got {roles}")
        self.roles = roles
        self.embeddings = BertStyleEmbeddings(
            vocab_size,
            options.hidden_size,
            max_position_embeddings,
            type_vocab_size=0,
            layer_norm_eps=options.layer_norm_eps,
            dropout=options.hidden_dropout,
            pad_token_id=pad_token_id,
        )
        self.encoder = BertStyleEncoder(
            options,
            num_layers,
            fusion_layer=0,
            kv_size=kv_size,
            config=config,
            self_attention="encoder" in roles,
            causal_self_attention="decoder" in roles,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        mode: str = "multimodal",
        cache: Cache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """Run the layers in ``mode`` (see the class docstring) on ``[B, L]`` ids with 1/0 keep-masks.

        ``encoder_attention_mask=None`` lets every text token see every memory token. In ``"decoder"`` mode a ``cache``
        (a transformers ``Cache``, e.g. ``DynamicCache``; created when ``use_cache`` and none is given) holds the
        self-attention keys/values of earlier positions: ``input_ids`` are then the new tokens only, positions continue
        after the cached ones and ``attention_mask`` covers cached + new positions (as ``generate()`` passes it). The
        cache is returned in ``.cache``.
        """
        if mode not in MED_MODES:
            raise ValueError(f"mode must be one of {MED_MODES}, got {mode!r}")
        decoding = mode == "decoder"
        role = "decoder" if decoding else "encoder"
        if role not in self.roles:
            raise ValueError(
                f"mode {mode!r} runs the {role} self-attention, but this text transformer was built with roles "
                f"{self.roles} only (e.g. a captioning model has no bidirectional encoder); use a model that holds it."
            )
        if not decoding and (cache is not None or use_cache):
            raise ValueError(f"only mode 'decoder' takes a key/value cache; mode {mode!r} runs bidirectionally")
        if decoding and use_cache and cache is None:
            cache = DynamicCache()
        past_length = cache.get_seq_length() if cache is not None else 0
        hidden_states = self.embeddings(input_ids, position_offset=past_length)
        if attention_mask is not None and attention_mask.shape[-1] != past_length + input_ids.shape[1]:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds {past_length} and "
                f"input_ids add {input_ids.shape[1]}; pass the mask of all positions (cached + new)."
            )
        dtype = hidden_states.dtype
        self_mask = padding_mask(attention_mask, dtype)
        cross_mask = padding_mask(encoder_attention_mask, dtype)
        encoded = self.encoder(
            hidden_states,
            self_mask,
            encoder_hidden_states,
            cross_mask,
            mode="full",
            is_causal=decoding,
            cache=cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            use_causal_self_attention=decoding,
            use_cross_attention=mode != "text",
        )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=encoded.last_hidden_state,
            cache=cache,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
            cross_attentions=encoded.cross_attentions if mode != "text" else None,
        )
