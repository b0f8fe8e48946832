"""Masked language modelling: BERT-style token masking and the MLM loss distilled from a momentum teacher.

Model-agnostic (ALBEF today; ViLT and VLMo mask the same way): the functions take ids, logits and labels only.
``whole_word_mask_tokens`` is ViLT's whole-word variant.
"""

from __future__ import annotations

import torch
from torch import nn


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: tuple[int, ...],
    mlm_probability: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's ``mask()``: each token except ``special_token_ids`` (``[PAD]``, ``[CLS]``) is picked with
    ``mlm_probability``; of those 80% become ``mask_token_id``, half the rest a uniform random id, the rest stay.

    Returns ``(masked_input_ids, labels)`` with labels -100 on unpicked tokens. The draws follow the original's
    order (pick, replace, random, random ids) so a seeded run consumes the random stream the same way.
    """
    device = input_ids.device
    masked_ids, labels = input_ids.clone(), input_ids.clone()

    def bernoulli(probability: float) -> torch.Tensor:
        return torch.bernoulli(torch.full(input_ids.shape, probability), generator=generator).bool().to(device)

    picked = bernoulli(mlm_probability)
    for token_id in special_token_ids:
        picked &= input_ids != token_id
    labels[~picked] = -100
    replaced = bernoulli(0.8) & picked
    masked_ids[replaced] = mask_token_id
    randomised = bernoulli(0.5) & picked & ~replaced
    random_ids = torch.randint(vocab_size, input_ids.shape, dtype=torch.long, generator=generator).to(device)
    masked_ids[randomised] = random_ids[randomised]
    return masked_ids, labels


def distilled_mlm_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``(1 - alpha) * CE + alpha * soft-CE against softmax(teacher_logits)``, both averaged over labelled tokens
    (xbert's ``BertForMaskedLM`` with ``soft_labels``). Zero, with a gradient path, when nothing is labelled."""
    labelled = labels != -100
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    log_probs = nn.functional.log_softmax(logits[labelled], dim=-1)
    hard = nn.functional.nll_loss(log_probs, labels[labelled])
    soft = -(log_probs * nn.functional.softmax(teacher_logits[labelled], dim=-1)).sum(dim=-1).mean()
    return (1 - alpha) * hard + alpha * soft


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain MLM cross-entropy of ``logits`` ``[B, L, V]`` over ``labels != -100`` (no shift)."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
    )


def word_starts_from_tokens(tokens: list[list[str]]) -> torch.Tensor:
    """``[B, L]`` bool: True where a WordPiece token begins a word (anything not starting with ``##``).

    Rows must have equal length (pad them first)."""
    return torch.tensor([[not token.startswith("##") for token in row] for row in tokens], dtype=torch.bool)


def _candidate_words(
    ids: list[int], starts: list[bool], special: set[int], pad_token_id: int, padding_as_words: bool
) -> list[list[int]]:
    """Positions grouped into whole words: a start piece plus its ``##`` continuations, specials skipped.
    With ``padding_as_words`` every pad is a one-token word (transformers 4.2.1's collator on padded text)."""
    words: list[list[int]] = []
    for position, (token_id, start) in enumerate(zip(ids, starts)):
        if token_id == pad_token_id:
            if padding_as_words:
                words.append([position])
            continue
        if token_id in special:
            continue
        if start or not words:
            words.append([position])
        else:
            words[-1].append(position)
    return words


def whole_word_mask_tokens(
    input_ids: torch.Tensor,
    word_starts: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_token_ids: tuple[int, ...],
    pad_token_id: int,
    mlm_probability: float = 0.15,
    count_padding_as_words: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-word masking (ViLT's ``whole_word_masking=True``, transformers' ``DataCollatorForWholeWordMask``).

    Per row, candidate words (a token with ``word_starts`` True plus the following ``##`` pieces; tokens in
    ``special_token_ids`` and pads are never candidates) are visited in a random order and taken whole while
    they fit a budget of ``max(1, round(mlm_probability * n))`` tokens; a word that would overflow the budget
    is skipped. The chosen tokens then become ``mask_token_id`` (80%), a uniform random id (10%) or stay
    (10%). Returns ``(masked_input_ids, labels)`` with labels -100 on unchosen tokens.

    ``count_padding_as_words``: with False (default) ``n`` is the number of non-pad tokens, i.e. what the
    collator does on unpadded text. True reproduces the original ViLT pre-training (transformers 4.2.1
    collator fed text already padded to ``max_text_len``): every ``[PAD]`` is a candidate word, ``n`` is the
    padded length ``L``, and pad picks, which use up budget, are dropped afterwards, so short captions get
    fewer masked tokens than 15% (often none). The default differs because that is an artefact, not a design.

    ``input_ids`` and ``word_starts`` are ``[B, L]``; every random draw uses ``generator`` (a CPU generator).
    """
    if input_ids.shape != word_starts.shape:
        raise ValueError(
            f"word_starts must have the shape of input_ids, got {tuple(word_starts.shape)} and "
            f"{tuple(input_ids.shape)}"
        )
    device = input_ids.device
    special = set(special_token_ids)
    rows, starts = input_ids.tolist(), word_starts.bool().tolist()
    # One draw for the whole batch: ranks of L uniform keys; a row with n words visits them in the order of its
    # keys' ranks among word indices < n (a uniformly random permutation of its words).
    orders = torch.rand(input_ids.shape, generator=generator).argsort(dim=1).tolist()
    chosen = torch.zeros(input_ids.shape, dtype=torch.bool)
    for row, (ids, row_starts, order) in enumerate(zip(rows, starts, orders)):
        words = _candidate_words(ids, row_starts, special, pad_token_id, count_padding_as_words)
        if not words:
            continue
        length = len(ids) if count_padding_as_words else sum(token_id != pad_token_id for token_id in ids)
        budget = max(1, round(length * mlm_probability))
        covered: list[int] = []
        for word in order:
            if len(covered) >= budget:
                break
            if word < len(words) and len(covered) + len(words[word]) <= budget:
                covered.extend(words[word])
        if covered:
            chosen[row, covered] = True
    for token_id in (*special_token_ids, pad_token_id):
        chosen &= input_ids.cpu() != token_id

    masked_ids, labels = input_ids.clone(), input_ids.clone()
    chosen = chosen.to(device)
    labels[~chosen] = -100
    replaced = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool().to(device) & chosen
    masked_ids[replaced] = mask_token_id
    randomised = (
        torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool().to(device) & chosen & ~replaced
    )
    random_ids = torch.randint(vocab_size, input_ids.shape, dtype=torch.long, generator=generator).to(device)
    masked_ids[randomised] = random_ids[randomised]
    return masked_ids, labels


__all__ = ["distilled_mlm_loss", "mask_tokens", "masked_lm_loss", "whole_word_mask_tokens", "word_starts_from_tokens"]
