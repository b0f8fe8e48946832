import pytest
import torch
from torch.nn import functional as F
from transformers import DynamicCache, PretrainedConfig

from hf_vlp.modules.attention import Attention, causal_mask, padding_mask


class _Impl(PretrainedConfig):
    model_type = "hf_vlp_test_attention"


def _config(impl: str) -> PretrainedConfig:
    config = _Impl()
    config._attn_implementation = impl
    return config


def _pair(**kwargs):
    """The same attention module under the eager and the SDPA kernel (shared weights)."""
    torch.manual_seed(0)
    eager = Attention(32, 4, config=_config("eager"), **kwargs)
    sdpa = Attention(32, 4, config=_config("sdpa"), **kwargs)
    sdpa.load_state_dict(eager.state_dict())
    for module in (eager, sdpa):
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                torch.nn.init.normal_(p)
    sdpa.load_state_dict(eager.state_dict())
    return eager.eval(), sdpa.eval()


def _reference(module: Attention, x, kv=None, mask=None):
    """Textbook multi-head attention from the module's own weights."""
    heads, dim = module.num_heads, module.head_dim
    if module.cross_attention:
        wq = module.q.weight
        wk, wv = module.kv.weight.chunk(2)
        bq = module.q_bias if module.qkv_bias_mode == "qv" else module.q.bias
        bk = None if module.qkv_bias_mode != "all" else module.kv.bias.chunk(2)[0]
        bv = module.v_bias if module.qkv_bias_mode == "qv" else (module.kv.bias.chunk(2)[1] if module.kv.bias is not None else None)
        src = kv
    else:
        wq, wk, wv = module.qkv.weight.chunk(3)
        if module.qkv_bias_mode == "qv":
            bq, bk, bv = module.q_bias, None, module.v_bias
        elif module.qkv.bias is not None:
            bq, bk, bv = module.qkv.bias.chunk(3)
        else:
            bq = bk = bv = None
        src = x
    q = F.linear(x, wq, bq).view(x.shape[0], -1, heads, dim).transpose(1, 2)
    k = F.linear(src, wk, bk).view(x.shape[0], -1, heads, dim).transpose(1, 2)
    v = F.linear(src, wv, bv).view(x.shape[0], -1, heads, dim).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / dim**0.5
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], -1, heads * dim)
    return module.out_proj(out)


@pytest.mark.parametrize("qkv_bias", ["all", "qv", "none"])
def test_self_attention_matches_reference_and_kernels_agree(qkv_bias):
    eager, sdpa = _pair(qkv_bias=qkv_bias)
    x = torch.randn(2, 7, 32)
    keep = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    mask = padding_mask(keep, x.dtype)
    expected = _reference(eager, x, mask=mask)
    for module in (eager, sdpa):
        out, _ = module(x, attention_mask=mask)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_qv_bias_has_no_key_bias_parameter():
    module = Attention(16, 2, qkv_bias="qv")
    names = {name for name, _ in module.named_parameters()}
    assert names == {"qkv.weight", "q_bias", "v_bias", "out_proj.weight", "out_proj.bias"}


@pytest.mark.parametrize("qkv_bias", ["all", "qv"])
def test_cross_attention_with_other_key_width(qkv_bias):
    torch.manual_seed(0)
    eager, sdpa = (Attention(32, 4, config=_config(i), cross_attention=True, kv_size=24, qkv_bias=qkv_bias) for i in ("eager", "sdpa"))
    sdpa.load_state_dict(eager.state_dict())
    x, kv = torch.randn(3, 5, 32), torch.randn(3, 9, 24)
    expected = _reference(eager, x, kv)
    for module in (eager, sdpa):
        out, _ = module(x, kv)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_causal_and_position_bias_agree_across_kernels():
    eager, sdpa = _pair()
    x = torch.randn(2, 6, 32)
    bias = torch.randn(1, 4, 6, 6)
    expected = _reference(eager, x, mask=causal_mask(6, 6, x.dtype, x.device) + bias)
    for module in (eager, sdpa):
        out, _ = module(x, is_causal=True, position_bias=bias)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        out_plain, _ = module(x, is_causal=True)
        torch.testing.assert_close(out_plain, _reference(eager, x, mask=causal_mask(6, 6, x.dtype, x.device)), atol=1e-5, rtol=1e-5)


def test_output_attentions_returns_probabilities_even_under_sdpa():
    _, sdpa = _pair()
    out, weights = sdpa(torch.randn(2, 5, 32), output_attentions=True)
    assert weights.shape == (2, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_kv_cache_incremental_decoding_equals_full_causal_pass(impl):
    torch.manual_seed(0)
    module = Attention(32, 4, config=_config(impl), layer_idx=0).eval()
    x = torch.randn(2, 6, 32)
    full, _ = module(x, is_causal=True)
    cache = DynamicCache()
    prefix, _ = module(x[:, :3], is_causal=True, cache=cache)
    steps = [prefix]
    for t in range(3, 6):
        out, _ = module(x[:, t : t + 1], is_causal=True, cache=cache)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_causal_mask_offset_for_cached_keys():
    mask = causal_mask(2, 5, torch.float32, torch.device("cpu"))[0, 0]
    assert (mask[0, :4] == 0).all() and mask[0, 4] < -1e30
    assert (mask[1] == 0).all()


def test_constructor_errors_name_the_problem():
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, 4)
    with pytest.raises(ValueError, match="qkv_bias"):
        Attention(32, 4, qkv_bias="k")
    with pytest.raises(ValueError, match="kv_size"):
        Attention(32, 4, kv_size=16)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        Attention(32, 4, cross_attention=True)(torch.randn(1, 2, 32))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("extra", ["nothing", "padding mask", "position bias"])
def test_asking_for_attentions_never_changes_a_causal_output(impl, extra):
    eager, sdpa = _pair()
    module = {"eager": eager, "sdpa": sdpa}[impl]
    x = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3))
    kwargs, mask = {}, causal_mask(6, 6, x.dtype, x.device)
    if extra == "padding mask":
        kwargs["attention_mask"] = padding_mask(torch.tensor([[1] * 6, [1] * 4 + [0] * 2]), x.dtype)
        mask = mask + kwargs["attention_mask"]
    elif extra == "position bias":
        kwargs["position_bias"] = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(4))
        mask = mask + kwargs["position_bias"]
    plain, _ = module(x, is_causal=True, **kwargs)
    probed, weights = module(x, is_causal=True, output_attentions=True, **kwargs)
    torch.testing.assert_close(probed, plain, atol=1e-6, rtol=1e-5)  # the kernels differ by float32 rounding only
    torch.testing.assert_close(plain, _reference(eager, x, mask=mask), atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 4, 6, 6) and (weights.triu(1) == 0).all()  # no query sees a later key
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6))
