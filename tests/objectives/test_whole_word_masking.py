"""Whole-word masking: budgets, whole words, the padded-collator quirk, the 80/10/10 split and seeding."""

from __future__ import annotations

import math

import pytest
import torch

from hf_vlp.objectives.mlm import whole_word_mask_tokens, word_starts_from_tokens

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = (CLS, SEP, PAD)


def _mask(ids, starts, seed=0, **kwargs):
    options = dict(vocab_size=1000, mask_token_id=MASK, special_token_ids=SPECIALS, pad_token_id=PAD)
    options.update(kwargs)
    return whole_word_mask_tokens(ids, starts, generator=torch.Generator().manual_seed(seed), **options)


def _caption(pieces: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] pieces [SEP]`` padded to ``length``; piece ids start at 10."""
    tokens = ["[CLS]", *pieces, "[SEP]"] + ["[PAD]"] * (length - len(pieces) - 2)
    ids = [CLS] + [10 + i for i in range(len(pieces))] + [SEP] + [PAD] * (length - len(pieces) - 2)
    return torch.tensor([ids]), word_starts_from_tokens([tokens])


def test_word_starts_from_tokens() -> None:
    starts = word_starts_from_tokens(
        [["[CLS]", "play", "##ing", "##s", "cat", "[SEP]"], ["a", "##b", "c", "d", "e", "f"]]
    )
    assert starts.dtype == torch.bool
    assert starts.tolist() == [[True, True, False, False, True, True], [True, False, True, True, True, True]]


def test_hand_checkable_budget_and_whole_words() -> None:
    # Words A = positions 1-3 (3 pieces), B = 4, C = 5-6; 8 real tokens, p = 0.5 -> budget 4.
    # Greedy over the 6 word orders covers {A, B} (4 tokens) or {B, C} (3 tokens; A would overflow), 3 orders each.
    ids, starts = _caption(["a", "##b", "##c", "d", "e", "##f"], length=10)
    seen = set()
    for seed in range(200):
        masked, labels = _mask(ids, starts, seed=seed, mlm_probability=0.5)
        positions = tuple((labels[0] != -100).nonzero().flatten().tolist())
        assert positions in {(1, 2, 3, 4), (4, 5, 6)}, positions
        seen.add(positions)
        picked = labels[0] != -100
        assert torch.equal(labels[0][picked], ids[0][picked])
        assert torch.equal(masked[0][~picked], ids[0][~picked])  # specials, pads and unpicked tokens untouched
    assert seen == {(1, 2, 3, 4), (4, 5, 6)}


def test_words_never_split_and_specials_never_masked_on_random_batches() -> None:
    generator = torch.Generator().manual_seed(1)
    batch, length = 64, 40
    ids = torch.randint(10, 1000, (batch, length), generator=generator)
    starts = torch.rand(batch, length, generator=generator) < 0.6
    real = torch.randint(3, length + 1, (batch,), generator=generator)
    for row, n in enumerate(real.tolist()):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = CLS, SEP, PAD
    for flag in (False, True):
        _, labels = _mask(ids, starts, seed=2, mlm_probability=0.3, count_padding_as_words=flag)
        picked = labels != -100
        assert not picked[(ids == CLS) | (ids == SEP) | (ids == PAD)].any()
        for row in range(batch):
            word = torch.cumsum(starts[row].long(), 0)  # tokens in the same word share an id (all real pieces)
            inner = (ids[row] != CLS) & (ids[row] != SEP) & (ids[row] != PAD)
            for w in word[inner & picked[row]].unique():
                assert picked[row][inner & (word == w)].all(), (flag, row)
            if not flag:  # budget from real tokens only; a single word may not fill it but never exceeds it
                assert picked[row].sum() <= max(1, round(0.3 * int(real[row])))


def test_padding_quirk_masks_fewer_tokens_on_short_captions() -> None:
    # A 7-word caption (single-piece words) padded to 40: 9 real tokens.
    ids, starts = _caption([f"w{i}" for i in range(7)], length=40)
    draws = 2000
    ids, starts = ids.expand(draws, -1), starts.expand(draws, -1)

    _, labels = _mask(ids, starts, seed=3)
    counts = (labels != -100).sum(1)
    assert (counts == 1).all()  # max(1, round(0.15 * 9)) = 1 and every word is one piece

    _, labels = _mask(ids, starts, seed=3, count_padding_as_words=True)
    counts = (labels != -100).sum(1).double()
    # Budget round(0.15 * 40) = 6 one-token picks among 7 words + 31 pads: hypergeometric(38, 7, 6).
    zero = math.comb(31, 6) / math.comb(38, 6)
    assert abs((counts == 0).double().mean().item() - zero) < 0.04, (counts == 0).double().mean()
    assert abs(counts.mean().item() - 6 * 7 / 38) < 0.06, counts.mean()
    assert zero > 0.25

    # The documented measurement of the 4.2.1 collator: a 7-wordpiece caption (5 words) padded to 40 gets ~1.0
    # masked tokens on average and ~40% of such captions get none; without the quirk always exactly one.
    ids, starts = _caption(["a", "##b", "c", "d", "##e", "f", "g"], length=40)
    ids, starts = ids.expand(draws, -1), starts.expand(draws, -1)
    counts = (_mask(ids, starts, seed=4, count_padding_as_words=True)[1] != -100).sum(1).double()
    assert abs(counts.mean().item() - 1.0) < 0.1 and abs((counts == 0).double().mean().item() - 0.4) < 0.05
    assert ((_mask(ids, starts, seed=4)[1] != -100).sum(1) == 1).all()


def test_80_10_10_split() -> None:
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(10, 1000, (2000, 30), generator=generator)
    ids[:, 0], ids[:, -1] = CLS, SEP
    starts = torch.ones_like(ids, dtype=torch.bool)
    masked, labels = _mask(ids, starts, seed=5, mlm_probability=0.3)
    picked = labels != -100
    total = picked.sum().item()
    assert total == 2000 * 9  # round(0.3 * 30) = 9 one-piece words per row
    to_mask = (masked[picked] == MASK).double().mean().item()
    kept = (masked[picked] == ids[picked]).double().mean().item()
    randomised = ((masked[picked] != MASK) & (masked[picked] != ids[picked])).double().mean().item()
    assert abs(to_mask - 0.8) < 0.015 and abs(kept - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01
    assert torch.equal(masked[~picked], ids[~picked])


def test_seeded_generator_is_deterministic() -> None:
    ids, starts = _caption(["a", "##b", "c", "d", "##e", "##f", "g", "h", "i", "j"], length=16)
    ids, starts = ids.expand(8, -1), starts.expand(8, -1)
    first = _mask(ids, starts, seed=7, mlm_probability=0.4)
    second = _mask(ids, starts, seed=7, mlm_probability=0.4)
    other = _mask(ids, starts, seed=8, mlm_probability=0.4)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_rows_without_candidates_and_shape_mismatch() -> None:
    ids = torch.tensor([[CLS, SEP, PAD, PAD]])
    masked, labels = _mask(ids, torch.ones_like(ids, dtype=torch.bool))
    assert torch.equal(masked, ids) and (labels == -100).all()
    with pytest.raises(ValueError, match="word_starts"):
        _mask(ids, torch.ones(1, 3, dtype=torch.bool))
