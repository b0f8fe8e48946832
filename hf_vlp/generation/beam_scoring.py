"""Beam-search scoring variants for generative heads (model-agnostic: BLIP's captioning and VQA today, CoCa next).

``beam_scoring="original"`` scores beam hypotheses as transformers 4.x did, which the original BLIP code ran on;
``"transformers"`` keeps transformers 5's scoring. The hooks into transformers' beam search live in
:class:`hf_vlp.integrations.compat.BeamSearchHooksMixin`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..integrations.compat import BeamSearchHooksMixin
from ..modules.attention import AttentionMemory
from .utils import finish_generation_kwargs, resolved_generation_value

BEAM_SCORING = ("original", "transformers")


def pad_after_end(sequences: torch.Tensor, start: int, eos_token_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """``sequences`` with every position after a row's first end token (at or after column ``start``) set to
    ``pad_token_id``, as the original's outputs are padded (transformers 5's beam search fills them with the end token
    when the pad id is 0)."""
    generated = sequences[:, start:]
    ended = torch.isin(generated, eos_token_ids.to(sequences.device)).long().cumsum(dim=1)
    after_end = (ended - torch.isin(generated, eos_token_ids.to(sequences.device)).long()) > 0
    padded = sequences.clone()
    padded[:, start:] = generated.masked_fill(after_end, pad_token_id)
    return padded


class OriginalBeamScoringMixin(BeamSearchHooksMixin):
    """Beam search scored as in transformers 4.x, which the original BLIP code ran on (``beam_scoring="original"``).

    transformers 5 divides a finished hypothesis' summed log-probability by ``generated_length ** length_penalty``;
    transformers 4.15 divided by its full length, prompt included and the end token excluded (a hypothesis stopped by
    ``max_length`` counts all its tokens), and stopped early on the same lengths. The two pick different hypotheses when
    sequences of different lengths compete (the original's NoCaps captions with repetition penalty 1.1 differ otherwise).
    The hooks rescale the scores transformers' beam search finalises and the length its stopping heuristic assumes;
    ``beam_scoring="transformers"`` leaves transformers' scoring untouched (e.g. to compare with transformers' BLIP).
    Remaining difference: transformers 4.15's stopping heuristic compared the best candidate including finished ones.
    Put it before ``GenerationMixin`` and call :meth:`generate_over_states` (or :meth:`_generate_with_beam_scoring`)
    from ``generate``.
    """

    _beam_scoring_end_ids: torch.Tensor | None = None

    def generate_over_states(
        self,
        beam_scoring: str,
        generate_kwargs: dict[str, Any],
        generation_config: Any,
        decoder_config: Any,
        start_ids: torch.Tensor,
        states_name: str,
        states: torch.Tensor,
    ) -> Any:
        """Decode from ``start_ids`` over encoded ``states`` (model kwarg ``states_name``): wrapped in an
        :class:`~hf_vlp.modules.attention.AttentionMemory` shared by the beams unless ``use_cache=False`` (then
        ``generate`` repeats them per beam), with the decoder's cache (``decoder_config``), under ``beam_scoring``."""
        settings = (generate_kwargs, generation_config, self.generation_config)
        use_cache = resolved_generation_value("use_cache", *settings, default=True)
        memory = AttentionMemory(states) if use_cache else states
        generate_kwargs = finish_generation_kwargs(
            generate_kwargs, generation_config, self.generation_config, decoder_config
        )
        return self._generate_with_beam_scoring(
            beam_scoring, {**generate_kwargs, "input_ids": start_ids, states_name: memory}
        )

    def _generate_with_beam_scoring(self, beam_scoring: str, generate_kwargs: dict[str, Any]) -> Any:
        """``GenerationMixin.generate(**generate_kwargs)`` under ``beam_scoring``; rows that ended are padded with the
        pad token after their end token (both as ``generate`` resolves them)."""
        if beam_scoring not in BEAM_SCORING:
            raise ValueError(f"beam_scoring must be one of {BEAM_SCORING}, got {beam_scoring!r}")
        settings = (generate_kwargs, generate_kwargs.get("generation_config"), self.generation_config)
        eos_token_id = resolved_generation_value("eos_token_id", *settings)
        pad_token_id = resolved_generation_value("pad_token_id", *settings)
        eos_ids = None
        if eos_token_id is not None:
            eos_ids = torch.as_tensor(eos_token_id, dtype=torch.long).reshape(-1)
        missing = self.beam_search_hooks_missing()
        if beam_scoring == "original" and missing:
            raise RuntimeError(
                f"this transformers version's beam search has no {missing}, which beam_scoring='original' hooks into; "
                "pass beam_scoring='transformers'"
            )
        self._beam_scoring_end_ids = eos_ids if beam_scoring == "original" else None
        try:
            output = super().generate(**generate_kwargs)
        finally:
            self._beam_scoring_end_ids = None
        if eos_ids is None or pad_token_id is None:
            return output
        start = generate_kwargs["input_ids"].shape[1]
        if isinstance(output, torch.Tensor):
            return pad_after_end(output, start, eos_ids, pad_token_id)
        output.sequences = pad_after_end(output.sequences, start, eos_ids, pad_token_id)
        return output

    def adjust_finished_beams(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Rescale the finalised hypotheses' scores from transformers 5's length normalisation to 4.15's."""
        end_ids = self._beam_scoring_end_ids
        if end_ids is not None:
            cur_len, prompt_len = arguments["cur_len"], arguments["decoder_prompt_len"]
            penalty = arguments["length_penalty"]
            new_tokens = arguments["topk_running_sequences"][:, :, cur_len]
            full_length = cur_len + 1 - torch.isin(new_tokens, end_ids.to(new_tokens.device)).long()
            rescale = ((cur_len + 1 - prompt_len) / full_length.to(arguments["topk_log_probs"].dtype)) ** penalty
            arguments["topk_log_probs"] = arguments["topk_log_probs"] * rescale
        return arguments

    def adjust_early_stop(self, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._beam_scoring_end_ids is not None:
            arguments["decoder_prompt_len"] = 1  # transformers 4.15: best running score / (length before this step)
        return arguments


__all__ = ["BEAM_SCORING", "OriginalBeamScoringMixin", "pad_after_end"]
