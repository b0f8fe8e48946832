"""CoCa's multimodal text decoder (open_clip's ``MultimodalTransformer``): text token states attend causally to each
other, then cross-attend to image tokens, layer after layer.

Each :class:`MultimodalDecoderLayer` is two :class:`~hf_vlp.modules.transformer.PreNormBlock`: a causal self-attention
block (``self_attention_block``) then a cross-attention block whose keys/values are the image tokens normalised by
their own LayerNorm (``cross_attention_block``); each block has its MLP. No positions are added here: the input states
already carry them. The stack ends with ``norm_final``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions

from .attention import AttentionMemory
from .transformer import BlockOptions, LayerOutputs, PreNormBlock


class MultimodalDecoderLayer(nn.Module):
    """Causal self-attention block, then a cross-attention block over ``memory`` (``memory_size`` wide); gradient
    checkpointing applies to each block."""

    def __init__(self, options: BlockOptions, memory_size: int, *, config: Any = None, layer_idx: int | None = None):
        super().__init__()
        self.self_attention_block = PreNormBlock(options, config=config, layer_idx=layer_idx)
        self.cross_attention_block = PreNormBlock(options, config=config, cross_attention=True, kv_size=memory_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory: torch.Tensor | AttentionMemory,
        cache: Any = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        hidden_states, self_weights = self.self_attention_block(
            hidden_states, is_causal=True, cache=cache, output_attentions=output_attentions
        )
        hidden_states, cross_weights = self.cross_attention_block(
            hidden_states, memory, output_attentions=output_attentions
        )
        return hidden_states, self_weights, cross_weights


class MultimodalDecoder(nn.Module):
    """``num_layers`` :class:`MultimodalDecoderLayer` and a final LayerNorm.

    ``first_cache_layer`` is the key/value-cache index of the first layer's self-attention (CoCa caches its unimodal
    text layers first, in the same cache).
    """

    def __init__(
        self,
        options: BlockOptions,
        num_layers: int,
        memory_size: int,
        *,
        config: Any = None,
        first_cache_layer: int = 0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MultimodalDecoderLayer(options, memory_size, config=config, layer_idx=first_cache_layer + index)
            for index in range(num_layers)
        )
        self.norm_final = nn.LayerNorm(options.hidden_size, eps=options.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        memory: torch.Tensor | AttentionMemory,
        cache: Any = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithCrossAttentions:
        """Decode ``hidden_states`` ``[B, L, D]`` over ``memory`` ``[B, M, memory_size]`` (or an
        :class:`AttentionMemory` whose rows each serve consecutive query rows, e.g. beams); with a ``cache`` holding
        earlier positions, ``hidden_states`` are the new positions only. ``last_hidden_state`` is after
        ``norm_final``; ``hidden_states`` are each layer's input and the last layer's output (before the norm)."""
        if memory is None:
            raise ValueError("the multimodal decoder cross-attends to image tokens: pass memory")
        collected = LayerOutputs(hidden_states, output_hidden_states, output_attentions, attention_kinds=2)
        for layer in self.layers:
            hidden_states, self_weights, cross_weights = layer(
                hidden_states, memory, cache=cache, output_attentions=output_attentions
            )
            collected.add(hidden_states, self_weights, cross_weights)
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=self.norm_final(hidden_states),
            hidden_states=collected.hidden_states(),
            attentions=collected.attention_weights(0),
            cross_attentions=collected.attention_weights(1),
        )


__all__ = ["MultimodalDecoder", "MultimodalDecoderLayer"]
