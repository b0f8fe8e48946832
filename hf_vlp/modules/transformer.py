"""Pre-norm transformer pieces shared by the ViT towers (CLIP, ALBEF, BLIP, CoCa, ViLT) and CLIP/CoCa's text towers.

``PreNormBlock`` is ``x + drop_path(ls1 * attn(norm1(x)))`` then ``x + drop_path(ls2 * mlp(norm2(x)))``: stochastic
depth (``drop_path_rate``) and layer scale (``layer_scale_init``, BEiT/VLMo/CaiT) are constructor options that add
nothing when off, and an additive relative-position bias can be passed to every call. With ``cross_attention=True`` the
attention reads keys/values from a second sequence normalised by ``norm_kv`` (CoCa's decoder cross-attention blocks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention, AttentionMemory

# A relative-position bias for an encoder: one additive tensor shared by every layer, or one per layer.
PositionBias = torch.Tensor | Sequence[torch.Tensor] | None


class Mlp(nn.Module):
    """Two-layer feed-forward network ``fc2(act(fc1(x)))``; ``dropout`` after ``fc2`` and ``activation_dropout``
    after the activation (timm's ``Mlp``, as ViLT trains it)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
    ):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[activation]
        self.activation_dropout = nn.Dropout(activation_dropout) if activation_dropout else nn.Identity()
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.act(self.fc1(hidden_states)))))


class DropPath(nn.Module):
    """Stochastic depth (timm's ``drop_path``): in training, drop a residual branch for whole samples with
    probability ``rate`` and scale the kept ones by ``1 / (1 - rate)``; the identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must lie in [0, 1), got {rate}")
        self.rate = rate

    def extra_repr(self) -> str:
        return f"rate={self.rate}"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return hidden_states
        keep = 1.0 - self.rate
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        return hidden_states * hidden_states.new_empty(shape).bernoulli_(keep).div_(keep)


def drop_path_rates(rate: float, num_layers: int) -> list[float]:
    """timm's linear stochastic-depth schedule: 0 for the first block up to ``rate`` for the last."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must lie in [0, 1), got {rate}")
    if num_layers < 2:
        return [0.0] * num_layers
    return [rate * index / (num_layers - 1) for index in range(num_layers)]


def drop_path_or_identity(rate: float) -> nn.Module:
    """A :class:`DropPath` for a non-zero rate, else ``nn.Identity`` (no module, no random draw)."""
    return DropPath(rate) if rate else nn.Identity()


def layer_scale_parameter(width: int, init: float | None) -> nn.Parameter | None:
    """A per-channel layer-scale vector filled with ``init``, or ``None`` when layer scale is off."""
    return nn.Parameter(torch.full((width,), float(init))) if init is not None else None


def scaled(branch: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``scale * branch`` where layer scale is on; the branch untouched (bitwise) where it is off."""
    return branch if scale is None else branch * scale


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
    activation_dropout: float = 0.0


def attention_from_options(
    options: BlockOptions,
    *,
    config: Any = None,
    cross_attention: bool = False,
    kv_size: int | None = None,
    layer_idx: int | None = None,
) -> Attention:
    """The :class:`Attention` of a block: width, heads, projection bias and dropout from ``options``."""
    return Attention(
        options.hidden_size,
        options.num_heads,
        config=config,
        cross_attention=cross_attention,
        kv_size=kv_size if cross_attention else None,
        qkv_bias=options.qkv_bias,
        dropout=options.attention_dropout,
        layer_idx=layer_idx,
    )


class PreNormBlock(GradientCheckpointingLayer):
    """Residual pre-norm transformer block (self- or cross-attention, then MLP).

    ``drop_path_rate`` puts a :class:`DropPath` (no parameters) on both residual branches, after their dropout;
    ``layer_scale_init`` adds the per-channel vectors ``layer_scale1`` (attention branch) and ``layer_scale2`` (MLP
    branch) filled with that value. Both off (the defaults) give today's block, parameter names and numbers unchanged.
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        config: Any = None,
        cross_attention: bool = False,
        kv_size: int | None = None,
        layer_idx: int | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
    ) -> None:
        super().__init__()
        self.cross_attention = cross_attention
        self.norm1 = nn.LayerNorm(options.hidden_size, eps=options.layer_norm_eps)
        if cross_attention:
            self.norm_kv = nn.LayerNorm(kv_size or options.hidden_size, eps=options.layer_norm_eps)
        self.attn = attention_from_options(
            options, config=config, cross_attention=cross_attention, kv_size=kv_size, layer_idx=layer_idx
        )
        self.norm2 = nn.LayerNorm(options.hidden_size, eps=options.layer_norm_eps)
        self.mlp = Mlp(
            options.hidden_size, options.intermediate_size, options.activation, options.hidden_dropout,
            options.activation_dropout,
        )
        self.dropout = nn.Dropout(options.hidden_dropout) if options.hidden_dropout else nn.Identity()
        self.drop_path = drop_path_or_identity(drop_path_rate)
        self.layer_scale1 = layer_scale_parameter(options.hidden_size, layer_scale_init)
        self.layer_scale2 = layer_scale_parameter(options.hidden_size, layer_scale_init)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Any = None,
        output_attentions: bool = False,
        position_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``position_bias`` is added to the attention scores (broadcastable to ``[B, heads, Lq, Lk]``)."""
        kv = None
        if self.cross_attention:
            if isinstance(encoder_hidden_states, AttentionMemory):  # normalised once, like its keys/values
                kv = encoder_hidden_states.transformed(self.norm_kv)
            else:
                kv = self.norm_kv(encoder_hidden_states)
        attended, weights = self.attn(
            self.norm1(hidden_states),
            kv,
            attention_mask=attention_mask,
            is_causal=is_causal,
            position_bias=position_bias,
            cache=cache,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.drop_path(scaled(self.dropout(attended), self.layer_scale1))
        hidden_states = hidden_states + self.drop_path(scaled(self.mlp(self.norm2(hidden_states)), self.layer_scale2))
        return hidden_states, weights


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class LayerOutputs:
    """Collects the per-layer hidden states and attention probabilities an encoder returns on request.

    ``attention_kinds`` attention maps come with every layer (e.g. 2: self- and cross-attention).
    """

    def __init__(
        self, first_states: torch.Tensor, output_hidden_states: bool, output_attentions: bool, attention_kinds: int = 1
    ) -> None:
        self.states = [first_states] if output_hidden_states else None
        self.attentions = [[] for _ in range(attention_kinds)] if output_attentions else None

    def add(self, hidden_states: torch.Tensor, *weights: torch.Tensor | None) -> None:
        if self.states is not None:
            self.states.append(hidden_states)
        if self.attentions is not None:
            for collected, layer_weights in zip(self.attentions, weights):
                collected.append(layer_weights)

    def hidden_states(self) -> tuple[torch.Tensor, ...] | None:
        return tuple(self.states) if self.states is not None else None

    def attention_weights(self, kind: int = 0) -> tuple[torch.Tensor | None, ...] | None:
        return tuple(self.attentions[kind]) if self.attentions is not None else None


def check_layer_biases(position_bias: PositionBias, num_layers: int) -> None:
    """A per-layer sequence of biases must have one per layer."""
    if position_bias is not None and not isinstance(position_bias, torch.Tensor):
        if len(position_bias) != num_layers:
            raise ValueError(f"got {len(position_bias)} per-layer position biases for {num_layers} layers")


def bias_of_layer(position_bias: PositionBias, index: int) -> torch.Tensor | None:
    """Layer ``index``'s additive bias: the shared tensor, or the ``index``-th of a per-layer sequence."""
    if position_bias is None or isinstance(position_bias, torch.Tensor):
        return position_bias
    return position_bias[index]


def run_layers(
    layers: nn.ModuleList,
    hidden_states: torch.Tensor,
    position_bias: PositionBias,
    output_hidden_states: bool,
    output_attentions: bool,
    **layer_kwargs: Any,
) -> EncoderOutput:
    """Run a stack of blocks returning ``(hidden_states, attention weights)``, each with its layer's position bias and
    ``layer_kwargs``, collecting the outputs asked for."""
    check_layer_biases(position_bias, len(layers))
    collected = LayerOutputs(hidden_states, output_hidden_states, output_attentions)
    for index, layer in enumerate(layers):
        hidden_states, weights = layer(
            hidden_states,
            position_bias=bias_of_layer(position_bias, index),
            output_attentions=output_attentions,
            **layer_kwargs,
        )
        collected.add(hidden_states, weights)
    return EncoderOutput(hidden_states, collected.hidden_states(), collected.attention_weights())


class PreNormEncoder(nn.Module):
    """A stack of :class:`PreNormBlock` self-attention layers.

    ``drop_path_rate`` is the last layer's stochastic depth, linear from 0 over the layers (:func:`drop_path_rates`);
    ``layer_scale_init`` turns layer scale on in every layer.
    """

    def __init__(
        self,
        options: BlockOptions,
        num_layers: int,
        *,
        config: Any = None,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
    ) -> None:
        super().__init__()
        rates = drop_path_rates(drop_path_rate, num_layers)
        self.layers = nn.ModuleList(
            PreNormBlock(
                options, config=config, layer_idx=i, drop_path_rate=rates[i], layer_scale_init=layer_scale_init
            )
            for i in range(num_layers)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        cache: Any = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        position_bias: PositionBias = None,
    ) -> EncoderOutput:
        """``position_bias``: one additive tensor for every layer or a sequence of one per layer (VLMo/BEiT)."""
        outputs = (output_hidden_states, output_attentions)
        return run_layers(
            self.layers, hidden_states, position_bias, *outputs, attention_mask=attention_mask, is_causal=is_causal,
            cache=cache,
        )
