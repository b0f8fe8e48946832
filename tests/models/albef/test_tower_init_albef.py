"""ALBEF pre-training starts from transformers' unimodal towers (ViT + BERT), as the paper does."""

import torch
from transformers import BertConfig, BertForMaskedLM, ViTConfig, ViTModel

from hf_vlp import VlpAlbefConfig, VlpAlbefForPretraining


def _randomised(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2 + (parameter == 1).float())
    return model.eval()


def test_pretraining_model_from_vit_and_bert_directories(tmp_path):
    vit = _randomised(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         image_size=16, patch_size=8, layer_norm_eps=1e-6)), 0)
    bert = _randomised(BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                  intermediate_size=64, max_position_embeddings=16)), 1)
    vit.save_pretrained(tmp_path / "vit")
    bert.save_pretrained(tmp_path / "bert")
    config = VlpAlbefConfig(
        embed_dim=16, queue_size=8,
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=16, fusion_layer=1),
    )
    model, reports = VlpAlbefForPretraining.from_pretrained_towers(config, vision=tmp_path / "vit", text=tmp_path / "bert")
    assert "position_embedding" in reports["vision"].interpolated  # 2x2 grid -> 4x4 for 32 px images
    assert any("cross_attn" in key for key in reports["text"].not_initialised)
    text_tower = model.text_model.transformer
    torch.testing.assert_close(text_tower.embeddings.word_embeddings.weight, bert.bert.embeddings.word_embeddings.weight)
    assert model.mlm_head.decoder.weight is text_tower.embeddings.word_embeddings.weight  # still tied
    vision_tower = model.vision_model.transformer
    torch.testing.assert_close(vision_tower.class_embedding.flatten(), vit.embeddings.cls_token.flatten())
    for online, momentum in model.momentum_pairs():  # momentum towers start as copies of the loaded towers
        for p, p_m in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(p, p_m) and not p_m.requires_grad
