"""Attention pooling: learned or computed queries attend over a token sequence.

``AttentionPool2d`` is CLIP-ResNet's ``attnpool`` (the spatial mean queries the feature map); ``AttentionalPooler`` is
CoCa's (open_clip's ``AttentionalPooler``): ``N`` learned queries cross-attend to the image tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import Attention, padding_mask
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


class AttentionalPooler(nn.Module):
    """``N`` learned queries cross-attend to LayerNorm-ed context tokens: ``[B, L, context_size] -> [B, N, hidden]``.

    As open_clip's ``AttentionalPooler``: ``norm_query`` on the queries, ``norm_context`` on every context token (the
    class token included), one multi-head cross-attention (keys/values of width ``context_size``), no residual and no
    MLP. Parameters: ``query`` ``[N, hidden]`` (standard normal), ``norm_query``, ``norm_context``, ``attn.q``,
    ``attn.kv`` and ``attn.out_proj``. ``attention_mask`` ``[B, L]`` (1 = keep) hides padded context tokens.
    """

    def __init__(
        self,
        hidden_size: int,
        context_size: int,
        *,
        num_heads: int = 8,
        num_queries: int = 256,
        layer_norm_eps: float = 1e-5,
        config: Any = None,
    ) -> None:
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries must be positive, got {num_queries}")
        self.query = nn.Parameter(torch.randn(num_queries, hidden_size))
        self.norm_query = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.norm_context = nn.LayerNorm(context_size, eps=layer_norm_eps)
        self.attn = Attention(hidden_size, num_heads, config=config, cross_attention=True, kv_size=context_size)

    def forward(self, context: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if context.ndim != 3:
            raise ValueError(f"context must be [batch, length, width], got shape {tuple(context.shape)}")
        queries = self.norm_query(self.query).to(context.dtype).expand(context.shape[0], -1, -1)
        mask = padding_mask(attention_mask, context.dtype)
        pooled, _ = self.attn(queries, self.norm_context(context), attention_mask=mask)
        return pooled
