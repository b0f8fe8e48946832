"""Text-side helpers shared by the ALBEF and BLIP processors: argument checks, the BERT-tokenizer check, the two
steps every caption/question normalisation of the originals ends with (squeeze whitespace, keep the first words), and
the VQA answer encoding both originals use (``[CLS] answer [SEP]`` padded to the longest)."""

from __future__ import annotations

import re
from typing import Any

TEXT_KINDS = ("caption", "question")

_REPEATED_WHITESPACE = re.compile(r"\s{2,}")


def squeeze_whitespace(text: str) -> str:
    """Runs of whitespace to one space, then the trailing newline and surrounding spaces stripped (``pre_caption``)."""
    return _REPEATED_WHITESPACE.sub(" ", text).rstrip("\n").strip(" ")


def first_words(text: str, max_words: int) -> str:
    """The first ``max_words`` space-separated words of ``text`` (empty strings between repeated spaces count, as in
    the originals); ``text`` unchanged when it is not longer."""
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def check_bert_tokenizer(tokenizer: Any, model_name: str) -> None:
    """``model_name`` needs a BERT tokenizer with ``[CLS]``, ``[SEP]``, ``[PAD]`` and a vocabulary."""
    names = ("cls_token", "sep_token", "pad_token")
    missing = [name for name in names if getattr(tokenizer, f"{name}_id", None) is None]
    if missing:
        raise ValueError(
            f"The tokenizer has no {', '.join(missing)}: {model_name} needs a BERT tokenizer with [CLS], [SEP] and "
            "[PAD] (e.g. transformers.BertTokenizer(vocab='vocab.txt'))."
        )
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise ValueError(
            f"The tokenizer holds only its {len(tokenizer)} special tokens, no words. In transformers 5, "
            "BertTokenizer(vocab_file=...) is ignored: build it with BertTokenizer(vocab='path/to/vocab.txt') or "
            "BertTokenizer.from_pretrained(directory)."
        )


def check_positive_int(name: str, value: Any, minimum: int, why: str) -> None:
    """``value`` must be an ``int`` (not a bool) of at least ``minimum``; ``why`` says what the bound means."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({why}); got {value!r}.")


def checked_texts(text: Any) -> list[str]:
    """A string or a non-empty list of strings, as a list."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, (list, tuple)) or not all(isinstance(item, str) for item in texts):
        raise TypeError("`text` must be a string or a list of strings.")
    if not texts:
        raise ValueError("`text` is an empty list: pass at least one string.")
    return list(texts)


def checked_answers(answers: Any, name: str) -> list[str]:
    """A non-empty list of non-blank answer strings (``name`` is the argument's name in the messages)."""
    if isinstance(answers, str) or not isinstance(answers, (list, tuple)):
        raise TypeError(f"`{name}` must be a list of strings; got {type(answers).__name__}.")
    if not answers:
        raise ValueError(f"`{name}` is empty: pass at least one answer.")
    bad = [index for index, answer in enumerate(answers) if not isinstance(answer, str) or not answer.strip()]
    if bad:
        raise ValueError(f"`{name}` entry {bad[0]} ({answers[bad[0]]!r}) is not a non-empty string.")
    return list(answers)


def encode_answer_ids(tokenizer: Any, answers: Any) -> dict[str, list[list[int]]]:
    """VQA answers as ``[CLS] tokens [SEP]`` rows padded with ``[PAD]`` to the longest, and their 1/0 masks.

    Both originals write answers this way (ALBEF appends the text ``'[SEP]'``, BLIP's stock tokenizer adds it; each
    model then puts its own start token at position 0). Answers are neither normalised nor truncated, as in the
    originals: they come from curated answer lists. Special tokens are found by name on ``tokenizer``."""
    answers = checked_answers(answers, "answers")
    cls_id, sep_id, pad_id = (getattr(tokenizer, f"{name}_id") for name in ("cls_token", "sep_token", "pad_token"))
    token_ids = tokenizer(
        answers, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
    )["input_ids"]
    rows = [[cls_id, *ids, sep_id] for ids in token_ids]
    width = max(len(row) for row in rows)
    return {
        "input_ids": [row + [pad_id] * (width - len(row)) for row in rows],
        "attention_mask": [[1] * len(row) + [0] * (width - len(row)) for row in rows],
    }


__all__ = [
    "TEXT_KINDS",
    "check_bert_tokenizer",
    "check_positive_int",
    "checked_answers",
    "checked_texts",
    "encode_answer_ids",
    "first_words",
    "squeeze_whitespace",
]
