"""The one module that touches transformers' private internals.

Everything here overrides or calls a transformers method or attribute that is not public API (it may be renamed or
change its signature in any release). Model, generation and processing code uses the mixins and functions below
instead of naming those internals; ``tests/integrations/test_compat.py`` checks that each one still exists with the
signature relied on, so an upgrade fails there, naming the method, rather than deep inside a model.

Internals used (see :data:`PRIVATE_API`):

- ``PreTrainedModel._adjust_missing_and_unexpected_keys`` (loading hook): :class:`LoadedKeysRecorderMixin`.
- ``PreTrainedModel._initialize_weights`` and the ``_is_hf_initialized`` flag: :func:`initialize_modules_now`,
  :func:`is_loaded_from_checkpoint`.
- ``PreTrainedModel.get_expanded_tied_weights_keys`` (override, to tie regardless of ``config.tie_word_embeddings``):
  :class:`StructuralTiedWeightsMixin`.
- ``GenerationMixin._update_finished_beams`` / ``_check_early_stop_heuristic`` (beam search internals):
  :class:`BeamSearchHooksMixin`.
- ``BaseImageProcessor._prepare_images_structure`` (how a call's ``images`` are flattened):
  :class:`ImageStructureHookMixin`.
- accelerate's ``AcceleratorState(_from_accelerator=True)`` and its ``distributed_type`` / ``fsdp_plugin`` fields:
  :func:`enable_fsdp_on_cpu` (accelerate forms FSDP only on accelerators; on the CPU it silently runs DDP).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from accelerate.state import AcceleratorState, PartialState
from transformers import GenerationMixin, PreTrainedModel, TrainingArguments
from transformers.image_processing_utils import BaseImageProcessor

# (class, private name, parameter names relied on); None when only the attribute's existence matters
PRIVATE_API: tuple[tuple[type, str, tuple[str, ...] | None], ...] = (
    (PreTrainedModel, "_adjust_missing_and_unexpected_keys", ("self", "loading_info")),
    (PreTrainedModel, "_initialize_weights", ("self", "module")),
    (PreTrainedModel, "get_expanded_tied_weights_keys", ("self", "all_submodels")),
    (
        GenerationMixin,
        "_update_finished_beams",
        ("topk_running_sequences", "topk_log_probs", "cur_len", "decoder_prompt_len", "length_penalty"),
    ),
    (GenerationMixin, "_check_early_stop_heuristic", ("decoder_prompt_len",)),
    (BaseImageProcessor, "_prepare_images_structure", ("self", "images", "expected_ndims")),
    (AcceleratorState, "__init__", ("cpu", "fsdp_plugin", "dynamo_plugin", "_from_accelerator")),
)
# the attribute transformers sets on parameters/buffers/modules it loaded or initialised
INITIALIZED_FLAG = "_is_hf_initialized"


def is_loaded_from_checkpoint(tensor: torch.Tensor) -> bool:
    """Whether transformers flagged ``tensor`` as loaded from a checkpoint (or already initialised), so an
    ``_init_weights`` must leave it alone (e.g. a restored feature queue)."""
    return bool(getattr(tensor, INITIALIZED_FLAG, False))


@torch.no_grad()
def initialize_modules_now(model: PreTrainedModel, *modules: nn.Module) -> None:
    """Run ``model``'s weight initialisation on ``modules`` now (children first, as ``post_init`` does) instead of at
    the model's ``post_init``; ``post_init`` then skips them. Used where the order of random draws must stay what it
    was when these modules belonged to a nested sub-model with its own ``post_init``."""

    def initialize_children_first(module: nn.Module) -> None:
        for child in module.children():
            initialize_children_first(child)
        model._initialize_weights(module)

    for module in modules:
        initialize_children_first(module)


class LoadedKeysRecorderMixin:
    """Records the keys a ``from_pretrained`` checkpoint lacked (before ``_keys_to_ignore_on_load_missing`` filters
    them) as ``self.missing_keys_on_load()``; put it before the ``PreTrainedModel`` base."""

    def missing_keys_on_load(self) -> tuple[str, ...]:
        """The missing keys of the last load, once (they are cleared when read)."""
        return self.__dict__.pop("_missing_keys_on_load", ())

    def _adjust_missing_and_unexpected_keys(self, loading_info: Any) -> None:
        self.__dict__["_missing_keys_on_load"] = tuple(loading_info.missing_keys)
        super()._adjust_missing_and_unexpected_keys(loading_info)


class StructuralTiedWeightsMixin:
    """Ties the instance's ``_tied_weights_keys`` (already expanded parameter names) whatever
    ``config.tie_word_embeddings`` says: for weights shared by construction (e.g. paired cross-attentions), not
    word embeddings."""

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys)


class BeamSearchHooksMixin:
    """Turns two beam-search internals of ``GenerationMixin`` into overridable hooks: :meth:`adjust_finished_beams`
    gets the keyword arguments of ``_update_finished_beams`` (finalising hypotheses) and :meth:`adjust_early_stop`
    those of ``_check_early_stop_heuristic``; each returns the (possibly changed) arguments. Put it before
    ``GenerationMixin``."""

    @staticmethod
    def beam_search_hooks_missing() -> list[str]:
        """The hooked ``GenerationMixin`` methods this transformers version lacks (empty when all exist)."""
        hooked = ("_update_finished_beams", "_check_early_stop_heuristic")
        return [name for name in hooked if not hasattr(GenerationMixin, name)]

    def adjust_finished_beams(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return arguments

    def adjust_early_stop(self, arguments: dict[str, Any]) -> dict[str, Any]:
        return arguments

    def _update_finished_beams(self, **kwargs: Any) -> Any:
        return super()._update_finished_beams(**self.adjust_finished_beams(kwargs))

    def _check_early_stop_heuristic(self, **kwargs: Any) -> Any:
        return super()._check_early_stop_heuristic(**self.adjust_early_stop(kwargs))


class ImageStructureHookMixin:
    """Lets an image processor decide how a call's ``images`` argument becomes a flat list of single images
    (:meth:`flatten_images`) through ``BaseImageProcessor._prepare_images_structure``; put it before the image
    processor base."""

    def flatten_images(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def _prepare_images_structure(self, images: Any, expected_ndims: int = 3) -> list[Any]:
        return self.flatten_images(images, expected_ndims)


__all__ = [
    "INITIALIZED_FLAG",
    "PRIVATE_API",
    "BeamSearchHooksMixin",
    "ImageStructureHookMixin",
    "LoadedKeysRecorderMixin",
    "StructuralTiedWeightsMixin",
    "initialize_modules_now",
    "is_loaded_from_checkpoint",
]


def fsdp_requested(args: TrainingArguments) -> bool:
    """Whether this run asked for FSDP: ``--fsdp`` (``args.fsdp``) or ``accelerate launch --use_fsdp``
    (``ACCELERATE_USE_FSDP``, with the plugin configured by accelerate's ``FSDP_*`` variables)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def enable_fsdp_on_cpu(args: TrainingArguments) -> bool:
    """Make FSDP (``--fsdp`` or ``accelerate launch --use_fsdp``) shard on CPU processes too; returns whether it
    had to.

    accelerate enables FSDP only for accelerator device types: processes that meet in a gloo group on the CPU get
    plain DDP although FSDP was asked for (the Trainer then trains unsharded without a word). Before the Trainer
    creates its ``Accelerator``, this initialises accelerate's shared state as the Trainer would and marks it FSDP with
    the plugin the Trainer would build; the Trainer then finds FSDP enabled and prepares the model with
    ``fully_shard`` (FSDP2 on a CPU device mesh). A no-op without FSDP, with one process, or off the CPU.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, TorchDynamoPlugin

    if not fsdp_requested(args) or args.world_size <= 1 or args.device.type != "cpu":
        return False
    plugin = FullyShardedDataParallelPlugin(**(args.fsdp_plugin_args or {}))  # no arguments: from FSDP_* variables
    state = AcceleratorState(cpu=True, fsdp_plugin=plugin, dynamo_plugin=TorchDynamoPlugin(), _from_accelerator=True)
    if state.distributed_type == DistributedType.FSDP:
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"FSDP on the CPU expected accelerate's MULTI_CPU state, found {state.distributed_type}")
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState().distributed_type = DistributedType.FSDP  # as accelerate records it; AcceleratorState() copies it
    return True
