"""Build transformers' `CLIPTokenizer` from OpenAI's original BPE merges file, and clean text as the original does.

OpenAI CLIP ships its vocabulary as a gzipped merges file (`bpe_simple_vocab_16e6.txt.gz`) and derives the
vocabulary from it in `clip/simple_tokenizer.py`. These helpers rebuild exactly that vocabulary in memory, so a
converted checkpoint gets a tokenizer whose ids equal the original ones without any download.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path

import ftfy
import regex
from transformers import CLIPTokenizer, PreTrainedTokenizerBase

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# openai/CLIP:clip/simple_tokenizer.py keeps merges[1 : 49152 - 256 - 2 + 1] of the file: 48,894 merges.
ORIGINAL_NUM_MERGES = 49152 - 256 - 2
DEFAULT_CONTEXT_LENGTH = 77

_GZIP_MAGIC = b"\x1f\x8b"
_WHITESPACE_RUN = regex.compile(r"\s+")


def byte_to_unicode_table() -> dict[int, str]:
    """Map every byte to a printable unicode character, in the order the original vocabulary lists them.

    Printable latin-1 bytes map to themselves; the remaining bytes (controls, space, ...) map to
    code points from 256 upwards. The dict's insertion order is the id order of the 256 byte tokens.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_code_point)
            next_code_point += 1
    return table


def read_bpe_merges(path: str | Path, max_merges: int = ORIGINAL_NUM_MERGES) -> list[tuple[str, str]]:
    """Read the merges an original CLIP tokenizer would use from a merges file (gzipped or plain text).

    The first line is a header (e.g. `"bpe_simple_vocab_16e6.txt#version: 0.2`); each following line is one
    merge `a b`. Like the original, at most `max_merges` merges are kept; a truncated file keeps all it has.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges file not found: {path}")
    raw = path.read_bytes()
    if raw.startswith(_GZIP_MAGIC):
        raw = gzip.decompress(raw)
    try:
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a UTF-8 (optionally gzipped) BPE merges file: {error}") from error

    merges = []
    for line_number, line in enumerate(lines[1 : max_merges + 1], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"Line {line_number} of {path} is not a BPE merge of two symbols ('a b'): {line!r}. "
                "Pass the original CLIP merges file (bpe_simple_vocab_16e6.txt.gz) or a file in the same format."
            )
        merges.append((parts[0], parts[1]))
    if not merges:
        raise ValueError(f"{path} holds no BPE merges after its header line.")
    return merges


def clip_vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Build the original CLIP vocabulary: 256 bytes, the same with `</w>`, one token per merge, SOT, EOT."""
    byte_symbols = list(byte_to_unicode_table().values())
    tokens = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    tokens += ["".join(merge) for merge in merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(
            f"The merges produce duplicate tokens ({len(tokens) - len(vocab)} duplicates); "
            "this is not a valid CLIP merges file."
        )
    return vocab


def clip_tokenizer_from_bpe(
    path: str | Path, model_max_length: int = DEFAULT_CONTEXT_LENGTH
) -> CLIPTokenizer:
    """Build a `CLIPTokenizer` in memory whose ids equal openai/CLIP's `SimpleTokenizer` for the same merges file.

    SOT and EOT get the two highest ids (49406 and 49407 for the full file), so EOT pooling by argmax works.
    The tokenizer keeps transformers' defaults otherwise (it pads with EOT); `VlpClipProcessor` pads like the
    original. Text normalisation differs from the original only on HTML entities and text ftfy would repair;
    `clean_text` applies those steps and `VlpClipProcessor` calls it before tokenising.
    """
    merges = read_bpe_merges(path)
    vocab = clip_vocab_from_merges(merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def load_clip_tokenizer(path: str | Path, model_max_length: int = DEFAULT_CONTEXT_LENGTH) -> PreTrainedTokenizerBase:
    """Load a CLIP tokenizer from an original merges file or from a saved transformers tokenizer directory."""
    path = Path(path)
    if path.is_dir():
        return CLIPTokenizer.from_pretrained(str(path))
    if path.is_file():
        return clip_tokenizer_from_bpe(path, model_max_length=model_max_length)
    raise FileNotFoundError(
        f"No tokenizer at {path}: pass an original CLIP merges file (e.g. bpe_simple_vocab_16e6.txt.gz) "
        "or a directory written by tokenizer.save_pretrained()."
    )


def clean_text(text: str) -> str:
    """Normalise text as openai/CLIP's tokenizer does before BPE: ftfy, HTML unescape twice, whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()
