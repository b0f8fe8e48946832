"""Image towers: a configurable Vision Transformer and CLIP's ModifiedResNet.

The ViT covers the variants of the six originals through options: patch convolution with or without bias,
``norm_pre`` before the blocks (CLIP/CoCa), where the final LayerNorm sits (``final_norm="cls"``: only on
the class token, as CLIP's ``ln_post``; ``"all"``: on every token, as timm/ALBEF/BLIP; ``"none"``), and stochastic
depth (``drop_path_rate``: timm's per-sample drop of residual branches, BLIP-L/VQA/NLVR2 train with 0.1).

:meth:`VisionTransformer.embed_masked` embeds a zero-padded batch of images of different sizes with a pixel mask, as
ViLT's ``visual_embed``: positions interpolated per image, at most ``max_patches`` patches sampled among the valid ones
(:func:`sample_patches`), and a token mask for the encoder's keys.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .transformer import BlockOptions, PreNormEncoder

FINAL_NORM_MODES = ("cls", "all", "none")
# name -> (F.interpolate mode, align_corners) of a position-grid resize: timm/CLIP's bicubic, ViLT's bilinear
POSITION_INTERPOLATIONS = {"bicubic": ("bicubic", False), "bilinear_align_corners": ("bilinear", True)}


def interpolate_grid_embeddings(
    embeddings: torch.Tensor,
    num_prefix_tokens: int,
    grid_size: int,
    new_grid: tuple[int, int],
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize the grid part of ``[prefix + grid², D]`` position embeddings to ``new_grid`` (bicubic by default; see
    :data:`POSITION_INTERPOLATIONS`)."""
    mode, align_corners = POSITION_INTERPOLATIONS[interpolation]
    prefix, grid = embeddings[:num_prefix_tokens], embeddings[num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, grid_size, grid_size, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode=mode, align_corners=align_corners).to(embeddings.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, dim)
    return torch.cat([prefix, grid], dim=0)


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def sample_patches(
    patch_mask: torch.Tensor,
    max_patches: int | None = None,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose which grid cells of each image become tokens, as ViLT's ``visual_embed``.

    ``patch_mask`` ``[B, L]`` marks the valid cells (row-major). Every image gets ``N = max valid count`` slots, or
    ``min(that, max_patches)`` when ``max_patches`` is given. An image with more than ``N`` valid cells keeps a
    random subset; one with fewer keeps all of them and fills its other slots with invalid cells drawn with
    replacement (masked out). ``shuffle`` puts the kept cells of every image that fills its slots in random order (the
    original's ``torch.multinomial``); without it kept cells stay row-major (deterministic evaluation). The draws use
    ``generator`` when given. Returns ``(cell index [B, N], keep [B, N])``.
    """
    if patch_mask.ndim != 2:
        raise ValueError(f"patch_mask must be [batch, cells], got shape {tuple(patch_mask.shape)}")
    valid = patch_mask.bool()
    batch, cells = valid.shape
    counts = valid.sum(dim=1)
    if not bool((counts > 0).all()):
        raise ValueError("every image needs at least one valid patch: check the pixel mask")
    slots = int(counts.max())
    if max_patches is not None and max_patches >= 0:
        slots = min(slots, max_patches)
    positions = torch.arange(cells, device=valid.device).expand(batch, cells)
    filled = counts >= slots
    randomised = (counts > slots) | (filled & shuffle)
    priority = torch.where(randomised[:, None], _uniform((batch, cells), valid.device, generator), positions / cells)
    chosen = torch.argsort(torch.where(valid, priority, priority + 2.0), dim=1)[:, :slots]
    keep = torch.arange(slots, device=valid.device)[None, :] < counts[:, None]
    if not shuffle:  # the kept cells in row-major order, the padding slots after them
        chosen = torch.sort(torch.where(keep, chosen, chosen + cells), dim=1).values.remainder(cells)
    invalid_first = torch.argsort(torch.where(valid, positions + cells, positions), dim=1)
    invalid_counts = (cells - counts).clamp(min=1)
    pad_rank = (_uniform((batch, slots), valid.device, generator) * invalid_counts[:, None]).long()
    pad_cells = invalid_first.gather(1, pad_rank.minimum(invalid_counts[:, None] - 1))
    return torch.where(keep, chosen, pad_cells), keep


def check_pixel_values(pixel_values: torch.Tensor) -> None:
    """Images reach a tower as the image processor returns them: a floating-point ``[batch, channels, height,
    width]`` tensor (integer pixels would be read as normalised values: 255 instead of about 2)."""
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be floating point (normalised by the model's image processor), got {pixel_values.dtype}"
        )


def check_finite_pixels(pixel_values: torch.Tensor) -> None:
    """Refuse NaN/infinite pixels before an inference pass would turn them into a caption or an answer (skipped while
    compiling, exporting or tracing: a data-dependent branch cannot be captured)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    if not bool(torch.isfinite(pixel_values).all()):
        bad = (~torch.isfinite(pixel_values)).flatten(1).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"pixel_values hold NaN or infinite values (images {bad[:8]}); check the image loading")


def with_class_token(patches: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` patch tokens with the class embedding ``[D]`` prepended: ``[B, 1 + N, D]``."""
    cls = class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
    return torch.cat([cls, patches], dim=1)


class ClassPatchEmbedding(nn.Module):
    """BEiT's/VLMo's image tokens: a patch convolution with bias, a class token first and, optionally, learned
    absolute positions (VLMo-Base-plus; BEiT and the other VLMo models use relative positions in the attention).

    ``forward`` returns ``[B, 1 + N, D]`` and the patch grid ``(rows, columns)``; images of another size than
    ``image_size`` are embedded too (the positions, when there are any, are resized bicubically to their grid).
    """

    def __init__(
        self, hidden_size: int, image_size: int, patch_size: int, num_channels: int = 3, absolute_positions: bool = False
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.patch_embed = nn.Conv2d(num_channels, hidden_size, patch_size, stride=patch_size)
        self.class_embedding = nn.Parameter(torch.zeros(hidden_size))
        self.position_embedding = (
            nn.Parameter(torch.zeros(self.grid_size**2 + 1, hidden_size)) if absolute_positions else None
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_pixel_values(pixel_values)
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        patches = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = with_class_token(patches.flatten(2).transpose(1, 2), self.class_embedding)
        if self.position_embedding is not None:
            positions = self.position_embedding
            if grid != (self.grid_size, self.grid_size):
                positions = interpolate_grid_embeddings(positions, 1, self.grid_size, grid)
            tokens = tokens + positions.to(tokens.dtype)
        return tokens, grid


@dataclass
class MaskedPatchEmbedding:
    """Tokens of :meth:`VisionTransformer.embed_masked`.

    ``tokens`` ``[B, 1 + N, D]`` (class token first), ``token_mask`` ``[B, 1 + N]`` (1 = a real token; padding slots
    0, to be masked as attention keys), ``patch_index`` ``[B, N, 2]`` the (row, column) of each slot's cell and
    ``grid`` the patch grid ``(rows, columns)`` of the padded canvas.
    """

    tokens: torch.Tensor
    token_mask: torch.Tensor
    patch_index: torch.Tensor
    grid: tuple[int, int]


class VisionTransformer(nn.Module):
    """Patch embedding + class token + learned positions + pre-norm encoder (+ final norm).

    ``drop_path_rate`` (stochastic depth, linearly increasing over the blocks as timm's; a constructor option of the
    encoder's blocks) defaults to the config's ``drop_path_rate`` field when it has one, else 0 (no effect, and the
    identity in eval mode anyway). ``position_interpolation`` is how the position grid is resized for another image
    size (:data:`POSITION_INTERPOLATIONS`: timm/CLIP's ``"bicubic"``, ViLT's ``"bilinear_align_corners"``).
    """

    def __init__(
        self,
        options: BlockOptions,
        *,
        num_layers: int,
        image_size: int,
        patch_size: int,
        num_channels: int = 3,
        patch_bias: bool = False,
        norm_pre: bool = True,
        final_norm: str = "cls",
        drop_path_rate: float | None = None,
        position_interpolation: str = "bicubic",
        config: Any = None,
    ) -> None:
        super().__init__()
        if position_interpolation not in POSITION_INTERPOLATIONS:
            choices = sorted(POSITION_INTERPOLATIONS)
            raise ValueError(f"position_interpolation must be one of {choices}, got {position_interpolation!r}")
        if final_norm not in FINAL_NORM_MODES:
            raise ValueError(f"final_norm must be one of {FINAL_NORM_MODES}, got {final_norm!r}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        width = options.hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.final_norm = final_norm
        self.position_interpolation = position_interpolation
        self.patch_embed = nn.Conv2d(num_channels, width, patch_size, stride=patch_size, bias=patch_bias)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.position_embedding = nn.Parameter(torch.randn(self.grid_size**2 + 1, width) * width**-0.5)
        self.norm_pre = nn.LayerNorm(width, eps=options.layer_norm_eps) if norm_pre else nn.Identity()
        if drop_path_rate is None:
            drop_path_rate = float(getattr(config, "drop_path_rate", 0.0) or 0.0)
        self.drop_path_rate = drop_path_rate
        self.encoder = PreNormEncoder(options, num_layers, config=config, drop_path_rate=drop_path_rate)
        self.norm_post = nn.LayerNorm(width, eps=options.layer_norm_eps) if final_norm != "none" else nn.Identity()

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Patch tokens with the class token prepended and positions added: ``[B, 1 + N, D]``."""
        check_pixel_values(pixel_values)
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.image_size, self.image_size) and not interpolate_pos_encoding:
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model ({self.image_size}x{self.image_size}). "
                "Resize the images with the model's image processor, or pass interpolate_pos_encoding=True."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        patches = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        tokens = with_class_token(patches, self.class_embedding)
        positions = self.position_embedding
        new_grid = (height // self.patch_size, width // self.patch_size)
        if new_grid != (self.grid_size, self.grid_size):
            positions = interpolate_grid_embeddings(
                positions, 1, self.grid_size, new_grid, self.position_interpolation
            )
        return tokens + positions.to(tokens.dtype)

    def embed_masked(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor,
        max_patches: int | None = None,
        *,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
    ) -> MaskedPatchEmbedding:
        """Embed a zero-padded batch of images of different sizes (ViLT's ``visual_embed``).

        ``pixel_mask`` ``[B, H, W]`` is 1 on each image's real pixels (top-left aligned). It is resized to the patch
        grid (nearest); an image's valid grid is ``rows x columns`` counted along its first column and first row.
        The learned position grid is interpolated to each image's valid grid (``position_interpolation``) and
        zero-padded to the canvas grid; then :func:`sample_patches` picks the tokens (``max_patches``, ``generator``,
        ``shuffle``). Padding slots hold an invalid cell: the patch projection of zeros with a zero position.
        """
        if pixel_values.ndim != 4 or pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[-2:]):
            raise ValueError(
                f"pixel_values [B, C, H, W] and pixel_mask [B, H, W] must agree, got shapes "
                f"{tuple(pixel_values.shape)} and {tuple(pixel_mask.shape)}"
            )
        patches = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        batch, width, rows, columns = patches.shape
        grid_mask = F.interpolate(pixel_mask[:, None].float(), size=(rows, columns)).long()[:, 0]
        valid_rows, valid_columns = grid_mask[:, :, 0].sum(dim=1), grid_mask[:, 0, :].sum(dim=1)
        positions = patches.new_zeros(batch, rows, columns, width)
        sizes = torch.stack([valid_rows, valid_columns], dim=1)
        for size in torch.unique(sizes, dim=0).tolist():  # one interpolation per distinct image size
            if min(size) == 0:
                continue
            grid = interpolate_grid_embeddings(
                self.position_embedding[1:], 0, self.grid_size, tuple(size), self.position_interpolation
            )
            same_size = (sizes == sizes.new_tensor(size)).all(dim=1)
            positions[same_size, : size[0], : size[1]] = grid.view(size[0], size[1], width).to(positions.dtype)[None]
        grid_mask = grid_mask.flatten(1)
        cells, keep = sample_patches(grid_mask, max_patches, generator=generator, shuffle=shuffle)
        take = cells[..., None].expand(-1, -1, width)
        patch_tokens = patches.flatten(2).transpose(1, 2).gather(1, take) + positions.flatten(1, 2).gather(1, take)
        cls = (self.class_embedding + self.position_embedding[0]).to(patch_tokens.dtype).expand(batch, 1, -1)
        patch_index = torch.stack([cells.div(columns, rounding_mode="floor"), cells.remainder(columns)], dim=-1)
        token_mask = torch.cat([keep.new_ones(batch, 1), keep], dim=1).long()
        return MaskedPatchEmbedding(torch.cat([cls, patch_tokens], dim=1), token_mask, patch_index, (rows, columns))

    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutputWithPooling:
        tokens = self.norm_pre(self.embed(pixel_values, interpolate_pos_encoding))
        encoded = self.encoder(tokens, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        last = encoded.last_hidden_state
        if self.final_norm == "all":
            last = self.norm_post(last)
            pooled = last[:, 0]
        else:
            pooled = self.norm_post(last[:, 0])
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


class Bottleneck(nn.Module):
    """CLIP's anti-aliased ResNet bottleneck: avg-pool before the strided path instead of a strided conv."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                OrderedDict(
                    pool=nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                    conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    norm=nn.BatchNorm2d(out_channels),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu(out + identity)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet trunk: 3-conv stem + avg-pool, four bottleneck stages (total stride 32).

    Returns the last feature map ``[B, 32 * width, H/32, W/32]``; pooling is a separate module.
    """

    def __init__(self, layers: tuple[int, int, int, int] | list[int], width: int = 64, num_channels: int = 3) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ModifiedResNet needs four stage depths, got {list(layers)}")
        self.conv1 = nn.Conv2d(num_channels, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self.relu = nn.ReLU(inplace=True)
        channels = width
        stages = []
        for index, (depth, stride) in enumerate(zip(layers, (1, 2, 2, 2))):
            planes = width * 2**index
            blocks = [Bottleneck(channels, planes, stride)]
            channels = planes * Bottleneck.expansion
            blocks += [Bottleneck(channels, planes) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.output_channels = channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_pixel_values(pixel_values)
        x = pixel_values.to(self.conv1.weight.dtype)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
