"""Patch sampling with a pixel mask (ViLT's ``visual_embed``) in VisionTransformer."""

import pytest
import torch
from torch.nn import functional as F

from hf_vlp.modules.transformer import BlockOptions
from hf_vlp.modules.vision import VisionTransformer, sample_patches

OPTIONS = BlockOptions(hidden_size=16, num_heads=2, intermediate_size=32, activation="gelu", layer_norm_eps=1e-6)


def _tower() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        OPTIONS, num_layers=1, image_size=32, patch_size=8, patch_bias=True, norm_pre=False, final_norm="all",
        position_interpolation="bilinear_align_corners",
    ).eval()


def _canvas() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images zero-padded top-left onto a 24x40 canvas: 24x40 (3x5 patches) and 16x24 (2x3 patches)."""
    torch.manual_seed(1)
    pixels = torch.zeros(2, 3, 24, 40)
    mask = torch.zeros(2, 24, 40, dtype=torch.long)
    pixels[0] = torch.rand(3, 24, 40) + 0.1
    mask[0] = 1
    pixels[1, :, :16, :24] = torch.rand(3, 16, 24) + 0.1
    mask[1, :16, :24] = 1
    return pixels, mask


def _vilt_reference(tower: VisionTransformer, pixels: torch.Tensor) -> dict:
    """Per image, the real tokens of dandelin/ViLT ``visual_embed`` (max_image_len=-1), keyed by (row, column)."""
    x = tower.patch_embed(pixels)
    x_mask = (pixels.sum(dim=1) != 0).float()[:, None, :, :]
    x_mask = F.interpolate(x_mask, size=(x.shape[2], x.shape[3])).long()
    x_h, x_w = x_mask[:, 0].sum(dim=1)[:, 0], x_mask[:, 0].sum(dim=2)[:, 0]
    batch, channels, height, width = x.shape
    spatial = tower.position_embedding[1:].T.reshape(1, channels, tower.grid_size, tower.grid_size)
    pos = torch.cat(
        [
            F.pad(F.interpolate(spatial, size=(int(h), int(w)), mode="bilinear", align_corners=True),
                  (0, width - int(w), 0, height - int(h)))
            for h, w in zip(x_h, x_w)
        ],
        dim=0,
    )
    tokens = (x + pos).flatten(2).transpose(1, 2)
    return {
        (b, r, c): tokens[b, r * width + c]
        for b in range(batch) for r in range(height) for c in range(width) if x_mask[b, 0, r, c]
    }


def test_embed_masked_matches_vilt_tokens_positions_and_mask() -> None:
    tower = _tower()
    pixels, mask = _canvas()
    with torch.no_grad():
        out = tower.embed_masked(pixels, mask)
        reference = _vilt_reference(tower, pixels)
    assert out.grid == (3, 5) and out.tokens.shape == (2, 16, 16) and out.patch_index.shape == (2, 15, 2)
    assert out.token_mask.sum(dim=1).tolist() == [16, 7]
    kept = {}
    for b in range(2):
        for slot in range(15):
            if out.token_mask[b, slot + 1]:
                row, column = out.patch_index[b, slot].tolist()
                kept[(b, row, column)] = out.tokens[b, slot + 1]
    assert kept.keys() == reference.keys()
    for key, value in kept.items():
        torch.testing.assert_close(value, reference[key], atol=1e-6, rtol=1e-6)
    expected_cls = tower.class_embedding + tower.position_embedding[0]
    torch.testing.assert_close(out.tokens[:, 0], expected_cls.expand(2, -1).detach())
    padding_slots = out.token_mask[1, 1:] == 0
    assert padding_slots.sum() == 9
    # a padding slot holds an invalid cell: the projection of zeros (the conv bias), no position
    for row, column in out.patch_index[1][padding_slots].tolist():
        assert row >= 2 or column >= 3
    torch.testing.assert_close(out.tokens[1, 1:][padding_slots], tower.patch_embed.bias.detach().expand(9, -1))


def test_row_major_without_shuffle_and_deterministic_with_a_generator() -> None:
    tower = _tower()
    pixels, mask = _canvas()
    with torch.no_grad():
        ordered = tower.embed_masked(pixels, mask, shuffle=False)
        first = tower.embed_masked(pixels, mask, generator=torch.Generator().manual_seed(3))
        again = tower.embed_masked(pixels, mask, generator=torch.Generator().manual_seed(3))
    cells = ordered.patch_index[..., 0] * 5 + ordered.patch_index[..., 1]
    assert cells[0].tolist() == list(range(15))
    assert cells[1, :6].tolist() == [0, 1, 2, 5, 6, 7]
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.patch_index, again.patch_index)
    assert sorted((first.patch_index[0, :, 0] * 5 + first.patch_index[0, :, 1]).tolist()) == list(range(15))


@pytest.mark.parametrize("shuffle", [True, False])
def test_sample_patches_keeps_at_most_n_valid_patches(shuffle: bool) -> None:
    valid = torch.zeros(3, 20, dtype=torch.bool)
    valid[0, :20] = True
    valid[1, [1, 4, 9, 10, 15]] = True
    valid[2, :12] = True
    generator = torch.Generator().manual_seed(0)
    cells, keep = sample_patches(valid, 8, generator=generator, shuffle=shuffle)
    assert cells.shape == keep.shape == (3, 8)
    assert keep.sum(dim=1).tolist() == [8, 5, 8]
    assert valid.gather(1, cells)[keep].all()  # every kept slot is a valid cell
    assert not valid.gather(1, cells)[~keep].any()  # padding slots point at invalid cells
    for row in range(3):
        chosen = cells[row][keep[row]].tolist()
        assert len(set(chosen)) == len(chosen)
    assert cells[1, :5].tolist() == [1, 4, 9, 10, 15]  # all of an image with fewer, row-major
    if not shuffle:
        assert cells[0].tolist() == sorted(cells[0].tolist())
    again, _ = sample_patches(valid, 8, generator=torch.Generator().manual_seed(0), shuffle=shuffle)
    assert torch.equal(again, cells)
    other, _ = sample_patches(valid, 8, generator=torch.Generator().manual_seed(1), shuffle=shuffle)
    assert not torch.equal(other[0], cells[0])
    every, every_keep = sample_patches(valid, None, shuffle=False)
    assert every.shape == (3, 20) and every_keep.sum(dim=1).tolist() == [20, 5, 12]


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least one valid patch"):
        sample_patches(torch.zeros(1, 4, dtype=torch.bool))
    tower = _tower()
    with pytest.raises(ValueError, match="must agree"):
        tower.embed_masked(torch.zeros(1, 3, 16, 16), torch.ones(1, 8, 8))
