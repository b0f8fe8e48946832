"""Attention pooling: one query attends over a token sequence (CLIP-ResNet's ``attnpool``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import Attention
from .vision import interpolate_grid_embeddings


class AttentionPool2d(nn.Module):
    """CLIP's ResNet head: the spatial mean token queries ``[mean] + grid`` tokens (with learned positions).

    The output projection maps the feature width to ``output_size``, so its result is the image embedding.
    """

    def __init__(self, grid_size: int, width: int, num_heads: int, output_size: int, *, config: Any = None) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.position_embedding = nn.Parameter(torch.randn(grid_size**2 + 1, width) / width**0.5)
        self.attn = Attention(width, num_heads, config=config, cross_attention=True, out_size=output_size)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = feature_map.shape
        tokens = feature_map.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        positions = self.position_embedding
        if height * width != self.grid_size**2:
            positions = interpolate_grid_embeddings(positions, 1, self.grid_size, (height, width))
        tokens = tokens + positions.to(tokens.dtype)
        pooled, _ = self.attn(tokens[:, :1], tokens)
        return pooled[:, 0]
