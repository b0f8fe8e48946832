"""AttentionalPooler (CoCa): N learned queries over LayerNorm-ed context tokens."""

import torch
from torch import nn

from hf_vlp.modules.pooling import AttentionalPooler


def _reference(pooler: AttentionalPooler, context: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionalPooler.forward`` with an ``nn.MultiheadAttention`` holding the pooler's weights."""
    hidden, width = pooler.query.shape[1], context.shape[-1]
    mha = nn.MultiheadAttention(hidden, pooler.attn.num_heads, kdim=width, vdim=width, batch_first=True)
    k_weight, v_weight = pooler.attn.kv.weight.chunk(2)
    with torch.no_grad():
        mha.q_proj_weight.copy_(pooler.attn.q.weight)
        mha.k_proj_weight.copy_(k_weight)
        mha.v_proj_weight.copy_(v_weight)
        mha.in_proj_bias.copy_(torch.cat([pooler.attn.q.bias, pooler.attn.kv.bias]))
        mha.out_proj.weight.copy_(pooler.attn.out_proj.weight)
        mha.out_proj.bias.copy_(pooler.attn.out_proj.bias)
    x = pooler.norm_context(context)
    q = pooler.norm_query(pooler.query)
    return mha(q.unsqueeze(0).expand(context.shape[0], -1, -1), x, x, need_weights=False)[0]


def test_shape_names_and_equivalence_with_open_clip() -> None:
    torch.manual_seed(0)
    pooler = AttentionalPooler(16, 24, num_heads=4, num_queries=5).eval()
    for parameter in pooler.parameters():
        nn.init.normal_(parameter, std=0.3)
    assert set(pooler.state_dict()) == {
        "query", "norm_query.weight", "norm_query.bias", "norm_context.weight", "norm_context.bias",
        "attn.q.weight", "attn.q.bias", "attn.kv.weight", "attn.kv.bias", "attn.out_proj.weight", "attn.out_proj.bias",
    }
    context = torch.randn(3, 7, 24)
    pooled = pooler(context)
    assert pooled.shape == (3, 5, 16)
    torch.testing.assert_close(pooled, _reference(pooler, context), atol=1e-5, rtol=1e-5)


def test_gradient_reaches_queries_and_context_and_mask_hides_tokens() -> None:
    torch.manual_seed(0)
    pooler = AttentionalPooler(16, 16, num_heads=2, num_queries=3)
    context = torch.randn(2, 6, 16, requires_grad=True)
    pooler(context).sum().backward()
    assert pooler.query.grad.abs().sum() > 0 and context.grad.abs().sum() > 0
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    changed = context.detach().clone()
    changed[0, 4:] = 100.0
    masked = pooler(context.detach(), keep)
    torch.testing.assert_close(pooler(changed, keep)[0], masked[0])
    torch.testing.assert_close(masked[:1], pooler(context.detach()[:1, :4]))
