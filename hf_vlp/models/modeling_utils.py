"""Base class of every hf_vlp model: transformers' ``PreTrainedModel`` plus a model card on save and push."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from ..utils.sharding import VECTORIZED_ATTRIBUTE, savable_state_dict
from .vocabulary import resize_vocabulary_copies

MODEL_CARD_NAME = "README.md"


def render_model_card(model: Any, **options: Any) -> ModelCard | None:
    """:func:`hf_vlp.integrations.model_card.render_model_card`; ``None`` in the copy of this module that a
    remote-code export ships, which leaves cards to hf_vlp (imported by name, so that the copy does not bundle the card
    code, its templates and hf_vlp's pipelines)."""
    if not __name__.startswith("hf_vlp."):
        return None
    return importlib.import_module("hf_vlp.integrations.model_card").render_model_card(model, **options)


OUTPUT_FLAGS = ("output_attentions", "output_hidden_states")


class OutputKwargs(TypedDict, total=False):
    """The output switches every model ``forward`` takes as keyword arguments (transformers 5's convention):
    ``output_attentions``/``output_hidden_states`` (unset: ``config.output_*``) and ``return_dict`` (unset:
    ``config.return_dict``; ``False`` returns ``output.to_tuple()``)."""

    output_attentions: bool | None
    output_hidden_states: bool | None
    return_dict: bool | None


Forward = TypeVar("Forward", bound=Callable[..., Any])


def model_forward(forward: Forward) -> Forward:
    """Decorate a model's ``forward`` that ends in ``**kwargs: Unpack[OutputKwargs]``: the body finds
    ``kwargs["output_attentions"]``/``kwargs["output_hidden_states"]`` resolved to booleans (an unset flag takes the
    config's value), ``return_dict=False`` (given or from the config) turns the returned ``ModelOutput`` into its
    tuple (transformers' ``can_return_tuple``), and a keyword the forward does not take raises a ``TypeError`` naming
    it instead of vanishing into ``**kwargs``."""
    accepted = set(inspect.signature(forward).parameters) | set(OUTPUT_FLAGS)

    @functools.wraps(forward)
    def wrapper(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        unknown = sorted(set(kwargs) - accepted - {"return_dict"})
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward got unexpected keyword argument(s) {unknown}")
        check_nonempty_batch(self, args, kwargs)
        return_dict = kwargs.pop("return_dict", None)
        resolve_output_flags(self.config, kwargs)
        return as_returned(forward(self, *args, **kwargs), self.config, return_dict)

    wrapper.applies_output_contract = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def float_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """``module.<name>`` when it is a floating-point tensor; ``None`` when it was deleted, is ``None`` or is quantized
    (initialisation leaves such tensors alone)."""
    tensor = getattr(module, name, None)
    return tensor if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() else None


def resolve_output_flags(config: Any, kwargs: dict[str, Any]) -> None:
    """Set ``output_attentions``/``output_hidden_states`` in ``kwargs`` to booleans, an unset one from ``config``."""
    for flag in OUTPUT_FLAGS:
        value = kwargs.get(flag)
        kwargs[flag] = bool(getattr(config, flag, False) if value is None else value)


def as_returned(output: Any, config: Any, return_dict: bool | None) -> Any:
    """``output`` or its tuple: ``return_dict`` given, else ``config.return_dict`` (transformers' convention)."""
    if return_dict is None:
        return_dict = config.return_dict
    return output if return_dict or isinstance(output, tuple) else output.to_tuple()


def check_nonempty_batch(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A forward on an empty batch fails deep inside a reshape; say so up front."""
    for index, value in enumerate((*args, *kwargs.values())):
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 0:
            name = list(kwargs)[index - len(args)] if index >= len(args) else f"positional input {index}"
            raise ValueError(f"{type(model).__name__}.forward got an empty batch ({name} has 0 rows)")


def first_named_input(forward: Callable[..., Any]) -> str | None:
    """The name of ``forward``'s first input after ``self`` (``None`` when it takes ``*args``): a model's
    ``main_input_name``, which the ``Trainer`` uses to count input tokens and to pick the inputs it hands to metrics."""
    parameters = list(inspect.signature(forward).parameters.values())[1:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if parameters and parameters[0].kind in positional:
        return parameters[0].name
    return None


def takes_output_kwargs(forward: Callable[..., Any]) -> bool:
    """Whether ``forward`` ends in ``**kwargs: Unpack[OutputKwargs]`` (its annotation may be a string)."""
    for parameter in inspect.signature(forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return "OutputKwargs" in str(parameter.annotation)
    return False


class VlpPreTrainedModel(PreTrainedModel):
    """Adds to ``save_pretrained`` a ``README.md`` rendered from ``model_cards/<model_card_template>.md`` (kept if
    one is already there, e.g. written with measured metrics), makes ``push_to_hub`` upload that card instead
    of transformers' generic one, applies :func:`model_forward` to every ``forward`` that takes
    ``**kwargs: Unpack[OutputKwargs]`` and sets ``main_input_name`` to the first input of ``forward``."""

    model_card_template: str | None = None
    model_card_pipeline_tag: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Give the ``forward`` of every model class whose signature declares ``**kwargs: Unpack[OutputKwargs]`` the
        output contract of :func:`model_forward` (the declaration is the opt-in; the wrapping is done once here)."""
        super().__init_subclass__(**kwargs)
        forward = getattr(cls, "forward", None)
        if forward is None:
            return
        if not getattr(forward, "applies_output_contract", False) and takes_output_kwargs(forward):
            cls.forward = model_forward(forward)
        first_input = first_named_input(forward)
        if first_input is not None:
            cls.main_input_name = first_input
    # the task named in the card's evaluation results when there is no pipeline for it (e.g. NLVR2)
    model_card_task: str | None = None

    # sub-models with their own embeddings over the text vocabulary (e.g. VQA answer decoders), resized with it
    vocabulary_submodels: tuple[str, ...] = ()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """transformers' resize, then every other copy of the vocabulary follows: ``vocabulary_submodels``, the
        prediction heads' biases and the momentum towers and heads (:mod:`hf_vlp.models.vocabulary`)."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        resize_vocabulary_copies(self, embeddings.num_embeddings, mean_resizing)
        return embeddings

    def model_card_fields(self) -> dict[str, Any]:
        """Architecture-specific template fields (sizes, towers); overridden per architecture."""
        return {}

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation, safe for linear/convolution children without the usual tensors (quantized
        or weight-less layers): a weight that was deleted, is ``None`` or is not floating point (quantized) is left as
        it is, a bias likewise; such a layer's remaining float tensors get transformers' normal(0, std) / zeros."""
        weighted = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
        if isinstance(module, weighted):
            weight, bias = float_tensor(module, "weight"), float_tensor(module, "bias")
            usable_bias = bias is not None or (hasattr(module, "bias") and module.bias is None)
            if weight is None or not usable_bias:
                if weight is not None:
                    config = self.config
                    if hasattr(config, "initializer_range"):  # transformers' choice of std
                        std = config.initializer_range or 0.02
                    elif hasattr(config, "init_std"):
                        std = config.init_std
                    elif hasattr(config, "initializer_factor"):
                        std = config.initializer_factor
                    else:
                        std = getattr(config.get_text_config(), "initializer_range", 0.02)
                    init.normal_(weight, mean=0.0, std=std)
                if bias is not None:
                    init.zeros_(bias)
                return
        super()._init_weights(module)

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, remote_code: bool = False, **kwargs: Any
    ) -> None:
        """transformers' save plus the model card; ``remote_code=True`` then exports the folder as remote code
        (:func:`hf_vlp.integrations.remote_code.export_remote_code`; save the processor there first)."""
        state_dict = kwargs.get("state_dict")
        if state_dict is not None or getattr(self, VECTORIZED_ATTRIBUTE, ()):  # e.g. gathered from FSDP shards
            kwargs["state_dict"] = savable_state_dict(self, self.state_dict() if state_dict is None else state_dict)
        super().save_pretrained(save_directory, *args, **kwargs)
        card_path = Path(save_directory) / MODEL_CARD_NAME
        if self.model_card_template and kwargs.get("is_main_process", True) and not card_path.exists():
            card = render_model_card(self, model_name=Path(save_directory).name)
            if card is not None:
                card.save(card_path)
        if not kwargs.get("is_main_process", True):
            return
        if remote_code:
            # by name, not an import statement: the exported copy of this module must not bundle the exporter
            importlib.import_module("hf_vlp.integrations.remote_code").export_remote_code(save_directory)
        elif importlib.util.find_spec("hf_vlp") is not None:  # (the exported copy runs without hf_vlp)
            # a model loaded from an exported repo carries its auto_map, but this folder has no code
            importlib.import_module("hf_vlp.integrations.remote_code").drop_stale_auto_map(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        model_card: ModelCard | None = None,
        processor: Any = None,
        remote_code: bool = True,
    ) -> Any:
        """Upload the model as one commit: weights, config, generation config, ``processor`` (else the processor
        files of the folder it was loaded from), the code that loads it without hf_vlp (``remote_code``) and its
        card - the card of the folder it was loaded from, measured metrics included, when that folder holds one for
        this class (:func:`hf_vlp.integrations.hub.push_model`)."""
        if not __name__.startswith("hf_vlp."):  # the remote-code copy of this module: transformers' own push
            return super().push_to_hub(
                repo_id, commit_message=commit_message, commit_description=commit_description, private=private,
                token=token, revision=revision, create_pr=create_pr, max_shard_size=max_shard_size, tags=tags,
            )
        # by name, not an import statement: the remote-code copy of this module must not bundle the Hub code
        hub = importlib.import_module("hf_vlp.integrations.hub")
        return hub.push_model(
            self, repo_id, processor=processor, commit_message=commit_message, commit_description=commit_description,
            private=private, token=token, revision=revision, create_pr=create_pr, max_shard_size=max_shard_size,
            tags=tags, model_card=model_card, remote_code=remote_code,
        )
