"""BLIP processor: images as BLIP's test transform, text as its ``pre_caption``/``pre_question`` + a BERT tokenizer.

BLIP (``models/blip.py:init_tokenizer``) uses the stock ``BertTokenizer`` with two added special tokens: ``[DEC]`` as
the BOS token (the decoder's first token) and ``[ENC]`` (the image-grounded encoder's first token). Texts are written
``[CLS] tokens [SEP]``; the model itself replaces position 0 by ``[ENC]`` or ``[DEC]`` where the original does, so the
processor never emits them. BLIP's text normalisation differs from ALBEF's: punctuation ``.!"()*#:;~`` becomes a space
in captions (commas, ``?`` and ``'`` are kept) and is removed from questions. VQA answers are ``[CLS] answer [SEP]``
(:meth:`VlpBlipProcessor.encode_answers`); the fixed candidate list of answer ranking travels with the processor
(``answer_list``, saved in ``processor_config.json``).
"""

from __future__ import annotations

import re
from typing import Any

from transformers import BatchFeature
from transformers.utils import TensorType

from ...utils.text_processing import check_positive_int, first_words, squeeze_whitespace
from ..processing_utils import BertTextProcessorBase

DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"
# The caption prompt of BLIP's captioner (configs/caption_coco.yaml); its tokens are not part of the LM loss.
DEFAULT_PROMPT = "a picture of "
# Retrieval / ITM / VQA-question length (configs/retrieval_*.yaml, blip_itm.py, blip_vqa.py); pre-training uses 30 and
# caption training 40 (pass max_length per call).
DEFAULT_MAX_LENGTH = 35
DEFAULT_MAX_WORDS = 30  # the caption datasets' max_words
DEFAULT_MAX_QUESTION_WORDS = 50  # pre_question's default, which the VQA dataset uses

_CAPTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """BLIP's caption normalisation (``data/utils.py``): lowercase, ``.!"()*#:;~`` to spaces, squeeze whitespace,
    strip, keep the first ``max_words`` words (the datasets pass 30)."""
    caption = _CAPTION_PUNCTUATION.sub(" ", caption.lower())
    return first_words(squeeze_whitespace(caption), max_words)


def pre_question(question: str, max_words: int = DEFAULT_MAX_QUESTION_WORDS) -> str:
    """BLIP's question normalisation: lowercase, ``.!"()*#:;~`` removed, trailing spaces stripped, first
    ``max_words`` words (the original counts the empty strings between repeated spaces as words)."""
    question = _CAPTION_PUNCTUATION.sub("", question.lower()).rstrip(" ")
    return first_words(question, max_words)


def add_blip_special_tokens(tokenizer: Any) -> Any:
    """Add ``[DEC]`` (as the BOS token) and ``[ENC]`` (an additional special token) to a BERT tokenizer in place, as
    the original ``init_tokenizer`` does; a tokenizer that already has them is left unchanged. Returns it."""
    if tokenizer.bos_token != DEC_TOKEN:
        tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    if ENC_TOKEN not in tokenizer.all_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer


def blip_special_token_ids(tokenizer: Any) -> dict[str, int]:
    """The special-token ids a ``VlpBlipTextConfig`` needs, each found by its token's name (``[DEC]`` is the BOS)."""
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token == DEC_TOKEN else None,
        "enc_token_id": tokenizer.convert_tokens_to_ids(ENC_TOKEN) if ENC_TOKEN in tokenizer.all_special_tokens else None,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(
            f"The tokenizer has no {', '.join(missing)}: BLIP needs a BERT tokenizer with [PAD], [CLS], [SEP], [MASK] "
            "and the added [DEC]/[ENC] (add_blip_special_tokens adds the last two)."
        )
    return {name: int(value) for name, value in ids.items()}


class VlpBlipProcessor(BertTextProcessorBase):
    """Pairs a ``VlpBlipImageProcessor`` with a BERT tokenizer and prepares inputs as the original BLIP does.

    The tokenizer gets BLIP's ``[DEC]``/``[ENC]`` tokens if it lacks them (:func:`add_blip_special_tokens`). Text is
    normalised with :func:`pre_caption` (``max_words``; ``text_kind="question"``: :func:`pre_question` with
    ``max_question_words``), optionally prefixed with the caption ``prompt`` (``add_prompt=True``, captioner training),
    tokenised to ``[CLS] tokens [SEP]``, cut to ``max_length`` tokens keeping ``[SEP]`` (with a warning) and padded
    with ``[PAD]`` to the longest text or to ``max_length``. No ``token_type_ids`` are returned (BLIP has no token
    types, and ``generate()`` rejects unknown inputs).

    VQA: :meth:`encode_answers` writes answers as ``[CLS] tokens [SEP]`` (the model puts ``[DEC]`` first), and
    ``answer_list`` holds the fixed candidates that ``rank_answers`` ranks (the original's ``answer_list.json``); both
    as :class:`~hf_vlp.models.albef.VlpAlbefProcessor`, so VQA code treats the two processors alike.
    """

    normalizers = {"caption": pre_caption, "question": pre_question}
    row_special_tokens = 2
    row_room = "[CLS], one token and [SEP]"

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_words: int = DEFAULT_MAX_WORDS,
        max_question_words: int = DEFAULT_MAX_QUESTION_WORDS,
        prompt: str = DEFAULT_PROMPT,
        answer_list: list[str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        self._set_text_settings("BLIP", max_length, max_words, answer_list)
        add_blip_special_tokens(tokenizer)
        check_positive_int("max_question_words", max_question_words, minimum=1, why="at least one word")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string (may be empty), got {type(prompt).__name__}")
        self.max_question_words = max_question_words
        self.prompt = prompt

    @property
    def prompt_length(self) -> int:
        """Positions the captioner masks from the loss and keeps in generation: ``[DEC]`` + the prompt's tokens
        (``len(tokenizer(prompt).input_ids) - 1`` in the original; 4 for ``"a picture of "``)."""
        return 1 + len(self._token_ids([self.prompt])[0]) if self.prompt else 0

    def special_token_ids(self) -> dict[str, int]:
        """The ids the model config needs (``VlpBlipTextConfig`` fields), each found by its token's name."""
        return blip_special_token_ids(self.tokenizer)

    @property
    def enc_token_id(self) -> int:
        """Id of ``[ENC]`` (the original's ``tokenizer.enc_token_id``)."""
        return int(self.tokenizer.convert_tokens_to_ids(ENC_TOKEN))

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        text_kind: str = "caption",
        add_prompt: bool = False,
        padding: bool | str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
        max_words: int | None = None,
        return_tensors: str | TensorType | None = None,
        **images_kwargs: Any,
    ) -> BatchFeature:
        """Tokenise ``text`` and/or preprocess ``images``.

        Returns ``input_ids`` and ``attention_mask`` for text, ``pixel_values`` for images. ``text_kind`` picks the
        normalisation (``"caption"`` or ``"question"``); ``add_prompt`` puts the caption ``prompt`` before each
        normalised caption (captioner training). ``padding`` is ``"longest"``/``True`` or ``"max_length"`` (pre-training
        and retrieval). ``max_length``/``max_words`` override the processor's settings for this call. With
        ``truncation=False`` over-long text raises instead of being cut. Extra keyword arguments go to the image
        processor.
        """
        max_length = self.max_length if max_length is None else max_length
        return self._text_and_images(
            text, images, return_tensors, images_kwargs, text_kind=text_kind, add_prompt=add_prompt,
            padding=padding, truncation=truncation, max_length=max_length, max_words=max_words,
        )

    def default_max_words(self, text_kind: str) -> int:
        """``max_words`` for captions, ``max_question_words`` for questions."""
        return self.max_words if text_kind == "caption" else self.max_question_words

    def decode_caption(self, token_ids: Any, strip_prompt: bool = True) -> str:
        """Caption text of one generated id sequence: special tokens skipped and, with ``strip_prompt``, the prompt's
        characters cut off as the original does (``caption[len(prompt):]``)."""
        caption = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return caption[len(self.prompt) :] if strip_prompt and self.prompt else caption

    def _framed_rows(self, tokens: list[list[int]], max_length: int, truncation: bool) -> list[list[int]]:
        """``[CLS] tokens [SEP]``, cut to ``max_length`` keeping the closing ``[SEP]``."""
        cls_id, sep_id = self._special_id("cls_token"), self._special_id("sep_token")
        self._overlong_rows([len(ids) + 2 for ids in tokens], max_length, truncation, " (the closing [SEP] is kept)")
        return [[cls_id, *ids[: max_length - 2], sep_id] for ids in tokens]


__all__ = ["VlpBlipProcessor", "add_blip_special_tokens", "blip_special_token_ids", "pre_caption", "pre_question"]
