"""BEiT-style relative-position bias for a patch grid with a class token (BEiT, VLMo).

Every pair of tokens gets a learned per-head bias looked up in a table: patch pairs by their (row, column) offset,
``(2h - 1) * (2w - 1)`` entries, plus three entries for class-token query -> patch, patch -> class-token key and
class -> class. The bias ``[heads, 1 + h*w, 1 + h*w]`` is added to the attention scores
(:class:`~hf_vlp.modules.transformer.PreNormEncoder` takes it as ``position_bias``, shared or per layer).
"""

from __future__ import annotations

import torch
from torch import nn


def num_relative_distances(grid: tuple[int, int]) -> int:
    """Rows of the bias table of a ``(rows, columns)`` patch grid: every patch offset plus the three class entries."""
    rows, columns = grid
    return (2 * rows - 1) * (2 * columns - 1) + 3


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """BEiT's index ``[1 + N, 1 + N]`` (``N = rows * columns``, class token first) into the bias table.

    Patch query ``(y1, x1)`` and key ``(y2, x2)`` use entry
    ``(y1 - y2 + rows - 1) * (2 * columns - 1) + (x1 - x2 + columns - 1)``; the class token's query row uses entry ``T - 3``, its key column ``T - 2`` and the pair class -> class ``T - 1``
    (``T`` = :func:`num_relative_distances`).
    """
    rows, columns = grid
    coords = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    patch_index = (offsets[..., 0] + rows - 1) * (2 * columns - 1) + (offsets[..., 1] + columns - 1)
    total = num_relative_distances(grid)
    index = torch.zeros(rows * columns + 1, rows * columns + 1, dtype=torch.long)
    index[1:, 1:] = patch_index
    index[0, :] = total - 3
    index[:, 0] = total - 2
    index[0, 0] = total - 1
    return index


class RelativePositionBias(nn.Module):
    """A learned bias table ``[T, heads * num_layers]`` for a patch grid with a class token.

    ``forward()`` returns the bias ``[heads, 1 + N, 1 + N]`` when ``num_layers`` is 1 (BEiT's shared bias), else a
    tuple of one such bias per layer (VLMo's single table whose columns ``[i * heads, (i + 1) * heads)`` serve layer
    ``i``). The table starts at zero, as BEiT and VLMo initialise it; the index is a non-persistent buffer.
    """

    def __init__(self, grid: tuple[int, int], num_heads: int, num_layers: int = 1) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.table = nn.Parameter(torch.zeros(num_relative_distances(self.grid), num_heads * num_layers))
        self.register_buffer("index", relative_position_index(self.grid), persistent=False)

    def forward(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tokens = self.index.shape[0]
        bias = self.table[self.index.flatten()].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()
        if self.num_layers == 1:
            return bias
        return bias.chunk(self.num_layers, dim=0)
