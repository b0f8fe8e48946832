"""VLMo's multiway block: one self-attention shared by every modality, a feed-forward expert per modality.

``x = x + drop_path(ls1 * attn(norm1(x)))`` with the shared ``norm1``/``attn``, then the expert of the tokens'
modality: ``x = x + drop_path(ls2 * mlp[m](norm2[m](x)))``. Experts are ``"text"`` and ``"image"`` in every block
and, optionally, ``"vl"`` (VLMo's VL-FFN in its top blocks). A fused sequence (``modality="vl"``) goes through the
``vl`` expert when the block has one; otherwise its tokens are routed to the text and image experts, by a split
position (text first, as VLMo: the first ``split_position`` tokens are text) or by a per-token ``image_token_mask``.
Parameter names: ``norm1``, ``attn``, ``norm2.<expert>``, ``mlp.<expert>``, ``layer_scale1``/``layer_scale2``
(only with layer scale, shared by all experts as VLMo's ``gamma_1``/``gamma_2``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .transformer import (
    BlockOptions,
    EncoderOutput,
    Mlp,
    PositionBias,
    attention_from_options,
    drop_path_or_identity,
    drop_path_rates,
    layer_scale_parameter,
    run_layers,
    scaled,
)

MODALITIES = ("text", "image", "vl")


class MultiwayBlock(GradientCheckpointingLayer):
    """Pre-norm block with shared self-attention and per-modality feed-forward experts (see the module docstring).

    ``with_vl_expert`` adds the ``vl`` expert; ``drop_path_rate`` and ``layer_scale_init`` are as in
    :class:`~hf_vlp.modules.transformer.PreNormBlock`.
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        config: Any = None,
        with_vl_expert: bool = False,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        width = options.hidden_size
        experts = MODALITIES if with_vl_expert else MODALITIES[:2]
        self.norm1 = nn.LayerNorm(width, eps=options.layer_norm_eps)
        self.attn = attention_from_options(options, config=config, layer_idx=layer_idx)
        self.norm2 = nn.ModuleDict({name: nn.LayerNorm(width, eps=options.layer_norm_eps) for name in experts})
        self.mlp = nn.ModuleDict(
            {
                name: Mlp(width, options.intermediate_size, options.activation, options.hidden_dropout)
                for name in experts
            }
        )
        self.dropout = nn.Dropout(options.hidden_dropout) if options.hidden_dropout else nn.Identity()
        self.drop_path = drop_path_or_identity(drop_path_rate)
        self.layer_scale1 = layer_scale_parameter(width, layer_scale_init)
        self.layer_scale2 = layer_scale_parameter(width, layer_scale_init)

    @property
    def has_vl_expert(self) -> bool:
        return "vl" in self.mlp

    def expert(self, name: str, hidden_states: torch.Tensor) -> torch.Tensor:
        """The ``name`` expert's feed-forward branch ``mlp[name](norm2[name](x))``."""
        return self.mlp[name](self.norm2[name](hidden_states))

    def _feed_forward(
        self,
        hidden_states: torch.Tensor,
        modality: str,
        split_position: int | None,
        image_token_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if modality != "vl":
            return self.expert(modality, hidden_states)
        if self.has_vl_expert:
            return self.expert("vl", hidden_states)
        if image_token_mask is not None:
            is_image = image_token_mask.bool()[..., None]
            return torch.where(is_image, self.expert("image", hidden_states), self.expert("text", hidden_states))
        if split_position is None:
            raise ValueError("a fused sequence without a vl expert needs split_position or image_token_mask")
        text, image = hidden_states[:, :split_position], hidden_states[:, split_position:]
        return torch.cat([self.expert("text", text), self.expert("image", image)], dim=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        modality: str,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        split_position: int | None = None,
        image_token_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``modality``: ``"text"``, ``"image"`` or ``"vl"``; masks and ``position_bias`` are additive (broadcastable
        to ``[B, heads, L, L]``). Returns ``(hidden_states, attention probabilities or None)``."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        attended, weights = self.attn(
            self.norm1(hidden_states),
            attention_mask=attention_mask,
            position_bias=position_bias,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.drop_path(scaled(self.dropout(attended), self.layer_scale1))
        branch = self._feed_forward(hidden_states, modality, split_position, image_token_mask)
        hidden_states = hidden_states + self.drop_path(scaled(branch, self.layer_scale2))
        return hidden_states, weights


class MultiwayEncoder(nn.Module):
    """A stack of :class:`MultiwayBlock` (VLMo's ``MultiWayTransformer.blocks``): layers from ``vl_expert_start`` on
    hold a ``vl`` expert (``num_layers``: none), stochastic depth rises linearly to ``drop_path_rate``."""

    def __init__(
        self,
        options: BlockOptions,
        num_layers: int,
        *,
        vl_expert_start: int | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        config: Any = None,
    ) -> None:
        super().__init__()
        start = num_layers if vl_expert_start is None else vl_expert_start
        if not 0 <= start <= num_layers:
            raise ValueError(f"vl_expert_start must be between 0 and num_layers ({num_layers}), got {start}")
        rates = drop_path_rates(drop_path_rate, num_layers)
        self.layers = nn.ModuleList(
            MultiwayBlock(
                options,
                config=config,
                with_vl_expert=index >= start,
                drop_path_rate=rates[index],
                layer_scale_init=layer_scale_init,
                layer_idx=index,
            )
            for index in range(num_layers)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        modality: str,
        attention_mask: torch.Tensor | None = None,
        position_bias: PositionBias = None,
        split_position: int | None = None,
        image_token_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Every layer with the same routing; ``position_bias`` is shared or one per layer (VLMo's table chunks)."""
        routing = dict(modality=modality, split_position=split_position, image_token_mask=image_token_mask)
        return run_layers(
            self.layers, hidden_states, position_bias, output_hidden_states, output_attentions,
            attention_mask=attention_mask, **routing,
        )
