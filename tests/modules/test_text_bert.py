"""BERT-style post-norm text/fusion encoder (parity with transformers' BertModel, modes, masks, kernels, errors) and
BLIP's MED built from the same layers (roles, shared weights, causal decoding with a cache)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig, BertModel, PretrainedConfig

from conversion.common import filter_prefix, map_state_dict
from conversion.convert_albef import albef_rules
from hf_vlp.modules.heads import ItmHead, MaskedLMHead
from hf_vlp.modules.attention import padding_mask
from hf_vlp.models.blip.modeling_blip_text import MedTextTransformer
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
    ours.load_state_dict(filter_prefix(mapped.tensors, "text_model.transformer."), strict=True)
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


# --------------------------------------------------------------------------------------------------- MED (BLIP)


def med_tower(roles=("encoder", "decoder"), implementation: str = "sdpa", num_layers: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    tower = MedTextTransformer(
        options(), num_layers=num_layers, vocab_size=VOCAB, max_position_embeddings=POSITIONS, kv_size=MEMORY_WIDTH,
        roles=roles, config=attention_config(implementation),
    ).eval()
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return tower


def bert_style_copy(med: MedTextTransformer, fusion_layer: int, self_attention: str = "attn") -> BertStyleTextTransformer:
    """A BertStyleTextTransformer holding the MED's weights, with ``self_attention`` as its (only) self-attention."""
    num_layers = len(med.encoder.layers)
    tower = BertStyleTextTransformer(
        options(), num_layers=num_layers, fusion_layer=fusion_layer, vocab_size=VOCAB, max_position_embeddings=POSITIONS,
        type_vocab_size=0, kv_size=MEMORY_WIDTH, config=attention_config(),
    ).eval()
    norm = {"attn": "norm1", "causal_attn": "norm_causal"}[self_attention]
    state = {}
    for key, value in med.state_dict().items():
        if ".attn." in key or ".norm1." in key or ".causal_attn." in key or ".norm_causal." in key:
            if f".{self_attention}." not in key and f".{norm}." not in key:
                continue
            key = key.replace(f".{self_attention}.", ".attn.").replace(f".{norm}.", ".norm1.")
        state[key] = value
    expected = tower.state_dict()
    tower.load_state_dict({key: value for key, value in state.items() if key in expected}, strict=True)
    return tower


def test_med_layers_hold_one_cross_attention_and_mlp_and_two_self_attentions() -> None:
    tower = med_tower()
    names = {name.split(".")[2] for name, _ in tower.encoder.named_parameters()}  # layers.<i>.<module>.<...>
    assert names == {"attn", "norm1", "causal_attn", "norm_causal", "cross_attn", "norm_cross", "mlp", "norm2"}
    layer = tower.encoder.layers[0]
    assert layer.attn is not layer.causal_attn and layer.attn.qkv.weight is not layer.causal_attn.qkv.weight
    decoder_only = med_tower(roles=("decoder",))
    assert not hasattr(decoder_only.encoder.layers[0], "attn") and hasattr(decoder_only.encoder.layers[0], "causal_attn")
    assert not hasattr(med_tower(roles=("encoder",)).encoder.layers[0], "causal_attn")


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_med_modes_equal_the_bert_style_passes_they_stand_for(implementation: str) -> None:
    med = med_tower(implementation=implementation)
    input_ids, attention_mask, memory = batch()
    memory_mask = torch.ones(memory.shape[:2], dtype=torch.long)
    memory_mask[0, 4:] = 0
    text_only = bert_style_copy(med, fusion_layer=2)  # no cross-attention at all
    fused = bert_style_copy(med, fusion_layer=0)
    causal = bert_style_copy(med, fusion_layer=0, self_attention="causal_attn")
    with torch.no_grad():
        text = med(input_ids, attention_mask, mode="text")
        multimodal = med(input_ids, attention_mask, memory, memory_mask, mode="multimodal")
        decoder = med(input_ids, attention_mask, memory, memory_mask, mode="decoder")
        hidden = causal.embeddings(input_ids)
        expected_decoder = causal.encoder(
            hidden, padding_mask(attention_mask, hidden.dtype), memory, padding_mask(memory_mask, hidden.dtype),
            is_causal=True,
        ).last_hidden_state
        torch.testing.assert_close(text.last_hidden_state, text_only(input_ids, attention_mask, mode="text").last_hidden_state)
        torch.testing.assert_close(
            multimodal.last_hidden_state,
            fused(input_ids, attention_mask, encoder_hidden_states=memory, encoder_attention_mask=memory_mask).last_hidden_state,
        )
        torch.testing.assert_close(decoder.last_hidden_state, expected_decoder)
    assert text.cross_attentions is None and decoder.cache is None
    assert not torch.allclose(multimodal.last_hidden_state, decoder.last_hidden_state, atol=1e-3)


def test_med_roles_train_only_their_own_self_attention() -> None:
    tower = med_tower().train()
    input_ids, attention_mask, memory = batch()
    used = {}
    for mode in ("text", "multimodal", "decoder"):
        tower.zero_grad()
        tower(input_ids, attention_mask, memory, mode=mode).last_hidden_state.square().mean().backward()
        layer = tower.encoder.layers[0]
        probes = {"attn": layer.attn.qkv, "causal_attn": layer.causal_attn.qkv, "cross_attn": layer.cross_attn.q,
                  "mlp": layer.mlp.fc1}
        used[mode] = {name for name, linear in probes.items() if linear.weight.grad is not None}
    assert used == {
        "text": {"attn", "mlp"}, "multimodal": {"attn", "cross_attn", "mlp"}, "decoder": {"causal_attn", "cross_attn", "mlp"}
    }


def test_med_decoder_is_causal_and_its_cache_reproduces_the_full_pass() -> None:
    tower = med_tower()
    input_ids, attention_mask, memory = batch()
    attention_mask = torch.ones_like(attention_mask)
    attention_mask[2, 7:] = 0  # right padding in one row
    with torch.no_grad():
        full = tower(input_ids, attention_mask, memory, mode="decoder").last_hidden_state
        changed = input_ids.clone()
        changed[:, 6:] = 5
        prefix = tower(changed, attention_mask, memory, mode="decoder").last_hidden_state
        torch.testing.assert_close(prefix[:, :6], full[:, :6])  # later tokens never reach earlier positions
        step = tower(input_ids[:, :4], attention_mask[:, :4], memory, mode="decoder", use_cache=True)
        pieces, cache = [step.last_hidden_state], step.cache
        for position in range(4, input_ids.shape[1]):
            step = tower(
                input_ids[:, position : position + 1], attention_mask[:, : position + 1], memory, mode="decoder",
                cache=cache, use_cache=True,
            )
            assert step.cache is cache and cache.get_seq_length() == position + 1
            pieces.append(step.last_hidden_state)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_med_errors_name_the_problem() -> None:
    input_ids, attention_mask, memory = batch()
    tower = med_tower(roles=("decoder",))
    with pytest.raises(ValueError, match="built with roles"):
        tower(input_ids, mode="text")
    with pytest.raises(ValueError, match="mode must be one of"):
        tower(input_ids, mode="fusion")
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        tower(input_ids, mode="decoder")
    encoder = med_tower(roles=("encoder",))
    with pytest.raises(ValueError, match="built with roles"):
        encoder(input_ids, encoder_hidden_states=memory, mode="decoder")
    with pytest.raises(ValueError, match="only mode 'decoder' takes a key/value cache"):
        encoder(input_ids, encoder_hidden_states=memory, mode="multimodal", use_cache=True)
    with pytest.raises(ValueError, match="cached \\+ new"):
        step = tower(input_ids[:, :3], encoder_hidden_states=memory, mode="decoder", use_cache=True)
        tower(input_ids[:, 3:4], attention_mask[:, 3:4], memory, mode="decoder", cache=step.cache)
    with pytest.raises(ValueError, match="roles must be"):
        med_tower(roles=("encoder", "encoder"))
    with pytest.raises(ValueError, match="roles must be"):
        med_tower(roles=("multimodal",))
    with pytest.raises(ValueError, match="needs a self-attention"):
        PostNormBlock(options(), self_attention=False)
    block = PostNormBlock(options(), self_attention=False, causal_self_attention=True)
    with pytest.raises(ValueError, match="only the causal"):
        block(torch.randn(1, 3, WIDTH))
    with pytest.raises(ValueError, match="no causal"):
        PostNormBlock(options())(torch.randn(1, 3, WIDTH), use_causal_self_attention=True)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_med_decoder_without_mask_stays_causal_when_asked_for_attentions(implementation: str) -> None:
    tower = med_tower(implementation=implementation)
    input_ids, _, memory = batch()
    plain = tower(input_ids, encoder_hidden_states=memory, mode="decoder")
    probed = tower(input_ids, encoder_hidden_states=memory, mode="decoder", output_attentions=True)
    torch.testing.assert_close(probed.last_hidden_state, plain.last_hidden_state, atol=1e-6, rtol=1e-5)
    assert len(probed.attentions) == len(tower.encoder.layers)
    assert all((weights.triu(1) == 0).all() for weights in probed.attentions)
    changed = input_ids.clone()
    changed[:, 5:] = 7  # a causal decoder's first positions cannot see the later tokens
    prefix = tower(changed, encoder_hidden_states=memory, mode="decoder", output_attentions=True).last_hidden_state
    torch.testing.assert_close(prefix[:, :5], plain.last_hidden_state[:, :5], atol=1e-6, rtol=1e-5)
