"""MultimodalDecoder (CoCa): causal self-attention block then cross-attention block per layer, over image tokens."""

import torch
from transformers import DynamicCache

from hf_vlp.modules.attention import AttentionMemory
from hf_vlp.modules.decoder import MultimodalDecoder
from hf_vlp.modules.transformer import BlockOptions

OPTIONS = BlockOptions(hidden_size=16, num_heads=2, intermediate_size=32, activation="gelu")


def _decoder() -> MultimodalDecoder:
    torch.manual_seed(0)
    return MultimodalDecoder(OPTIONS, 2, memory_size=12, first_cache_layer=3).eval()


def test_layers_are_causal_and_read_the_memory_through_its_own_norm() -> None:
    decoder, text, memory = _decoder(), torch.randn(2, 5, 16), torch.randn(2, 4, 12)
    out = decoder(text, memory, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 5, 16) and len(out.hidden_states) == 3
    assert out.attentions[0].shape == (2, 2, 5, 5) and out.cross_attentions[0].shape == (2, 2, 5, 4)
    assert (out.attentions[0].triu(1) == 0).all()
    later = text.clone()
    later[:, 3:] += 1.0
    torch.testing.assert_close(decoder(later, memory).last_hidden_state[:, :3], out.last_hidden_state[:, :3])
    with torch.no_grad():
        decoder.layers[0].cross_attention_block.norm_kv.bias.add_(0.5)
    assert not torch.allclose(decoder(text, memory).last_hidden_state, out.last_hidden_state)
    assert [layer.self_attention_block.attn.layer_idx for layer in decoder.layers] == [3, 4]


def test_cached_steps_over_a_shared_memory_equal_the_full_pass() -> None:
    decoder, text, memory = _decoder(), torch.randn(4, 5, 16), torch.randn(2, 4, 12)
    full = decoder(text, memory.repeat_interleave(2, dim=0)).last_hidden_state
    shared, cache = AttentionMemory(memory), DynamicCache()
    steps = [decoder(text[:, i : i + 1], shared, cache=cache).last_hidden_state for i in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert cache.get_seq_length(3) == 5
