"""CLIP processor: images as openai/CLIP's `_transform`, text as its `clip.tokenize(..., truncate=True)`."""

from __future__ import annotations

from typing import Any

from transformers import BatchFeature
from transformers.utils import TensorType, logging

from ...utils.text_processing import checked_texts
from ..processing_utils import VlpProcessorBase, overlong_rows, pad_rows, padded_length
from .tokenization_clip import DEFAULT_CONTEXT_LENGTH, clean_text

logger = logging.get_logger(__name__)

DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."


class VlpClipProcessor(VlpProcessorBase):
    """Pairs a `VlpClipImageProcessor` with a CLIP tokenizer and tokenises like the original CLIP.

    Text becomes `[SOT] + tokens + [EOT]`, padded with `pad_token_id` (0, as the original) to `context_length`
    (77), or to the longest text with `padding="longest"`. Longer text is cut with EOT kept in the last slot, and
    a warning says how many texts were cut. `attention_mask` is 1 up to and including EOT. `prompt_template`
    turns class names into prompts for zero-shot classification (`format_labels`).
    """

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        pad_token_id: int = 0,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        **kwargs: Any,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError(
                "The tokenizer needs start- and end-of-text tokens (bos_token/eos_token); build it with "
                "hf_vlp.models.clip.tokenization_clip.clip_tokenizer_from_bpe or load a CLIPTokenizer."
            )
        _check_context_length(context_length)
        if not isinstance(pad_token_id, int) or not 0 <= pad_token_id < len(tokenizer):
            raise ValueError(
                f"pad_token_id must be an id of the tokenizer (0 to {len(tokenizer) - 1}); got {pad_token_id!r}."
            )
        _check_prompt_template(prompt_template)
        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.prompt_template = prompt_template

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        padding: bool | str = "max_length",
        truncation: bool = True,
        context_length: int | None = None,
        return_tensors: str | TensorType | None = None,
        max_length: int | None = None,
        **images_kwargs: Any,
    ) -> BatchFeature:
        """Tokenise `text` and/or preprocess `images`.

        Returns `input_ids` and `attention_mask` for text, `pixel_values` for images. `padding` is
        `"max_length"` (pad to the context length, as the original) or `"longest"`/`True` (pad to the longest
        text). With `truncation=False` over-long text raises instead of being cut. Extra keyword arguments go to
        the image processor. ``max_length`` (the tokenizer-style name generic collators pass) caps the context
        length; it never extends it past the model's ``context_length``.
        """
        context_length = _resolve_context_length(self.context_length, context_length, max_length)
        return self._text_and_images(
            text, images, return_tensors, images_kwargs, padding=padding, truncation=truncation,
            context_length=context_length,
        )

    def _encode_text(
        self, text: str | list[str], padding: bool | str, truncation: bool, context_length: int
    ) -> dict[str, list[list[int]]]:
        texts = checked_texts(text)
        pad_to = padded_length(padding, context_length)
        _check_context_length(context_length)

        cleaned = [clean_text(item) for item in texts]
        token_ids = self.tokenizer(cleaned, add_special_tokens=False, verbose=False)["input_ids"]
        sot, eot = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        sequences = [[sot, *ids, eot] for ids in token_ids]

        too_long = overlong_rows(
            [len(sequence) for sequence in sequences],
            context_length,
            limit_name="context_length",
            truncation=truncation,
            fix="shorten it or pass truncation=True",
            logger=logger,
            kept_note=" (end-of-text token kept in the last position, as clip.tokenize(truncate=True))",
        )
        for index in too_long:
            sequences[index] = sequences[index][: context_length - 1] + [eot]
        return pad_rows(sequences, self.pad_token_id, pad_to)

    def format_labels(self, labels: list[str]) -> list[str]:
        """Turn class names into text prompts with `prompt_template` (e.g. "cat" -> "a photo of a cat.")."""
        if isinstance(labels, str) or not all(isinstance(label, str) for label in labels):
            raise TypeError("`labels` must be a list of strings.")
        return [self.prompt_template.format(label) for label in labels]


def _resolve_context_length(default: int, context_length: int | None, max_length: int | None) -> int:
    length = default if context_length is None else context_length
    return length if max_length is None else min(length, max_length)


def _check_context_length(context_length: Any) -> None:
    if not isinstance(context_length, int) or isinstance(context_length, bool) or context_length < 2:
        raise ValueError(
            f"context_length must be an integer >= 2 (room for start and end tokens); got {context_length!r}."
        )


def _check_prompt_template(prompt_template: Any) -> None:
    if not isinstance(prompt_template, str):
        raise TypeError(f"prompt_template must be a string with one '{{}}' placeholder; got {prompt_template!r}.")
    try:
        filled = prompt_template.format("\0")
    except (IndexError, KeyError, ValueError) as error:
        raise ValueError(
            f"prompt_template {prompt_template!r} must have exactly one '{{}}' placeholder for the label: {error}"
        ) from error
    if filled.count("\0") != 1:
        raise ValueError(f"prompt_template {prompt_template!r} must have exactly one '{{}}' placeholder for the label.")


__all__ = ["VlpClipProcessor"]
