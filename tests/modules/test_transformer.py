"""PreNormBlock / PreNormEncoder options: stochastic depth, layer scale, relative-position bias."""


import pytest
import torch

from hf_vlp.modules.relative_position import RelativePositionBias, num_relative_distances, relative_position_index
from hf_vlp.modules.transformer import BlockOptions, DropPath, PreNormBlock, PreNormEncoder, drop_path_rates

OPTIONS = BlockOptions(hidden_size=16, num_heads=2, intermediate_size=32, activation="gelu", hidden_dropout=0.0)


def _copy(source: torch.nn.Module, target: torch.nn.Module) -> None:
    missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected


def test_defaults_add_no_parameters() -> None:
    block = PreNormBlock(OPTIONS)
    assert sorted(name for name, _ in block.named_parameters() if "layer_scale" in name) == []
    assert isinstance(block.drop_path, torch.nn.Identity)
    scaled_block = PreNormBlock(OPTIONS, layer_scale_init=0.1, drop_path_rate=0.2)
    extra = set(scaled_block.state_dict()) - set(block.state_dict())
    assert extra == {"layer_scale1", "layer_scale2"}
    assert torch.equal(scaled_block.layer_scale1, torch.full((16,), 0.1))
    assert isinstance(scaled_block.drop_path, DropPath) and scaled_block.drop_path.rate == 0.2


def test_layer_scale_one_equals_plain_block_and_scales_branches() -> None:
    torch.manual_seed(0)
    plain = PreNormBlock(OPTIONS).eval()
    ones = PreNormBlock(OPTIONS, layer_scale_init=1.0).eval()
    zeros = PreNormBlock(OPTIONS, layer_scale_init=0.0).eval()
    _copy(plain, ones)
    _copy(plain, zeros)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ones(x)[0], plain(x)[0], atol=0, rtol=0)
    assert torch.equal(zeros(x)[0], x)  # both residual branches scaled away


def test_drop_path_is_identity_in_eval_and_drops_samples_in_training() -> None:
    torch.manual_seed(0)
    plain = PreNormBlock(OPTIONS)
    dropping = PreNormBlock(OPTIONS, drop_path_rate=0.5)
    _copy(plain, dropping)
    x = torch.randn(64, 4, 16)
    torch.testing.assert_close(dropping.eval()(x)[0], plain.eval()(x)[0], atol=0, rtol=0)
    torch.manual_seed(1)
    trained = dropping.train()(x)[0]
    attn_branch = plain.attn(plain.norm1(x))[0]
    # a sample whose two branches were both dropped comes out unchanged
    unchanged = (trained == x).flatten(1).all(dim=1)
    assert 0 < int(unchanged.sum()) < 64
    assert attn_branch.abs().sum() > 0


def test_encoder_drop_path_schedule() -> None:
    encoder = PreNormEncoder(OPTIONS, 3, drop_path_rate=0.2)
    assert isinstance(encoder.layers[0].drop_path, torch.nn.Identity)
    assert [layer.drop_path.rate for layer in encoder.layers[1:]] == pytest.approx(drop_path_rates(0.2, 3)[1:])


def test_zero_position_bias_equals_no_bias_and_bias_reaches_every_layer() -> None:
    torch.manual_seed(0)
    encoder = PreNormEncoder(OPTIONS, 2).eval()
    x = torch.randn(2, 5, 16)
    plain = encoder(x).last_hidden_state
    torch.testing.assert_close(encoder(x, position_bias=torch.zeros(2, 5, 5)).last_hidden_state, plain)
    bias = torch.randn(2, 5, 5)
    shared = encoder(x, position_bias=bias).last_hidden_state
    per_layer = encoder(x, position_bias=[bias, bias]).last_hidden_state
    torch.testing.assert_close(per_layer, shared, atol=0, rtol=0)
    assert not torch.allclose(shared, plain)
    only_first = encoder(x, position_bias=[bias, torch.zeros_like(bias)]).last_hidden_state
    assert not torch.allclose(only_first, shared) and not torch.allclose(only_first, plain)
    with pytest.raises(ValueError, match="per-layer position biases"):
        encoder(x, position_bias=[bias])


def test_position_bias_is_added_to_the_scores() -> None:
    torch.manual_seed(0)
    block = PreNormBlock(OPTIONS).eval()
    x = torch.randn(2, 4, 16)
    bias = torch.randn(2, 4, 4)
    _, weights = block(x, output_attentions=True, position_bias=bias)
    query, key, _ = block.attn._project(block.norm1(x), None)
    expected = ((query @ key.transpose(-1, -2)) * block.attn.scale + bias).softmax(-1)
    torch.testing.assert_close(weights, expected)


def _beit_index(window: tuple[int, int]) -> torch.Tensor:
    """BEiT's ``relative_position_index`` as its ``Attention.__init__`` computes it."""
    num_relative_distance = (2 * window[0] - 1) * (2 * window[1] - 1) + 3
    coords = torch.stack(torch.meshgrid([torch.arange(window[0]), torch.arange(window[1])], indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = (coords_flatten[:, :, None] - coords_flatten[:, None, :]).permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += window[0] - 1
    relative_coords[:, :, 1] += window[1] - 1
    relative_coords[:, :, 0] *= 2 * window[1] - 1
    index = torch.zeros(size=(window[0] * window[1] + 1,) * 2, dtype=relative_coords.dtype)
    index[1:, 1:] = relative_coords.sum(-1)
    index[0, 0:] = num_relative_distance - 3
    index[0:, 0] = num_relative_distance - 2
    index[0, 0] = num_relative_distance - 1
    return index


@pytest.mark.parametrize("grid", [(3, 3), (2, 4), (1, 1)])
def test_relative_position_index_matches_beit(grid: tuple[int, int]) -> None:
    assert torch.equal(relative_position_index(grid), _beit_index(grid))
    assert num_relative_distances(grid) == int(_beit_index(grid).max()) + 1


def test_relative_position_bias_module_shapes_and_layers() -> None:
    shared = RelativePositionBias((2, 3), num_heads=4)
    assert shared.table.shape == (num_relative_distances((2, 3)), 4) and not shared.table.any()
    assert "index" not in shared.state_dict()
    torch.nn.init.normal_(shared.table)
    bias = shared()
    assert bias.shape == (4, 7, 7)
    index = relative_position_index((2, 3))
    assert torch.equal(bias[1, 2, 5], shared.table[index[2, 5], 1])
    per_layer = RelativePositionBias((2, 3), num_heads=4, num_layers=3)
    torch.nn.init.normal_(per_layer.table)
    biases = per_layer()
    assert len(biases) == 3 and all(b.shape == (4, 7, 7) for b in biases)
    assert torch.equal(biases[2][1], per_layer.table[index.flatten(), 9].view(7, 7))
    encoder = PreNormEncoder(BlockOptions(hidden_size=16, num_heads=4, intermediate_size=32), 3)
    out = encoder(torch.randn(2, 7, 16), position_bias=biases).last_hidden_state
    out.sum().backward()
    assert per_layer.table.grad is not None and per_layer.table.grad.abs().sum() > 0
