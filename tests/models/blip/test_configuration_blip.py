"""BLIP configuration: base defaults, the ViT-L preset, validation with clear errors, round trips."""

from __future__ import annotations

import pytest

from hf_vlp.models.blip import BLIP_PRESETS, VlpBlipConfig, VlpBlipTextConfig, VlpBlipVisionConfig


def test_defaults_are_blip_base() -> None:
    config = VlpBlipConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.patch_size) == (768, 12, 12, 16)
    assert (vision.image_size, vision.layer_norm_eps) == (224, 1e-6)
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.encoder_width) == (30524, 768, 12, 768)
    assert (text.bos_token_id, text.enc_token_id, text.pad_token_id, text.cls_token_id, text.sep_token_id) == (
        30522, 30523, 0, 101, 102
    )
    assert (config.embed_dim, config.queue_size, config.momentum, config.alpha) == (256, 57600, 0.995, 0.4)
    assert (config.temp, config.temp_min, config.temp_max, config.label_smoothing) == (0.07, 0.001, 0.5, 0.1)
    assert config.get_text_config() is text and config.tie_word_embeddings
    assert VlpBlipConfig.model_type == "hf_vlp_blip" and VlpBlipTextConfig.model_type == "hf_vlp_blip_text"
    assert VlpBlipVisionConfig.model_type == "hf_vlp_blip_vision"


def test_large_preset_and_round_trip() -> None:
    config = VlpBlipConfig.from_preset("large", image_size=384, embed_dim=128)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (
        1024, 24, 16, 4096
    )
    assert vision.image_size == 384 and config.embed_dim == 128
    assert config.text_config.encoder_width == 1024  # cross-attention reads the ViT-L tokens
    again = VlpBlipConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert set(BLIP_PRESETS) == {"base", "large"}
    with pytest.raises(ValueError, match="Unknown BLIP preset 'huge'"):
        VlpBlipConfig.from_preset("huge")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temp=0.9), "temp 0.9 must lie in"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(momentum=1.5), "momentum"),
        (dict(queue_size=0), "queue_size"),
        (dict(embed_dim=0), "embed_dim"),
        (dict(itm_negative_eps=-1.0), "itm_negative_eps"),
        (dict(text_config=dict(vocab_size=66)), "special-token ids cls_token_id=101.* not below vocab_size 66"),
        (dict(text_config=dict(enc_token_id=30522)), "must be distinct"),
        (dict(text_config=dict(hidden_size=100)), "not a multiple of num_attention_heads"),
        (dict(vision_config=dict(image_size=100)), "not a multiple of patch_size"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(Exception, match=match):
        VlpBlipConfig(**kwargs)
