"""CLIP configuration (Radford et al., 2021). Defaults reproduce OpenAI's ViT-B/32."""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..configuration_towers import TextTowerConfig, VisionTowerConfig

VISION_ARCHITECTURES = ("vit", "resnet")


@strict
class VlpClipVisionConfig(VisionTowerConfig):
    """Image tower: a ViT (``architecture="vit"``) or CLIP's ModifiedResNet (``"resnet"``).

    ResNet fields: ``resnet_layers`` (blocks per stage), ``resnet_width`` (stem width; features are 32x wider),
    ``resnet_heads`` (attention-pool heads, ``32 * width // 64`` when unset). ``hidden_size`` etc. describe the ViT.
    """

    model_type = "hf_vlp_clip_vision"

    architecture: str = "vit"
    patch_size: int = 32
    resnet_layers: list[int] | None = None
    resnet_width: int = 64
    resnet_heads: int | None = None
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    def validate_architecture(self) -> None:
        if self.architecture not in VISION_ARCHITECTURES:
            raise ValueError(f"vision architecture must be one of {VISION_ARCHITECTURES}, got {self.architecture!r}")
        if self.architecture == "vit":
            super().validate_architecture()
        else:
            if not self.resnet_layers or len(self.resnet_layers) != 4:
                raise ValueError(f"resnet_layers needs four stage depths, got {self.resnet_layers}")
            if self.image_size % 32:
                raise ValueError(f"a ResNet tower needs image_size divisible by 32, got {self.image_size}")
            if self.resnet_feature_size % self.resnet_attention_heads:
                raise ValueError(
                    f"ResNet feature width {self.resnet_feature_size} is not a multiple of resnet_heads "
                    f"{self.resnet_attention_heads}"
                )

    @property
    def resnet_feature_size(self) -> int:
        return self.resnet_width * 32

    @property
    def resnet_attention_heads(self) -> int:
        return self.resnet_heads or self.resnet_feature_size // 64


@strict
class VlpClipTextConfig(TextTowerConfig):
    """Causal text transformer with end-of-text pooling."""

    model_type = "hf_vlp_clip_text"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    projection_dim: int = 512
    pad_token_id: int | None = 0
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.eos_token_id is None or not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"eos_token_id must be an id below vocab_size {self.vocab_size}, got {self.eos_token_id}")


def _vit(width: int, layers: int, patch: int, image: int) -> dict[str, Any]:
    return dict(
        architecture="vit",
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        patch_size=patch,
        image_size=image,
    )


def _resnet(layers: list[int], width: int, image: int) -> dict[str, Any]:
    return dict(architecture="resnet", resnet_layers=layers, resnet_width=width, image_size=image)


def _text(width: int) -> dict[str, Any]:
    return dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64, num_hidden_layers=12)


# name -> (projection_dim, vision config, text config), as released by OpenAI (openai/CLIP clip.py `_MODELS`).
CLIP_PRESETS: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "RN50": (1024, _resnet([3, 4, 6, 3], 64, 224), _text(512)),
    "RN101": (512, _resnet([3, 4, 23, 3], 64, 224), _text(512)),
    "RN50x4": (640, _resnet([4, 6, 10, 6], 80, 288), _text(640)),
    "RN50x16": (768, _resnet([6, 8, 18, 8], 96, 384), _text(768)),
    "RN50x64": (1024, _resnet([3, 15, 36, 10], 128, 448), _text(1024)),
    "ViT-B/32": (512, _vit(768, 12, 32, 224), _text(512)),
    "ViT-B/16": (512, _vit(768, 12, 16, 224), _text(512)),
    "ViT-L/14": (768, _vit(1024, 24, 14, 224), _text(768)),
    "ViT-L/14@336px": (768, _vit(1024, 24, 14, 336), _text(768)),
}


@strict
class VlpClipConfig(PretrainedConfig):
    """Dual-encoder CLIP: vision and text towers projected into a shared ``projection_dim`` space.

    ``logit_scale_init_value`` is ln(1/0.07) as in the paper; ``logit_scale_max`` (ln 100) is the clamp applied after
    every optimizer step by :class:`hf_vlp.training.callbacks.LogitScaleClampCallback`.
    """

    model_type = "hf_vlp_clip"
    sub_configs_defaults = {"vision_config": VlpClipVisionConfig, "text_config": VlpClipTextConfig}

    text_config: dict | VlpClipTextConfig | None = None
    vision_config: dict | VlpClipVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100)

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        # the towers project into the shared space; keep their copies of projection_dim in sync
        self.text_config.projection_dim = self.projection_dim
        self.vision_config.projection_dim = self.projection_dim

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> "VlpClipConfig":
        """Config of a released OpenAI model, e.g. ``VlpClipConfig.from_preset("ViT-B/16")``."""
        if name not in CLIP_PRESETS:
            raise ValueError(f"Unknown CLIP preset {name!r}; choose one of {sorted(CLIP_PRESETS)}")
        projection_dim, vision, text = CLIP_PRESETS[name]
        return cls(projection_dim=projection_dim, vision_config=dict(vision), text_config=dict(text), **kwargs)
