"""Pre-norm transformer pieces shared by the ViT towers (CLIP, ALBEF, BLIP, CoCa) and CLIP/CoCa's text towers.

``PreNormBlock`` is ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; with ``cross_attention=True`` the attention
reads keys/values from a second sequence normalised by ``norm_kv`` (CoCa's decoder cross-attention blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention


class Mlp(nn.Module):
    """Two-layer feed-forward network ``fc2(act(fc1(x)))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(hidden_states))))


@dataclass(frozen=True)
class BlockOptions:
    """Per-architecture details of a pre-norm block (defaults: OpenAI CLIP)."""

    hidden_size: int
    num_heads: int
    intermediate_size: int
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    qkv_bias: str = "all"
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0


class PreNormBlock(GradientCheckpointingLayer):
    """Residual pre-norm transformer block (self- or cross-attention, then MLP)."""

    def __init__(
        self,
        options: BlockOptions,
        *,
        config: Any = None,
        cross_attention: bool = False,
        kv_size: int | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.LayerNorm(options.hidden_size, eps=options.layer_norm_eps)
        if cross_attention:
            self.norm_kv = nn.LayerNorm(kv_size or options.hidden_size, eps=options.layer_norm_eps)
        self.attn = Attention(
            options.hidden_size,
            options.num_heads,
            config=config,
            cross_attention=cross_attention,
            kv_size=kv_size if cross_attention else None,
            qkv_bias=options.qkv_bias,
            dropout=options.attention_dropout,
            layer_idx=layer_idx,
        )
        self.norm2 = nn.LayerNorm(options.hidden_size, eps=options.layer_norm_eps)
        self.mlp = Mlp(options.hidden_size, options.intermediate_size, options.activation, options.hidden_dropout)
        self.dropout = nn.Dropout(options.hidden_dropout) if options.hidden_dropout else nn.Identity()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Any = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kv = self.norm_kv(encoder_hidden_states) if self.cross_attention else None
        attended, weights = self.attn(
            self.norm1(hidden_states),
            kv,
            attention_mask=attention_mask,
            is_causal=is_causal,
            cache=cache,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.dropout(attended)
        hidden_states = hidden_states + self.mlp(self.norm2(hidden_states))
        return hidden_states, weights


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class PreNormEncoder(nn.Module):
    """A stack of :class:`PreNormBlock` self-attention layers."""

    def __init__(self, options: BlockOptions, num_layers: int, *, config: Any = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PreNormBlock(options, config=config, layer_idx=i) for i in range(num_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Any = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        all_states = [hidden_states] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for layer in self.layers:
            hidden_states, weights = layer(
                hidden_states,
                attention_mask=attention_mask,
                is_causal=is_causal,
                cache=cache,
                output_attentions=output_attentions,
            )
            if all_states is not None:
                all_states.append(hidden_states)
            if all_attentions is not None:
                all_attentions.append(weights)
        return EncoderOutput(
            hidden_states,
            tuple(all_states) if all_states is not None else None,
            tuple(all_attentions) if all_attentions is not None else None,
        )
