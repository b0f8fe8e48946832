"""Grad-CAM of ALBEF's ITM logit: shape, equality with a hook + autograd computation, a planted patch, rendering."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from hf_vlp.models.albef import VlpAlbefModel
from hf_vlp.models.albef.gradcam import itm_gradcam, render_gradcam
from tests.helpers.tiny_models import tiny_albef_config, tiny_batch

GRID = 4  # 32 px images, 8 px patches


def tiny_model(num_layers: int = 5, fusion_layer: int = 1, seed: int = 0) -> VlpAlbefModel:
    torch.manual_seed(seed)
    config = tiny_albef_config(
        vision=dict(image_size=32), text=dict(num_hidden_layers=num_layers, fusion_layer=fusion_layer), embed_dim=8
    )
    model = VlpAlbefModel(config).eval()
    model.set_attn_implementation("eager")
    return model


def tiny_inputs(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """32 px images; every caption but the first padded from column 4."""
    return tiny_batch(batch, seed, image_shape=(3, 32, 32), padded_rows=slice(1, None), padded_from=4)


def manual_gradcam(model: VlpAlbefModel, inputs: dict[str, torch.Tensor], fusion_index: int) -> torch.Tensor:
    """The original's recipe: capture the layer's cross-attention with a forward hook, backward the match logit."""
    captured = {}
    layer = model.text_model.transformer.encoder.layers[model.config.text_config.fusion_layer + fusion_index]

    def keep_attention(module, args, output):
        output[1].retain_grad()
        captured["attention"] = output[1]

    handle = layer.cross_attn.register_forward_hook(keep_attention)
    try:
        output = model(**inputs, output_itm=True)
    finally:
        handle.remove()
    output.itm_logits[:, 1].sum().backward()
    model.zero_grad()
    attention = captured["attention"].detach()
    gradient = captured["attention"].grad
    batch, heads, length, _ = attention.shape
    mask = inputs["attention_mask"].view(batch, 1, length, 1, 1).to(attention.dtype)
    cams = attention[:, :, :, 1:].reshape(batch, heads, length, GRID, GRID) * mask
    grads = gradient[:, :, :, 1:].clamp(min=0).reshape(batch, heads, length, GRID, GRID) * mask
    per_token = (cams * grads).mean(1)
    return per_token.sum(1) / inputs["attention_mask"].sum(1).view(batch, 1, 1).to(attention.dtype)


def test_heatmap_shape_non_negative_and_no_side_effects() -> None:
    model = tiny_model().train()
    model.requires_grad_(False)  # a frozen model still gets a map: the graph starts at the image tokens
    inputs = tiny_inputs()
    heatmap = itm_gradcam(model, **inputs)
    assert heatmap.shape == (3, GRID, GRID)
    assert (heatmap >= 0).all() and (heatmap.flatten(1).amax(1) > 0).all()
    assert model.training, "the caller's train/eval mode is restored"
    assert all(p.grad is None for p in model.parameters())


def test_heatmap_equals_hook_and_autograd_computation_exactly() -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    for fusion_index in (0, 2, 3):
        expected = manual_gradcam(model, inputs, fusion_index)
        assert torch.equal(itm_gradcam(model, **inputs, layer=fusion_index), expected), fusion_index


def test_default_layer_is_the_third_fusion_layer_or_the_last() -> None:
    inputs = tiny_inputs()
    four_fusion = tiny_model(num_layers=5, fusion_layer=1)
    assert torch.equal(itm_gradcam(four_fusion, **inputs), itm_gradcam(four_fusion, **inputs, layer=2))
    assert not torch.equal(itm_gradcam(four_fusion, **inputs), itm_gradcam(four_fusion, **inputs, layer=3))
    two_fusion = tiny_model(num_layers=3, fusion_layer=1)
    assert torch.equal(itm_gradcam(two_fusion, **inputs), itm_gradcam(two_fusion, **inputs, layer=1))
    with pytest.raises(ValueError, match="0 <= layer < 2"):
        itm_gradcam(two_fusion, **inputs, layer=2)


def test_padding_does_not_change_a_texts_map() -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    padded = itm_gradcam(model, **inputs)[1]
    alone = itm_gradcam(
        model,
        inputs["pixel_values"][1:2],
        inputs["input_ids"][1:2, :4],
        inputs["attention_mask"][1:2, :4],
    )[0]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-8)


def test_planted_patch_is_the_only_hot_patch() -> None:
    """Image tokens are zero except one patch, and so are its values: only that patch can move the ITM logit.

    Whether its gradient is positive depends on the random weights, so the map of the negated logit is added.
    """
    model = tiny_model(seed=1)
    vision = model.vision_model.transformer
    fusion_index = 2
    fusion_layers = model.text_model.transformer.encoder.layers[model.config.text_config.fusion_layer :]
    cross_attn = fusion_layers[fusion_index].cross_attn
    with torch.no_grad():
        for block in vision.encoder.layers:  # every ViT block becomes the identity
            for linear in (block.attn.out_proj, block.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
        for tensor in (vision.class_embedding, vision.position_embedding, vision.patch_embed.bias):
            tensor.zero_()
        vision.norm_post.bias.zero_()
        cross_attn.kv.bias.zero_()
    inputs = tiny_inputs(batch=2)
    pixel_values = torch.zeros(2, 3, 32, 32)
    planted = [(1, 3), (2, 0)]
    for b, (row, col) in enumerate(planted):
        pixel_values[b, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] = 5 * torch.randn(3, 8, 8)
    positive = itm_gradcam(model, pixel_values, inputs["input_ids"], inputs["attention_mask"], layer=fusion_index)
    with torch.no_grad():  # negating the match logit negates every gradient: the two maps sum to attention * |grad|
        model.itm_head.weight[1].neg_()
        model.itm_head.bias[1].neg_()
    negative = itm_gradcam(model, pixel_values, inputs["input_ids"], inputs["attention_mask"], layer=fusion_index)
    heatmap = positive + negative
    for b, (row, col) in enumerate(planted):
        assert divmod(int(heatmap[b].argmax()), GRID) == (row, col)
        assert heatmap[b, row, col] > 0
        others = heatmap[b].clone()
        others[row, col] = 0
        assert torch.equal(others, torch.zeros_like(others))


def test_bad_inputs_are_rejected_with_the_fix() -> None:
    model = tiny_model()
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="repeat the image"):
        itm_gradcam(model, inputs["pixel_values"][:1], inputs["input_ids"], inputs["attention_mask"])
    with pytest.raises(TypeError, match="VlpAlbefModel"):
        itm_gradcam(torch.nn.Linear(2, 2), **inputs)


def test_render_writes_a_png_of_the_image_size(tmp_path) -> None:
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    heatmap = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    path = render_gradcam(image, heatmap, tmp_path / "maps" / "overlay.png")
    with Image.open(path) as written:
        assert written.format == "PNG" and written.size == (40, 30)
        hot, cold = written.convert("RGB").getpixel((2, 2)), written.getpixel((37, 27))
    assert hot[0] > hot[2] and cold[2] > cold[0], (hot, cold)  # jet: high = red, low = blue
    with pytest.raises(ValueError, match="one map"):
        render_gradcam(image, torch.zeros(2, 2, 2), tmp_path / "bad.png")
