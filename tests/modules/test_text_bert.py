"""BERT-style post-norm text/fusion encoder: parity with transformers' BertModel, modes, masks, kernels, errors."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertModel, PretrainedConfig

from conversion.common import filter_prefix, map_state_dict
from conversion.convert_albef import albef_rules
from hf_vlp.modules.heads import ItmHead, MaskedLMHead
from hf_vlp.modules.text import BertStyleEncoder, BertStyleTextTransformer, PostNormBlock
from hf_vlp.modules.transformer import BlockOptions

WIDTH, HEADS, FFN, VOCAB, POSITIONS, MEMORY_WIDTH = 32, 4, 48, 50, 24, 40


def options(dropout: float = 0.0) -> BlockOptions:
    return BlockOptions(
        hidden_size=WIDTH, num_heads=HEADS, intermediate_size=FFN, activation="gelu", layer_norm_eps=1e-12,
        attention_dropout=dropout, hidden_dropout=dropout,
    )


def attention_config(implementation: str = "sdpa") -> PretrainedConfig:
    config = PretrainedConfig()
    config._attn_implementation = implementation
    return config


def text_tower(num_layers: int = 3, fusion_layer: int = 1, implementation: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    tower = BertStyleTextTransformer(
        options(), num_layers=num_layers, fusion_layer=fusion_layer, vocab_size=VOCAB,
        max_position_embeddings=POSITIONS, kv_size=MEMORY_WIDTH, config=attention_config(implementation),
    ).eval()
    with torch.no_grad():  # every tensor matters: move LayerNorms and biases away from 1 / 0
        for parameter in tower.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return tower


def batch(seed: int = 1, size: int = 3, length: int = 9):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (size, length), generator=generator)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[1, 5:] = 0
    attention_mask[2, 3:] = 0
    input_ids[attention_mask == 0] = 0
    memory = torch.randn(size, 7, MEMORY_WIDTH, generator=generator)
    return input_ids, attention_mask, memory


def test_text_layers_match_transformers_bert() -> None:
    """Self-attention post-norm layers, embeddings (token types, positions) and padding mask equal BertModel's."""
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=FFN,
        max_position_embeddings=POSITIONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    reference = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    source = {f"text_encoder.bert.{key}": value for key, value in reference.state_dict().items()}
    mapped = map_state_dict(source, albef_rules())
    ours = text_tower(num_layers=2, fusion_layer=2)
    ours.load_state_dict(filter_prefix(mapped.tensors, "albef.text_model.transformer."), strict=True)
    input_ids, attention_mask, _ = batch()
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1
    with torch.no_grad():
        for types in (None, token_type_ids):
            expected = reference(input_ids, attention_mask=attention_mask, token_type_ids=types).last_hidden_state
            actual = ours(input_ids, attention_mask, types, mode="text").last_hidden_state
            keep = attention_mask.bool()  # padded rows are not compared: both sides leave them unconstrained
            torch.testing.assert_close(actual[keep], expected[keep], atol=1e-5, rtol=0)


def test_text_then_fusion_equals_full_pass_and_layer_ranges() -> None:
    tower = text_tower()
    input_ids, attention_mask, memory = batch()
    assert list(tower.encoder.layer_range("text")) == [0]
    assert list(tower.encoder.layer_range("fusion")) == [1, 2]
    assert [layer.has_cross_attention for layer in tower.encoder.layers] == [False, True, True]
    with torch.no_grad():
        text = tower(input_ids, attention_mask, mode="text").last_hidden_state
        fused = tower(attention_mask=attention_mask, inputs_embeds=text, encoder_hidden_states=memory, mode="fusion")
        full = tower(input_ids, attention_mask, encoder_hidden_states=memory, mode="full")
    torch.testing.assert_close(fused.last_hidden_state, full.last_hidden_state, atol=1e-6, rtol=0)
    assert not torch.allclose(text, full.last_hidden_state, atol=1e-2)


def test_memory_mask_equals_dropping_the_masked_tokens() -> None:
    tower = text_tower()
    input_ids, attention_mask, memory = batch()
    memory_mask = torch.ones(memory.shape[:2], dtype=torch.long)
    memory_mask[:, 5:] = 0
    with torch.no_grad():
        masked = tower(input_ids, attention_mask, encoder_hidden_states=memory, encoder_attention_mask=memory_mask)
        dropped = tower(input_ids, attention_mask, encoder_hidden_states=memory[:, :5])
        unmasked = tower(input_ids, attention_mask, encoder_hidden_states=memory)
    torch.testing.assert_close(masked.last_hidden_state, dropped.last_hidden_state, atol=1e-6, rtol=0)
    assert not torch.allclose(masked.last_hidden_state, unmasked.last_hidden_state, atol=1e-3)


def test_padding_does_not_change_real_tokens() -> None:
    tower = text_tower()
    input_ids, attention_mask, memory = batch()
    with torch.no_grad():
        padded = tower(input_ids, attention_mask, encoder_hidden_states=memory).last_hidden_state
        alone = tower(input_ids[2:, :3], attention_mask[2:, :3], encoder_hidden_states=memory[2:]).last_hidden_state
    torch.testing.assert_close(padded[2:, :3], alone, atol=1e-5, rtol=0)


def test_sdpa_and_eager_agree_and_attentions_are_returned() -> None:
    sdpa, eager = text_tower(implementation="sdpa"), text_tower(implementation="eager")
    input_ids, attention_mask, memory = batch()
    with torch.no_grad():
        a = sdpa(input_ids, attention_mask, encoder_hidden_states=memory, output_hidden_states=True)
        b = eager(input_ids, attention_mask, encoder_hidden_states=memory, output_attentions=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0)
    assert len(a.hidden_states) == 4 and a.attentions is None
    assert [w.shape for w in b.attentions] == [(3, HEADS, 9, 9)] * 3
    assert b.cross_attentions[0] is None and b.cross_attentions[1].shape == (3, HEADS, 9, 7)
    torch.testing.assert_close(b.attentions[0][2, :, :, 3:].sum(), torch.tensor(0.0))  # padded keys get no weight


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    input_ids, attention_mask, memory = batch()
    grads = []
    for checkpointing in (False, True):
        tower = text_tower().train()
        if checkpointing:
            for layer in tower.encoder.layers:
                layer.gradient_checkpointing = True
                layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        tower(input_ids, attention_mask, encoder_hidden_states=memory).last_hidden_state.square().mean().backward()
        grads.append([p.grad.clone() for p in tower.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed, atol=1e-6, rtol=1e-5)


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    block = PostNormBlock(options(dropout=0.5), config=attention_config(), cross_attention=True, kv_size=MEMORY_WIDTH)
    hidden, memory = torch.randn(2, 5, WIDTH), torch.randn(2, 4, MEMORY_WIDTH)
    block.eval()
    torch.testing.assert_close(block(hidden, None, memory)[0], block(hidden, None, memory)[0])
    block.train()
    assert not torch.allclose(block(hidden, None, memory)[0], block(hidden, None, memory)[0])


def test_no_token_types_when_type_vocab_size_is_zero() -> None:
    tower = BertStyleTextTransformer(
        options(), num_layers=1, fusion_layer=1, vocab_size=VOCAB, max_position_embeddings=POSITIONS, type_vocab_size=0
    )
    assert tower.embeddings.token_type_embeddings is None
    input_ids = torch.tensor([[2, 7, 8]])
    assert tower(input_ids, mode="text").last_hidden_state.shape == (1, 3, WIDTH)
    with pytest.raises(ValueError, match="no token-type embeddings"):
        tower(input_ids, token_type_ids=torch.zeros_like(input_ids), mode="text")


def test_errors_name_the_problem() -> None:
    tower = text_tower()
    input_ids, attention_mask, memory = batch()
    with pytest.raises(ValueError, match="mode must be one of"):
        tower(input_ids, mode="multi_modal")
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        tower(input_ids, attention_mask, mode="full")
    with pytest.raises(ValueError, match="takes inputs_embeds"):
        tower(input_ids, mode="fusion", encoder_hidden_states=memory)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tower(torch.zeros(1, POSITIONS + 1, dtype=torch.long), mode="text")
    with pytest.raises(ValueError, match="fusion_layer must be between"):
        BertStyleEncoder(options(), 2, fusion_layer=3)


def test_heads() -> None:
    torch.manual_seed(0)
    head = MaskedLMHead(WIDTH, VOCAB)
    hidden = torch.randn(2, 5, WIDTH)
    expected = head.decoder(head.norm(torch.nn.functional.gelu(head.dense(hidden))))
    torch.testing.assert_close(head(hidden), expected)
    assert head(hidden).shape == (2, 5, VOCAB)
    itm = ItmHead(WIDTH)
    assert isinstance(itm, torch.nn.Linear) and itm(hidden[:, 0]).shape == (2, 2)
    assert set(dict(itm.named_parameters())) == {"weight", "bias"}
