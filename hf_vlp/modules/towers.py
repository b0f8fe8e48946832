"""Builders of the timm-style ViT and the BERT-style text blocks from a tower config, shared by ALBEF and BLIP
(both originals copy timm's ``VisionTransformer`` and HF BERT)."""

from __future__ import annotations

from typing import Any

from .transformer import BlockOptions
from .vision import VisionTransformer


def vision_block_options(config: Any) -> BlockOptions:
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=config.attention_dropout,
    )


def text_block_options(config: Any) -> BlockOptions:
    return BlockOptions(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        layer_norm_eps=config.layer_norm_eps,
        attention_dropout=config.attention_probs_dropout_prob,
        hidden_dropout=config.hidden_dropout_prob,
    )


def build_vision_tower(config: Any) -> VisionTransformer:
    """timm's ViT as ALBEF's ``models/vit.py`` builds it: patch bias, no pre-norm, final norm on every token."""
    return VisionTransformer(
        vision_block_options(config),
        num_layers=config.num_hidden_layers,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        patch_bias=True,
        norm_pre=False,
        final_norm="all",
        config=config,
    )
