"""CausalTextTransformer: CLIP's end-of-text pooling, optional padding mask, CoCa's appended class token."""

import pytest
import torch
from torch.nn import functional as F
from transformers import PretrainedConfig

from hf_vlp.modules.text import CausalTextTransformer, cls_row_mask
from hf_vlp.modules.transformer import BlockOptions

OPTIONS = BlockOptions(hidden_size=16, num_heads=2, intermediate_size=32, activation="gelu")
EOS, PAD = 9, 0


def _tower(**kwargs) -> CausalTextTransformer:
    torch.manual_seed(0)
    tower = CausalTextTransformer(OPTIONS, num_layers=2, vocab_size=10, context_length=8, eos_token_id=EOS, **kwargs)
    return tower.eval()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[8, 3, 4, EOS, PAD, PAD, PAD], [8, 5, 6, 7, 2, 1, EOS]])
    return ids, (ids != PAD).long()


def test_clip_path_ignores_the_mask_unless_asked() -> None:
    ids, mask = _ids()
    tower = _tower()
    plain = tower(ids)
    torch.testing.assert_close(tower(ids, mask).last_hidden_state, plain.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(plain.pooler_output, plain.last_hidden_state[[0, 1], [3, 6]], atol=0, rtol=0)
    masked = _tower(use_padding_mask=True)(ids, mask)
    torch.testing.assert_close(masked.pooler_output, plain.pooler_output)  # pads follow the end-of-text token
    assert not torch.allclose(masked.last_hidden_state[0, 4:], plain.last_hidden_state[0, 4:])


def test_cls_tower_pools_the_appended_token_after_the_final_norm() -> None:
    ids, mask = _ids()
    tower = _tower(embed_cls=True, cls_mask_alignment="aligned")
    assert tower.position_embedding.shape == (9, 16) and tower.cls_embedding.shape == (16,)
    out = tower(ids, mask, output_hidden_states=True)
    last = out.hidden_states[-1]
    assert last.shape == (2, 8, 16) and out.last_hidden_state.shape == (2, 7, 16)
    torch.testing.assert_close(out.pooler_output, tower.norm_final(last[:, -1]), atol=0, rtol=0)
    torch.testing.assert_close(out.last_hidden_state, last[:, :-1], atol=0, rtol=0)  # text tokens without norm_final
    with torch.no_grad():
        tower.cls_embedding.add_(1.0)
    changed = tower(ids, mask)
    torch.testing.assert_close(changed.last_hidden_state, out.last_hidden_state, atol=0, rtol=0)  # causal over cls
    assert not torch.allclose(changed.pooler_output, out.pooler_output)
    torch.testing.assert_close(tower(ids).pooler_output, changed.pooler_output)  # mask from pad_token_id


def test_cls_padding_mask_hides_pads_from_the_class_token() -> None:
    ids, mask = _ids()
    aligned = _tower(embed_cls=True, cls_mask_alignment="aligned")
    shifted = _tower(embed_cls=True)
    other = ids.clone()
    other[0, 4:] = torch.tensor([5, 6, 7])
    torch.testing.assert_close(aligned(other, mask).pooler_output, aligned(ids, mask).pooler_output)
    # open_clip's shifted alignment shows the class token the first pad slot, hides the later ones
    later = ids.clone()
    later[0, 5:] = torch.tensor([6, 7])
    torch.testing.assert_close(shifted(later, mask).pooler_output, shifted(ids, mask).pooler_output)
    assert not torch.allclose(shifted(other, mask).pooler_output[0], shifted(ids, mask).pooler_output[0])
    unmasked = _tower(embed_cls=True, pad_token_id=None)
    with pytest.raises(ValueError, match="attention_mask"):
        unmasked(ids)


def _open_clip_cls_mask(text: torch.Tensor, pad_id: int) -> torch.Tensor:
    """open_clip 2.x ``TextTransformer.build_cls_mask`` (before its per-head repeat)."""
    cls_mask = (text != pad_id).unsqueeze(1)
    cls_mask = F.pad(cls_mask, (1, 0, cls_mask.shape[2], 0), value=True)
    additive = torch.zeros(cls_mask.shape, dtype=torch.float32)
    additive.masked_fill_(~cls_mask, float("-inf"))
    return additive


def test_shifted_cls_mask_matches_open_clip() -> None:
    ids, mask = _ids()
    ours = cls_row_mask(mask, "shifted", torch.float32)[:, 0]
    reference = _open_clip_cls_mask(ids, PAD)
    assert torch.equal(ours == 0, reference == 0)
    aligned = cls_row_mask(mask, "aligned", torch.float32)[:, 0]
    assert torch.equal(aligned[0, -1] == 0, torch.tensor([1, 1, 1, 1, 0, 0, 0, 1]).bool())
    assert (aligned[:, :-1] == 0).all()  # only the class token's row is masked


def _implementation(name: str) -> PretrainedConfig:
    config = PretrainedConfig()
    config._attn_implementation = name
    return config


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("embed_cls", [False, True])
def test_asking_for_attentions_changes_no_output(implementation: str, embed_cls: bool) -> None:
    ids, _ = _ids()
    tower = _tower(config=_implementation(implementation), embed_cls=embed_cls, pad_token_id=PAD)
    plain = tower(ids)
    probed = tower(ids, output_attentions=True)
    assert plain.attentions is None and len(probed.attentions) == 2
    torch.testing.assert_close(probed.last_hidden_state, plain.last_hidden_state, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probed.pooler_output, plain.pooler_output, atol=1e-6, rtol=1e-5)
    for weights in probed.attentions:  # causal: zero above the diagonal
        assert (weights.triu(1) == 0).all() and weights.shape[-1] == ids.shape[1] + embed_cls


def _open_clip_3_mask(text: torch.Tensor, pad_id: int) -> torch.Tensor:
    """open_clip 3.x ``TextTransformer``'s mask with a class token: causal, plus the shifted pad mask on every row."""
    length = text.shape[1] + 1
    causal = torch.full((length, length), float("-inf")).triu(1)
    keep = F.pad(text != pad_id, (1, 0), value=True)
    pad = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    return causal[None] + pad[:, None, :]


def test_every_row_pad_mask_matches_open_clip_3() -> None:
    ids, mask = _ids()
    ours = cls_row_mask(mask, "shifted", torch.float32, rows="all")[:, 0]
    causal = torch.full((8, 8), torch.finfo(torch.float32).min).triu(1)
    assert torch.equal((ours + causal) > -1e30, _open_clip_3_mask(ids, PAD) > -1e30)
    with pytest.raises(ValueError, match="rows"):
        cls_row_mask(mask, "shifted", torch.float32, rows="some")


def test_every_row_mask_changes_only_the_rows_after_a_pad() -> None:
    ids, mask = _ids()
    cls_only, every_row = _tower(embed_cls=True), _tower(embed_cls=True, cls_mask_rows="all")
    a, b = cls_only(ids, mask), every_row(ids, mask)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=0, rtol=0)
    torch.testing.assert_close(a.last_hidden_state[0, :5], b.last_hidden_state[0, :5], atol=0, rtol=0)
    assert not torch.allclose(a.last_hidden_state[0, 5:], b.last_hidden_state[0, 5:])  # pad rows see fewer keys


@pytest.mark.parametrize("rows", ["cls", "all"])
def test_token_states_incrementally_with_a_cache_equal_the_full_pass(rows: str) -> None:
    from transformers import DynamicCache

    ids, mask = _ids()
    tower = _tower(embed_cls=True, cls_mask_rows=rows)
    full = tower(ids[1:]).last_hidden_state
    torch.testing.assert_close(tower.token_states(ids[1:]).last_hidden_state, full, atol=1e-6, rtol=0)
    cache, steps = DynamicCache(), []
    for position in range(ids.shape[1]):
        steps.append(tower.token_states(ids[1:, position : position + 1], cache=cache).last_hidden_state)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    # a padded row: the keep mask over cached + new positions hides what forward hides
    padded = tower.token_states(ids[:1], attention_mask=mask[:1]).last_hidden_state
    torch.testing.assert_close(padded[:, :5], tower(ids[:1]).last_hidden_state[:, :5], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="context length"):
        tower.token_states(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="embed_cls"):
        _tower().token_states(ids)
