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
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType, logging

from ...utils.text_processing import (
    TEXT_KINDS,
    check_bert_tokenizer,
    check_positive_int,
    checked_answers,
    checked_texts,
    encode_answer_ids,
    first_words,
    squeeze_whitespace,
)

logger = logging.get_logger(__name__)

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


class VlpBlipProcessor(ProcessorMixin):
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
        check_bert_tokenizer(tokenizer, "BLIP")
        add_blip_special_tokens(tokenizer)
        check_positive_int("max_length", max_length, minimum=3, why="room for [CLS], one token and [SEP]")
        check_positive_int("max_words", max_words, minimum=1, why="at least one word")
        check_positive_int("max_question_words", max_question_words, minimum=1, why="at least one word")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string (may be empty), got {type(prompt).__name__}")
        self.max_length = max_length
        self.max_words = max_words
        self.max_question_words = max_question_words
        self.prompt = prompt
        self.answer_list = checked_answers(answer_list, "answer_list") if answer_list is not None else None

    @property
    def unused_input_names(self) -> list[str]:
        """The tokenizer lists ``token_type_ids``, which this processor never returns."""
        return ["token_type_ids"]

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
        if text is None and images is None:
            raise ValueError("Pass `text`, `images` or both to VlpBlipProcessor.")
        if images_kwargs and images is None:
            raise TypeError(f"Unexpected keyword arguments without images: {sorted(images_kwargs)}.")
        data: dict[str, Any] = {}
        if text is not None:
            texts = self.normalize_text(text, text_kind=text_kind, max_words=max_words)
            if add_prompt:
                texts = [self.prompt + item for item in texts]
            data.update(
                self._encode(texts, padding, truncation, self.max_length if max_length is None else max_length)
            )
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors, **images_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def normalize_text(
        self, text: str | list[str], text_kind: str = "caption", max_words: int | None = None
    ) -> list[str]:
        """The text as the model sees it before tokenisation (:func:`pre_caption` or :func:`pre_question`)."""
        if text_kind not in TEXT_KINDS:
            raise ValueError(f"text_kind must be one of {TEXT_KINDS}; got {text_kind!r}.")
        if max_words is None:
            max_words = self.max_words if text_kind == "caption" else self.max_question_words
        check_positive_int("max_words", max_words, minimum=1, why="at least one word")
        normalize = pre_caption if text_kind == "caption" else pre_question
        return [normalize(item, max_words) for item in checked_texts(text)]

    def encode_answers(
        self, answers: list[str] | None = None, return_tensors: str | TensorType | None = None
    ) -> BatchFeature:
        """Tokenise VQA answers as ``[CLS] tokens [SEP]``, padded with ``[PAD]`` to the longest, with their
        ``attention_mask`` (``answer_list`` when ``answers`` is not given).

        The original tokenises answers with ``padding='longest'`` and neither normalises nor truncates them;
        ``VlpBlipForQuestionAnswering`` replaces the ``[CLS]`` by ``[DEC]`` itself (forward and ``rank_answers``).
        """
        if answers is None:
            if self.answer_list is None:
                raise ValueError("No answers given and the processor has no answer_list: pass `answers`.")
            answers = self.answer_list
        return BatchFeature(data=encode_answer_ids(self.tokenizer, answers), tensor_type=return_tensors)

    def decode_caption(self, token_ids: Any, strip_prompt: bool = True) -> str:
        """Caption text of one generated id sequence: special tokens skipped and, with ``strip_prompt``, the prompt's
        characters cut off as the original does (``caption[len(prompt):]``)."""
        caption = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return caption[len(self.prompt) :] if strip_prompt and self.prompt else caption

    def _encode(
        self, texts: list[str], padding: bool | str, truncation: bool, max_length: int
    ) -> dict[str, list[list[int]]]:
        if padding not in ("longest", True, "max_length"):
            raise ValueError(f"padding must be 'longest', True or 'max_length'; got {padding!r}.")
        check_positive_int("max_length", max_length, minimum=3, why="room for [CLS], one token and [SEP]")
        cls_id, sep_id = self._special_id("cls_token"), self._special_id("sep_token")
        tokens = self._token_ids(texts)
        too_long = [index for index, ids in enumerate(tokens) if len(ids) + 2 > max_length]
        if too_long and not truncation:
            raise ValueError(
                f"Text {too_long[0]} has {len(tokens[too_long[0]]) + 2} tokens, more than max_length={max_length}; "
                "shorten it, raise max_length or pass truncation=True."
            )
        if too_long:
            logger.warning(
                f"{len(too_long)} of {len(texts)} texts were longer than max_length={max_length} tokens and were "
                "truncated (the closing [SEP] is kept)."
            )
        sequences = [[cls_id, *ids[: max_length - 2], sep_id] for ids in tokens]
        target = max_length if padding == "max_length" else max(len(sequence) for sequence in sequences)
        pad_id = self._special_id("pad_token")
        return {
            "input_ids": [sequence + [pad_id] * (target - len(sequence)) for sequence in sequences],
            "attention_mask": [[1] * len(sequence) + [0] * (target - len(sequence)) for sequence in sequences],
        }

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )
        return encoded["input_ids"]

    def _special_id(self, name: str) -> int:
        value = getattr(self.tokenizer, f"{name}_id")
        if value is None:
            raise ValueError(f"The tokenizer has no {name}; BLIP needs a BERT tokenizer with [PAD], [CLS], [SEP], [MASK].")
        return int(value)


__all__ = ["VlpBlipProcessor", "add_blip_special_tokens", "blip_special_token_ids", "pre_caption", "pre_question"]
