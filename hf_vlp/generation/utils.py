"""Helpers for heads that generate text with transformers' ``GenerationMixin`` from states encoded once: ALBEF's
VQA answer decoder over the question states, and BLIP's captioning/VQA decoders over image/question states.

Such a head overrides ``generate`` to run its encoder once, then calls ``GenerationMixin.generate`` with the start
token as ``input_ids`` and the encoded states as extra model kwargs (``generate`` repeats them for beams and
sampled sequences); its ``prepare_inputs_for_generation`` feeds the decoder only the tokens the KV cache has not
seen (:func:`uncached_tokens`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, PretrainedConfig

SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def resolved_generation_value(
    name: str,
    generate_kwargs: Mapping[str, Any],
    generation_config: GenerationConfig | None,
    model_generation_config: GenerationConfig,
    default: Any = None,
) -> Any:
    """The value of generation setting ``name`` that ``generate`` will use: a keyword argument, else the passed
    ``generation_config``, else the model's, else ``default`` (``generate``'s own precedence)."""
    for value in (
        generate_kwargs.get(name),
        getattr(generation_config, name, None) if generation_config is not None else None,
        getattr(model_generation_config, name, None),
    ):
        if value is not None:
            return value
    return default


def fill_special_tokens(
    generate_kwargs: dict[str, Any],
    generation_config: GenerationConfig | None,
    model_generation_config: GenerationConfig,
    special_token_ids: Mapping[str, int | None],
) -> GenerationConfig | None:
    """Supply the ``bos/eos/pad_token_id`` of ``special_token_ids`` that neither the keyword arguments, the passed
    ``generation_config`` nor the model's set; returns the ``generation_config`` to pass on.

    A checkpoint saved without ``generation_config.json`` loads with a generation config built from ``config.json``,
    which lacks the decoder's special tokens (they live in the text sub-config, or in the tokenizer); this restores
    them at call time. Missing ids go into a copy of ``generation_config`` when one was passed (``generate`` warns
    when a config and generation keywords are mixed), otherwise into ``generate_kwargs``.
    """
    unknown = set(special_token_ids) - set(SPECIAL_TOKEN_FIELDS)
    if unknown:
        raise ValueError(f"special_token_ids takes {SPECIAL_TOKEN_FIELDS}, got {sorted(unknown)}")
    for field, value in special_token_ids.items():
        current = resolved_generation_value(field, generate_kwargs, generation_config, model_generation_config)
        if value is None or current is not None:
            continue
        if generation_config is None:
            generate_kwargs[field] = value
        else:
            generation_config = copy.deepcopy(generation_config)
            setattr(generation_config, field, value)
    return generation_config


def special_token_ids_from_tokenizer(
    tokenizer: Any, bos_token: str = "cls_token", eos_token: str = "sep_token", pad_token: str = "pad_token"
) -> dict[str, int | None]:
    """``{"bos_token_id", "eos_token_id", "pad_token_id"}`` read by name from a tokenizer (or a processor holding
    one): ALBEF's answers are ``[CLS] answer [SEP]``, BLIP's captions ``[DEC] caption [SEP]``."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return {
        field: getattr(tokenizer, f"{name}_id", None)
        for field, name in zip(SPECIAL_TOKEN_FIELDS, (bos_token, eos_token, pad_token))
    }


def add_decoder_cache(
    generate_kwargs: dict[str, Any],
    generation_config: GenerationConfig | None,
    model_generation_config: GenerationConfig,
    decoder_config: PretrainedConfig,
) -> None:
    """Put an empty ``DynamicCache`` laid out for ``decoder_config`` into ``generate_kwargs`` when ``generate`` would
    otherwise build its default one.

    ``generate`` sizes its default cache from the model config's text config, whose layer count need not be the
    decoder's (ALBEF's answer decoder has 6 layers whatever the text encoder has). A cache the caller passed, a
    ``cache_implementation`` or ``use_cache=False`` are left alone.
    """
    if generate_kwargs.get("cache") is not None:
        return
    settings = (generate_kwargs, generation_config, model_generation_config)
    use_cache = resolved_generation_value("use_cache", *settings, default=True)
    implementation = resolved_generation_value("cache_implementation", *settings)
    if use_cache and implementation is None:
        generate_kwargs["cache"] = DynamicCache(config=decoder_config)


def start_generation(
    model: Any, generate_kwargs: dict[str, Any], generation_config: GenerationConfig | None, start: str
) -> GenerationConfig | None:
    """The common start of a generative head's ``generate``: refuse a non-empty ``cache`` (``start`` says where every
    sequence starts, e.g. ``"answer from [CLS]"``) and fill the special tokens the settings lack from
    ``model.default_generation_config()`` (:func:`fill_special_tokens`); returns the ``generation_config`` to pass on."""
    cache = generate_kwargs.get("cache")
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError(f"generate starts every {start}: pass an empty cache (or none)")
    defaults = model.default_generation_config()
    return fill_special_tokens(
        generate_kwargs,
        generation_config,
        model.generation_config,
        {field: getattr(defaults, field) for field in SPECIAL_TOKEN_FIELDS},
    )


def finish_generation_kwargs(
    generate_kwargs: dict[str, Any],
    generation_config: GenerationConfig | None,
    model_generation_config: GenerationConfig,
    decoder_config: PretrainedConfig,
) -> dict[str, Any]:
    """``generate_kwargs`` with the decoder's cache (:func:`add_decoder_cache`) and the resolved
    ``generation_config``, ready for ``GenerationMixin.generate``."""
    add_decoder_cache(generate_kwargs, generation_config, model_generation_config, decoder_config)
    if generation_config is not None:
        generate_kwargs["generation_config"] = generation_config
    return generate_kwargs


def uncached_tokens(input_ids: torch.Tensor, next_sequence_length: int | None) -> torch.Tensor:
    """The trailing tokens the decoder has not seen: ``generate`` passes ``next_sequence_length`` (1 per step with
    a cache, the prompt's length at prefill) or ``None`` when every step re-runs the whole sequence."""
    if next_sequence_length is None:
        return input_ids
    return input_ids[:, -next_sequence_length:]


def decoding_step_inputs(
    model: Any,
    input_ids: torch.Tensor,
    states_name: str,
    states: Any,
    cache: Any,
    next_sequence_length: int | None,
    encoder: str = "image tower",
) -> dict[str, Any]:
    """One decoding step's ``forward`` inputs of a head decoding over states encoded once (BLIP's and CoCa's
    captioners): the tokens the cache has not seen, the states under ``states_name`` (an ``AttentionMemory`` shared by
    the beams, or with ``use_cache=False`` the states ``generate`` repeated per beam) and the cache. ``generate``'s
    attention mask is dropped: the decoded sequences hold no padding (prompts are unpadded)."""
    if states is None:
        raise ValueError(
            f"{type(model).__name__} decodes over {states_name}: call generate(pixel_values=...) (or "
            f"generate({states_name}=...)), which runs the {encoder} once"
        )
    return {
        "input_ids": uncached_tokens(input_ids, next_sequence_length),
        states_name: states,
        "cache": cache,
        "use_cache": cache is not None,
    }


def decode_generated(tokenizer: Any, sequences: torch.Tensor) -> list[str]:
    """Decode generated ids with special tokens (start, end, padding) dropped and surrounding spaces stripped;
    ``tokenizer`` may be a processor holding one."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]


__all__ = [
    "add_decoder_cache",
    "decode_generated",
    "decoding_step_inputs",
    "fill_special_tokens",
    "resolved_generation_value",
    "special_token_ids_from_tokenizer",
    "uncached_tokens",
]
