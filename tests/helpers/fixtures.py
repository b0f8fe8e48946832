"""The recorded originals under ``tests/fixtures/originals/<name>``: their tensors, metadata and converted models.

Each fixture folder holds ``checkpoint.pth``, ``original_config.json``, ``vocab.txt`` and the recorded
``inputs.safetensors`` / ``outputs.safetensors``. Conversions are cached per (converter, fixture, options), so a
test module converts each checkpoint once and builds fresh models from the cached state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PreTrainedModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "originals"

Tensors = dict[str, torch.Tensor]


def fixture_dir(name: str) -> Path:
    """The folder of the recorded original ``name`` (e.g. ``albef_pretrain``)."""
    return FIXTURES / name


@functools.cache
def fixture_tensors(name: str) -> tuple[Tensors, Tensors]:
    """The recorded ``(inputs, outputs)`` of fixture ``name``; cached, so callers must not modify them in place."""
    folder = fixture_dir(name)
    return load_file(folder / "inputs.safetensors"), load_file(folder / "outputs.safetensors")


def fixture_inputs(name: str, **recorded_names: str) -> Tensors:
    """Recorded inputs of fixture ``name`` under a forward's argument names: ``argument="recorded name"``."""
    inputs, _ = fixture_tensors(name)
    return {argument: inputs[recorded] for argument, recorded in recorded_names.items()}


def fixture_metadata(name: str, file: str = "outputs") -> dict[str, str]:
    """The string metadata of ``<file>.safetensors`` (seeds, decoding settings the recording used)."""
    with safe_open(str(fixture_dir(name) / f"{file}.safetensors"), framework="pt") as handle:
        return handle.metadata()


@functools.cache
def converted_state(
    convert: Callable[..., object], name: str, model_class: type[PreTrainedModel] | None = None,
    with_tokenizer: bool = True, **options: object,
) -> tuple[dict, Tensors]:
    """``convert`` fixture ``name``'s checkpoint (with its original config, and its vocabulary unless
    ``with_tokenizer`` is false); returns the converted config as a dict and a copy of the state dict.

    ``model_class``, when given, is the head the converter must have produced.
    """
    folder = fixture_dir(name)
    tokenizer = {"tokenizer": folder / "vocab.txt"} if with_tokenizer else {}
    result = convert(folder / "checkpoint.pth", original_config=folder / "original_config.json", **tokenizer, **options)
    if model_class is not None:
        assert isinstance(result.model, model_class), type(result.model)
    return result.model.config.to_dict(), {key: value.clone() for key, value in result.model.state_dict().items()}


def model_from_state(
    model_class: type[PreTrainedModel], converted: tuple[dict, Tensors], implementation: str | None = None
) -> PreTrainedModel:
    """A fresh ``model_class`` in eval mode holding a converted state exactly (strict load)."""
    config, state = converted
    model = model_class(model_class.config_class.from_dict(config)).eval()
    model.load_state_dict(state, strict=True)
    if implementation is not None:
        model.set_attn_implementation(implementation)
    return model
