"""BEiT-style relative-position bias for a patch grid with a class token (BEiT, VLMo).

Every pair of tokens gets a learned per-head bias looked up in a table: patch pairs by their (row, column) offset,
``(2h - 1) * (2w - 1)`` entries, plus three entries for class-token query -> patch, patch -> class-token key and
class -> class. The bias ``[heads, 1 + h*w, 1 + h*w]`` is added to the attention scores
(:class:`~hf_vlp.modules.transformer.PreNormEncoder` takes it as ``position_bias``, shared or per layer).

:class:`MultimodalRelativePositionBias` is VLMo's table: the image rows above, then one row for every text query ->
image key pair and one for every image query -> text key pair, then text rows by offset (1-D, with the same three
class-token entries for the text ``[CLS]``), one table for image-only, text-only and fused (text first) sequences.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


# ------------------------------------------------------------------------------------------------- image + text (VLMo)

CROSS_ROWS = 2  # text query -> image key, image query -> text key


def multimodal_table_rows(grid: tuple[int, int], text_table_length: int) -> int:
    """Rows of VLMo's table: the grid's image rows, the two cross-modal rows and ``2 * text_table_length`` text rows."""
    return num_relative_distances(grid) + CROSS_ROWS + 2 * text_table_length


def text_relative_position_index(length: int, text_table_length: int, first_row: int) -> torch.Tensor:
    """VLMo's index ``[L, L]`` of a text (``[CLS]`` first) into text rows starting after row ``first_row + 1``.

    Tokens ``i, j >= 1`` use row ``first_row + 2 + (j - i) + text_table_length - 2``; the ``[CLS]`` query row, key
    column and ``[CLS]`` -> ``[CLS]`` pair use the table's last three rows. ``text_table_length`` is the text length
    the rows were learned for (196 in every release), at least ``length``.
    """
    if not 0 < length <= text_table_length:
        raise ValueError(
            f"text of {length} tokens does not fit the relative-position table learned for {text_table_length} tokens"
        )
    positions = torch.arange(length)
    index = first_row + CROSS_ROWS + (positions[None, :] - positions[:, None]) + text_table_length - 2
    total = first_row + CROSS_ROWS + 2 * text_table_length
    index[0, :] = total - 3
    index[:, 0] = total - 2
    index[0, 0] = total - 1
    return index


def fused_relative_position_index(text_length: int, grid: tuple[int, int], text_table_length: int) -> torch.Tensor:
    """VLMo's index of a fused sequence ``[text (L) ; image class token, patches]``: the text and image blocks as
    their own, text query -> image key on row ``R`` and image query -> text key on row ``R + 1`` (``R`` =
    :func:`num_relative_distances`)."""
    first_row = num_relative_distances(grid)
    image = relative_position_index(grid)
    total = text_length + image.shape[0]
    index = torch.empty(total, total, dtype=torch.long)
    index[:text_length, :text_length] = text_relative_position_index(text_length, text_table_length, first_row)
    index[text_length:, text_length:] = image
    index[:text_length, text_length:] = first_row
    index[text_length:, :text_length] = first_row + 1
    return index


def resized_image_rows(rows: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """The patch-offset rows ``[(2h - 1)(2w - 1), C]`` of ``grid`` resized (bilinear, as transformers' BEiT) to the
    offsets of ``new_grid``, for images of another size than the table was learned at."""
    (height, width), (new_height, new_width) = grid, new_grid
    offsets = rows.T.reshape(1, -1, 2 * height - 1, 2 * width - 1)
    resized = F.interpolate(offsets.float(), size=(2 * new_height - 1, 2 * new_width - 1), mode="bilinear")
    return resized.to(rows.dtype).reshape(rows.shape[1], -1).T


class MultimodalRelativePositionBias(nn.Module):
    """VLMo's single relative-position table ``[rows, heads * num_layers]`` for image, text and fused sequences.

    ``grid`` is the patch grid the image rows were learned for and ``text_table_length`` the text length of the text
    rows. ``forward(kind, text_length, grid)`` returns one bias ``[heads, N, N]`` per layer (layer ``i`` reads
    columns ``[i * heads, (i + 1) * heads)``) for ``kind`` ``"image"`` (class token + patches), ``"text"`` or
    ``"fused"`` (text then image). Another image grid than the table's interpolates the patch-offset rows. The table
    starts at zero (as VLMo initialises it); the indices are cached per shape and device, not saved.
    """

    def __init__(self, grid: tuple[int, int], text_table_length: int, num_heads: int, num_layers: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.text_table_length = text_table_length
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.table = nn.Parameter(torch.zeros(multimodal_table_rows(self.grid, text_table_length), num_heads * num_layers))
        self._indices: dict[tuple, torch.Tensor] = {}

    def _index(self, kind: str, text_length: int | None, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        key = (kind, text_length, grid, device)
        if key not in self._indices:
            if kind == "image":
                index = relative_position_index(grid)
            elif kind == "text":
                index = text_relative_position_index(text_length, self.text_table_length, num_relative_distances(grid))
            elif kind == "fused":
                index = fused_relative_position_index(text_length, grid, self.text_table_length)
            else:
                raise ValueError(f"kind must be 'image', 'text' or 'fused', got {kind!r}")
            self._indices[key] = index.to(device)
        return self._indices[key]

    def table_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The table with its patch-offset rows for ``grid`` (the learned table when ``grid`` is its own)."""
        grid = tuple(grid)
        if grid == self.grid:
            return self.table
        patch_rows = (2 * self.grid[0] - 1) * (2 * self.grid[1] - 1)
        resized = resized_image_rows(self.table[:patch_rows], self.grid, grid)
        return torch.cat([resized, self.table[patch_rows:]])

    def forward(
        self, kind: str, text_length: int | None = None, grid: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, ...]:
        grid = self.grid if grid is None else tuple(grid)
        table = self.table_for(grid) if kind != "text" else self.table
        index = self._index(kind, text_length, grid if kind != "text" else self.grid, table.device)
        tokens = index.shape[0]
        bias = table[index.flatten()].view(tokens, tokens, -1).permute(2, 0, 1)
        return bias.chunk(self.num_layers, dim=0)
