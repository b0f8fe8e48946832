"""BERT tokenizers for the fusion models' text towers (ALBEF, BLIP) in ``hf-vlp train``.

Tiny models trained on ``synthetic-shapes`` need no 30k-word BERT vocabulary: :func:`synthetic_wordpiece_tokenizer`
builds a WordPiece vocabulary of the synthetic texts' words plus single characters (``a``, ``##a``, ...), so any
other text still tokenises (character by character) instead of becoming ``[UNK]``. Real runs load the tokenizer of
the BERT checkpoint the text tower starts from (:func:`load_bert_tokenizer`).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from ..synthetic import synthetic_vocabulary

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_tokenizer(words: Sequence[str], extra_special_tokens: Sequence[str] = ()) -> BertTokenizer:
    """An uncased ``BertTokenizer`` over the BERT special tokens, ``words`` and every lowercase letter and digit
    (alone and as a ``##`` continuation); ``extra_special_tokens`` (e.g. BLIP's ``[DEC]``, ``[ENC]``) come last."""
    characters = list(string.ascii_lowercase + string.digits)
    tokens = [*BERT_SPECIAL_TOKENS, *words, *characters, *(f"##{character}" for character in characters)]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    if extra_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    return tokenizer


def synthetic_wordpiece_tokenizer(extra_special_tokens: Sequence[str] = ()) -> BertTokenizer:
    """:func:`wordpiece_tokenizer` over every word of the synthetic dataset (165 tokens in all)."""
    return wordpiece_tokenizer(synthetic_vocabulary(), extra_special_tokens)


def load_bert_tokenizer(source: str | Path) -> PreTrainedTokenizerBase:
    """A BERT tokenizer from a ``vocab.txt`` file or a directory written by ``save_pretrained`` (a BERT checkpoint
    directory usually holds its tokenizer)."""
    path = Path(source)
    if path.is_file():
        return BertTokenizer(vocab=str(path), do_lower_case=True)
    if not path.is_dir():
        raise FileNotFoundError(f"Tokenizer {str(source)!r} is neither a vocab.txt file nor a directory.")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{str(source)!r} holds no tokenizer files ({error}). Pass --tokenizer with a BERT vocab.txt or a "
            "tokenizer directory."
        ) from error
