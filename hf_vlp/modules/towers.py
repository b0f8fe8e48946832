"""Builders of the ViT and of block options from a tower config: the timm-style ViT and BERT-style text blocks of ALBEF
and BLIP (both originals copy timm's ``VisionTransformer`` and HF BERT), and CLIP's ViT and causal text blocks."""

from __future__ import annotations

from typing import Any

from .transformer import BlockOptions
from .vision import VisionTransformer


def block_options(config: Any, *, attention_dropout: float, hidden_dropout: float = 0.0) -> BlockOptions:
    """The :class:`BlockOptions` of a tower config with the usual field names (``hidden_size``,
    ``num_attention_heads``, ``intermediate_size``, ``hidden_act``, ``layer_norm_eps``) and the given dropouts."""
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=attention_dropout,
        hidden_dropout=hidden_dropout,
    )


def vision_block_options(config: Any) -> BlockOptions:
    """A ViT tower config's blocks: attention dropout only (``attention_dropout``)."""
    return block_options(config, attention_dropout=config.attention_dropout)


def text_block_options(config: Any) -> BlockOptions:
    """A BERT-style tower config's blocks: BERT's attention and hidden dropouts."""
    return block_options(
        config, attention_dropout=config.attention_probs_dropout_prob, hidden_dropout=config.hidden_dropout_prob
    )


def build_vision_tower(
    config: Any,
    *,
    patch_bias: bool = True,
    norm_pre: bool = False,
    final_norm: str = "all",
    options: BlockOptions | None = None,
    position_interpolation: str = "bicubic",
) -> VisionTransformer:
    """A :class:`VisionTransformer` from a ViT tower config. The defaults are timm's ViT as ALBEF's and BLIP's
    ``models/vit.py`` build it (patch bias, no pre-norm, final norm on every token); CLIP/CoCa pass
    ``patch_bias=False, norm_pre=True, final_norm="cls"``. ``options`` replaces the blocks' options read from the
    config (:func:`vision_block_options`), e.g. ViLT's dropouts; ``position_interpolation`` as the ViT's."""
    return VisionTransformer(
        options or vision_block_options(config),
        num_layers=config.num_hidden_layers,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        patch_bias=patch_bias,
        norm_pre=norm_pre,
        final_norm=final_norm,
        position_interpolation=position_interpolation,
        config=config,
    )
