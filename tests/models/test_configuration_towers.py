"""The shared tower-config base: fields and the heads check, inherited by every model's tower configs."""

import pytest

from hf_vlp.models.albef.configuration_albef import VlpAlbefTextConfig, VlpAlbefVisionConfig
from hf_vlp.models.blip.configuration_blip import VlpBlipTextConfig, VlpBlipVisionConfig
from hf_vlp.models.clip.configuration_clip import VlpClipTextConfig, VlpClipVisionConfig
from hf_vlp.models.configuration_towers import TransformerTowerConfig

TOWER_FIELDS = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "layer_norm_eps",
    "initializer_range",
}
TOWERS = [VlpClipVisionConfig, VlpClipTextConfig, VlpAlbefVisionConfig, VlpAlbefTextConfig, VlpBlipVisionConfig,
          VlpBlipTextConfig]


@pytest.mark.parametrize("cls", TOWERS)
def test_every_tower_config_has_the_shared_fields_and_heads_check(cls) -> None:
    assert issubclass(cls, TransformerTowerConfig)
    assert TOWER_FIELDS <= set(cls().to_dict())
    with pytest.raises(Exception, match="is not a multiple of num_attention_heads"):
        cls(hidden_size=50, num_attention_heads=3)


def test_tower_defaults_stay_each_models() -> None:
    clip_text, clip_vision = VlpClipTextConfig(), VlpClipVisionConfig()
    assert (clip_text.hidden_size, clip_text.num_attention_heads, clip_text.layer_norm_eps) == (512, 8, 1e-5)
    assert (clip_vision.hidden_act, clip_vision.layer_norm_eps, clip_vision.patch_size) == ("quick_gelu", 1e-5, 32)
    assert (VlpAlbefVisionConfig().layer_norm_eps, VlpAlbefVisionConfig().image_size) == (1e-6, 256)
    assert (VlpBlipTextConfig().layer_norm_eps, VlpBlipTextConfig().vocab_size) == (1e-12, 30524)


def test_resnet_clip_tower_skips_the_vit_heads_check() -> None:
    config = VlpClipVisionConfig(architecture="resnet", resnet_layers=[1, 1, 1, 1], hidden_size=50, num_attention_heads=3)
    assert config.resnet_feature_size == 2048
