"""CoCa processor: images as open_clip's eval transform, text as open_clip's tokenizer for CoCa (context 76)."""

from __future__ import annotations

from typing import Any

from ..clip.processing_clip import DEFAULT_PROMPT_TEMPLATE, VlpClipProcessor

# open_clip's CoCa text context: 76 tokens (the class token takes the 77th position)
COCA_CONTEXT_LENGTH = 76


class VlpCocaProcessor(VlpClipProcessor):
    """Pairs a :class:`~hf_vlp.models.coca.image_processing_coca.VlpCocaImageProcessor` with a CLIP BPE tokenizer and
    tokenises as open_clip does for CoCa: ``[SOT] + tokens + [EOT]``, padded with 0 (CoCa's ``pad_id``) to 76 tokens;
    longer text is cut with EOT kept in the last slot. Generated ids decode up to their end-of-text token
    (:meth:`post_process_image_text_to_text`, what the ``image-text-to-text`` pipeline calls). Everything else as
    :class:`~hf_vlp.models.clip.processing_clip.VlpClipProcessor`."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        context_length: int = COCA_CONTEXT_LENGTH,
        pad_token_id: int = 0,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        **kwargs: Any,
    ):
        super().__init__(image_processor, tokenizer, context_length, pad_token_id, prompt_template, **kwargs)
        self.pad_with(pad_token_id)

    def pad_with(self, pad_token_id: int) -> None:
        """Pad with ``pad_token_id`` and make it the tokenizer's pad token too. A CLIP tokenizer pads with end-of-text,
        and the stock Trainer copies the tokenizer's pad id into the model, whose captioning loss ignores pads: it
        would never learn to emit end-of-text. The ids text is tokenised into do not change."""
        self.pad_token_id = pad_token_id
        self.tokenizer.pad_token = self.tokenizer.convert_ids_to_tokens(pad_token_id)

    def post_process_image_text_to_text(
        self, generated_outputs: Any, skip_special_tokens: bool = True, **kwargs: Any
    ) -> str | list[str]:
        """The text of each id row (a ``[T]`` row gives one string, ``[B, T]`` rows a list), cut after its first
        end-of-text token as open_clip's captioning example does (``split("<end_of_text>")[0]``) and stripped: the pad
        id 0 is also the ``!`` token, so the pads after end-of-text would otherwise decode as ``!!!``. ``kwargs`` go
        to the tokenizer's ``batch_decode``."""
        rows = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        single = not rows or not isinstance(rows[0], list)
        eot = self.tokenizer.eos_token_id
        cut = [row[: row.index(eot) + 1] if eot in row else row for row in ([rows] if single else rows)]
        texts = [text.strip() for text in self.tokenizer.batch_decode(cut, skip_special_tokens=skip_special_tokens,
                                                                     **kwargs)]
        return texts[0] if single else texts


__all__ = ["COCA_CONTEXT_LENGTH", "VlpCocaProcessor"]
