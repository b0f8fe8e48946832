"""Image towers: a configurable Vision Transformer and CLIP's ModifiedResNet.

The ViT covers the variants of the six originals through options: patch convolution with or without bias,
``norm_pre`` before the blocks (CLIP/CoCa), where the final LayerNorm sits (``final_norm="cls"``: only on
the class token, as CLIP's ``ln_post``; ``"all"``: on every token, as timm/ALBEF/BLIP; ``"none"``), and stochastic
depth (``drop_path_rate``: timm's per-sample drop of residual branches, BLIP-L/VQA/NLVR2 train with 0.1).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .transformer import BlockOptions, PreNormEncoder

FINAL_NORM_MODES = ("cls", "all", "none")


def interpolate_grid_embeddings(
    embeddings: torch.Tensor, num_prefix_tokens: int, grid_size: int, new_grid: tuple[int, int]
) -> torch.Tensor:
    """Bicubically resize the grid part of ``[prefix + grid², D]`` position embeddings to ``new_grid``."""
    prefix, grid = embeddings[:num_prefix_tokens], embeddings[num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, grid_size, grid_size, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False).to(embeddings.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(-1, dim)
    return torch.cat([prefix, grid], dim=0)


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


def _add_drop_path(encoder: PreNormEncoder, rates: list[float]) -> None:
    """Put a :class:`DropPath` on both residual branches of every block with a non-zero rate: after the block's
    attention output dropout and after its MLP (whose output passes the MLP's ``dropout``), so each block computes
    ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))`` as timm's. No parameters are added."""
    for block, rate in zip(encoder.layers, rates):
        if rate == 0.0:
            continue
        block.dropout = _then_drop_path(block.dropout, rate)
        block.mlp.dropout = _then_drop_path(block.mlp.dropout, rate)


def _then_drop_path(module: nn.Module, rate: float) -> nn.Module:
    return DropPath(rate) if isinstance(module, nn.Identity) else nn.Sequential(module, DropPath(rate))


class VisionTransformer(nn.Module):
    """Patch embedding + class token + learned positions + pre-norm encoder (+ final norm).

    ``drop_path_rate`` (stochastic depth, linearly increasing over the blocks as timm's) defaults to the config's
    ``drop_path_rate`` field when it has one, else 0 (no effect, and the identity in eval mode anyway).
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
        config: Any = None,
    ) -> None:
        super().__init__()
        if final_norm not in FINAL_NORM_MODES:
            raise ValueError(f"final_norm must be one of {FINAL_NORM_MODES}, got {final_norm!r}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        width = options.hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.final_norm = final_norm
        self.patch_embed = nn.Conv2d(num_channels, width, patch_size, stride=patch_size, bias=patch_bias)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.position_embedding = nn.Parameter(torch.randn(self.grid_size**2 + 1, width) * width**-0.5)
        self.norm_pre = nn.LayerNorm(width, eps=options.layer_norm_eps) if norm_pre else nn.Identity()
        self.encoder = PreNormEncoder(options, num_layers, config=config)
        if drop_path_rate is None:
            drop_path_rate = float(getattr(config, "drop_path_rate", 0.0) or 0.0)
        self.drop_path_rate = drop_path_rate
        _add_drop_path(self.encoder, drop_path_rates(drop_path_rate, num_layers))
        self.norm_post = nn.LayerNorm(width, eps=options.layer_norm_eps) if final_norm != "none" else nn.Identity()

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Patch tokens with the class token prepended and positions added: ``[B, 1 + N, D]``."""
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}")
        height, width = pixel_values.shape[-2:]
        if (height, width) != (self.image_size, self.image_size) and not interpolate_pos_encoding:
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model ({self.image_size}x{self.image_size}). "
                "Resize the images with the model's image processor, or pass interpolate_pos_encoding=True."
            )
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        patches = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([cls, patches], dim=1)
        positions = self.position_embedding
        new_grid = (height // self.patch_size, width // self.patch_size)
        if new_grid != (self.grid_size, self.grid_size):
            positions = interpolate_grid_embeddings(positions, 1, self.grid_size, new_grid)
        return tokens + positions.to(tokens.dtype)

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
        x = pixel_values.to(self.conv1.weight.dtype)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
