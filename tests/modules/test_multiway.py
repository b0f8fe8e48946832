"""MultiwayBlock / MultiwayEncoder: shared attention, per-modality experts, routing, options."""

from functools import partial

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from hf_vlp.modules.multiway import MultiwayBlock, MultiwayEncoder
from hf_vlp.modules.transformer import BlockOptions, PreNormBlock, PreNormEncoder

OPTIONS = BlockOptions(hidden_size=16, num_heads=2, intermediate_size=32, activation="gelu", qkv_bias="qv")


def _multiway_like(block: PreNormBlock, **kwargs) -> MultiwayBlock:
    """A multiway block whose every expert copies ``block``'s MLP and norm2, its attention ``block``'s attention."""
    multiway = MultiwayBlock(OPTIONS, **kwargs)
    multiway.norm1.load_state_dict(block.norm1.state_dict())
    multiway.attn.load_state_dict(block.attn.state_dict())
    for name in multiway.mlp:
        multiway.mlp[name].load_state_dict(block.mlp.state_dict())
        multiway.norm2[name].load_state_dict(block.norm2.state_dict())
    if block.layer_scale1 is not None:
        multiway.layer_scale1.data.copy_(block.layer_scale1)
        multiway.layer_scale2.data.copy_(block.layer_scale2)
    return multiway


def _randomise(module: torch.nn.Module) -> None:
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.3)


def test_parameter_names() -> None:
    names = set(MultiwayBlock(OPTIONS).state_dict())
    assert {"norm1.weight", "attn.qkv.weight", "attn.q_bias", "attn.v_bias", "norm2.text.weight", "norm2.image.bias",
            "mlp.text.fc1.weight", "mlp.image.fc2.bias"} <= names
    assert not any(name.startswith(("mlp.vl", "norm2.vl", "layer_scale")) for name in names)
    full = set(MultiwayBlock(OPTIONS, with_vl_expert=True, layer_scale_init=0.1).state_dict())
    assert full - names == {"mlp.vl.fc1.weight", "mlp.vl.fc1.bias", "mlp.vl.fc2.weight", "mlp.vl.fc2.bias",
                            "norm2.vl.weight", "norm2.vl.bias", "layer_scale1", "layer_scale2"}


@pytest.mark.parametrize("layer_scale_init", [None, 0.5])
@pytest.mark.parametrize("modality", ["text", "image", "vl"])
def test_identical_experts_equal_a_pre_norm_block(modality: str, layer_scale_init: float | None) -> None:
    torch.manual_seed(0)
    block = PreNormBlock(OPTIONS, layer_scale_init=layer_scale_init).eval()
    _randomise(block)
    x = torch.randn(2, 7, 16)
    expected = block(x)[0]
    for with_vl in (False, True):
        multiway = _multiway_like(block, with_vl_expert=with_vl, layer_scale_init=layer_scale_init).eval()
        out = multiway(x, modality, split_position=3)[0]
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_routing_by_split_position_and_by_mask_agree_and_pick_experts() -> None:
    torch.manual_seed(0)
    multiway = MultiwayBlock(OPTIONS).eval()
    _randomise(multiway)
    x = torch.randn(2, 7, 16)
    split = multiway(x, "vl", split_position=3)[0]
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, 3:] = True
    by_mask = multiway(x, "vl", image_token_mask=mask)[0]
    torch.testing.assert_close(by_mask, split, atol=0, rtol=0)
    text_only = multiway(x, "text")[0]
    image_only = multiway(x, "image")[0]
    torch.testing.assert_close(split[:, :3], text_only[:, :3], atol=0, rtol=0)
    torch.testing.assert_close(split[:, 3:], image_only[:, 3:], atol=0, rtol=0)
    assert not torch.allclose(text_only, image_only)
    with pytest.raises(ValueError, match="split_position or image_token_mask"):
        multiway(x, "vl")
    with pytest.raises(ValueError, match="modality"):
        multiway(x, "audio")


def test_vl_expert_serves_fused_sequences() -> None:
    torch.manual_seed(0)
    multiway = MultiwayBlock(OPTIONS, with_vl_expert=True).eval()
    _randomise(multiway)
    x = torch.randn(2, 7, 16)
    fused = multiway(x, "vl", split_position=3)[0]
    hidden = x + multiway.attn(multiway.norm1(x))[0]
    torch.testing.assert_close(fused, hidden + multiway.mlp["vl"](multiway.norm2["vl"](hidden)))
    assert not torch.allclose(fused, multiway(x, "text")[0])


def test_masks_bias_drop_path_and_gradients() -> None:
    torch.manual_seed(0)
    multiway = MultiwayBlock(OPTIONS, drop_path_rate=0.5, layer_scale_init=0.1)
    x = torch.randn(8, 5, 16)
    keep = torch.ones(8, 5)
    keep[:, -1] = 0
    mask = torch.zeros(8, 1, 1, 5).masked_fill_(keep[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    multiway.eval()
    _, weights = multiway(x, "image", attention_mask=mask, position_bias=torch.randn(2, 5, 5), output_attentions=True)
    assert torch.all(weights[..., -1] == 0)
    torch.manual_seed(1)
    first = multiway.train()(x, "text")[0]
    torch.manual_seed(2)
    second = multiway(x, "text")[0]
    assert not torch.equal(first, second)
    first.sum().backward()
    assert multiway.layer_scale2.grad is not None and multiway.mlp["image"].fc1.weight.grad is None


def test_encoder_places_vl_experts_drop_path_and_per_layer_biases() -> None:
    torch.manual_seed(0)
    encoder = MultiwayEncoder(OPTIONS, 3, vl_expert_start=2, drop_path_rate=0.2).eval()
    assert [layer.has_vl_expert for layer in encoder.layers] == [False, False, True]
    assert isinstance(encoder.layers[0].drop_path, torch.nn.Identity)
    assert encoder.layers[2].drop_path.rate == pytest.approx(0.2)
    assert not any(layer.has_vl_expert for layer in MultiwayEncoder(OPTIONS, 2).layers)
    with pytest.raises(ValueError, match="vl_expert_start"):
        MultiwayEncoder(OPTIONS, 2, vl_expert_start=3)
    # with identical experts everywhere, a multiway stack is a pre-norm stack
    reference = PreNormEncoder(OPTIONS, 3).eval()
    _randomise(reference)
    stacked = MultiwayEncoder(OPTIONS, 3, vl_expert_start=1).eval()
    for block, multiway in zip(reference.layers, stacked.layers):
        multiway.load_state_dict(_multiway_like(block, with_vl_expert=multiway.has_vl_expert).state_dict())
    x = torch.randn(2, 6, 16)
    biases = [torch.randn(2, 6, 6) for _ in range(3)]
    expected = reference(x, position_bias=biases, output_hidden_states=True)
    out = stacked(x, "vl", position_bias=biases, split_position=2, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == 4 and len(out.attentions) == 3
    with pytest.raises(ValueError, match="per-layer position biases"):
        stacked(x, "text", position_bias=biases[:2])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:




    torch.manual_seed(0)
    encoder = MultiwayEncoder(OPTIONS, 2, vl_expert_start=1, layer_scale_init=0.5)
    x = torch.randn(2, 6, 16)
    biases = [torch.randn(2, 6, 6) for _ in range(2)]
    encoder(x, "vl", position_bias=biases, split_position=2).last_hidden_state.sum().backward()
    expected = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    encoder.zero_grad()
    for layer in encoder.layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    encoder(x, "vl", position_bias=biases, split_position=2).last_hidden_state.sum().backward()
    for name, grad in expected.items():
        torch.testing.assert_close(dict(encoder.named_parameters())[name].grad, grad, msg=name)
