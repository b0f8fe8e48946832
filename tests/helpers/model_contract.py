"""One model tester for every hf_vlp head, in the spirit of transformers' ``ModelTesterMixin``.

A head is described once by a :class:`ModelContractCase`: its class, a tiny config factory, an inputs factory and
flags saying what it supports (text embeddings, ``output_hidden_states``/``output_attentions`` and where the per-layer
states are, a loss with which extra inputs, whether its outputs may be computed batch by batch, which encoders are
compiled/exported, ...). ``tests/models/test_model_contract.py`` lists the cases and runs every check of
:data:`CHECKS` that applies to a case, so a new architecture gets every check by adding one entry per head class.

The checks (``check_<name>(case, tmp_path)``) only use public transformers API plus ``_from_config`` (what the Auto
classes call to pass ``attn_implementation``); they raise ``AssertionError`` (or whatever the model raises) on a
broken contract. Conventions for case authors:

- configs have no dropout (the training-mode checks compare two runs) and the inputs factory draws everything from
  a generator seeded with ``seed``; inputs that make the head draw random numbers (hard negatives, MLM masking) are
  given explicitly;
- ``inputs_factory(config, batch, seed)`` returns forward keyword arguments without a loss, ``loss_inputs(config,
  inputs)`` the extra ones that make ``forward`` return ``loss`` (``None``: the head has no loss);
- inputs whose values index the batch (e.g. in-batch hard negatives) are named in ``batch_relative_inputs``: the
  Trainer check drops them (its batches are shuffled), and such heads have ``can_batch_split=False``.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

Inputs = dict[str, Any]

# tolerances: the same kernels on the same numbers are compared exactly; other batch shapes, kernels or recomputed
# activations up to float32 noise
CLOSE = dict(atol=1e-5, rtol=1e-4)
FLAGS = ("output_hidden_states", "output_attentions")
TEXT_EMBEDDINGS_ADDED = 3


# --------------------------------------------------------------------------------------------------- the case


@dataclass(frozen=True)
class StatesSpec:
    """Where a head returns one stack's per-layer states and what they must look like: ``path`` is the dotted
    attribute of the output holding ``hidden_states``/``attentions`` (``""``: the output itself); ``num_layers``
    layers run, so ``num_layers + 1`` hidden states ``[B, seq_len, hidden_size]`` and ``num_layers`` attention maps
    ``[B, num_heads, seq_len, seq_len]``."""

    path: str
    num_layers: int
    num_heads: int
    seq_len: int
    hidden_size: int


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder compiled and exported by the slow checks: ``method`` of the model (``"forward"`` for a tower model,
    ``"get_image_features"``...) called with the case inputs named in ``input_names``."""

    method: str
    input_names: tuple[str, ...]


@dataclass(frozen=True)
class ModelContractCase:
    """Everything the contract checks need to know about one head class (see the module docstring)."""

    model_class: type[PreTrainedModel]
    config_factory: Callable[[], PretrainedConfig]
    inputs_factory: Callable[[PretrainedConfig, int, int], Inputs]
    # extra forward kwargs that make the head return a loss; None: the head has no loss
    loss_inputs: Callable[[PretrainedConfig, Inputs], Inputs] | None = None
    # the transformers Auto classes that must resolve the head's config to the head class
    auto_classes: tuple[type, ...] = ()
    # get/set_input_embeddings are the text token embeddings (resize_token_embeddings applies)
    has_text_embeddings: bool = False
    output_hidden_states: bool = False
    output_attentions: bool = False
    # the per-layer states the flags return (None: the flags add outputs that are not per-layer tuples)
    states: Callable[[PretrainedConfig, Inputs], tuple[StatesSpec, ...]] | None = None
    # outputs of a batch equal the concatenated outputs of its parts (minus batch_coupled_outputs)
    can_batch_split: bool = True
    batch_coupled_outputs: tuple[str, ...] = ()
    batch_relative_inputs: tuple[str, ...] = ()
    encoders: tuple[EncoderSpec, ...] = ()
    # get_image_features/get_text_features (their pooler_output normalised = forward's image_embeds/text_embeds)
    projected_features: bool = False
    # a *WithProjection tower: the projected features' output name
    embeds_name: str | None = None
    multimodal_features: bool = False

    @property
    def name(self) -> str:
        return self.model_class.__name__

    @property
    def has_loss(self) -> bool:
        return self.loss_inputs is not None

    def build(
        self, config: PretrainedConfig | None = None, seed: int = 0, attn_implementation: str | None = None
    ) -> PreTrainedModel:
        """A freshly initialised model (seeded) in eval mode."""
        config = self.config_factory() if config is None else config
        torch.manual_seed(seed)
        if attn_implementation is None:
            model = self.model_class(config)
        else:
            model = self.model_class._from_config(config, attn_implementation=attn_implementation)
        return model.eval()

    def inputs(self, config: PretrainedConfig, batch: int = 2, seed: int = 0, with_loss: bool = False) -> Inputs:
        inputs = self.inputs_factory(config, batch, seed)
        if with_loss and self.loss_inputs is not None:
            inputs = {**inputs, **self.loss_inputs(config, inputs)}
        return inputs

    def flags(self) -> dict[str, bool]:
        """Every output flag the head supports, set."""
        return {flag: True for flag in FLAGS if getattr(self, flag)}


# --------------------------------------------------------------------------------------------------- output helpers


def flatten_output(output: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{dotted name: tensor}`` of every tensor in a (nested) ModelOutput / dict / tuple; ``None`` and non-tensor
    values (caches) are left out."""
    if isinstance(output, torch.Tensor):
        return {prefix: output}
    items: Iterator[tuple[Any, Any]]
    if isinstance(output, Mapping):  # ModelOutput is an OrderedDict of its non-None fields
        items = iter(output.items())
    elif isinstance(output, (tuple, list)):
        items = iter(enumerate(output))
    else:
        return {}
    flat: dict[str, torch.Tensor] = {}
    for key, value in items:
        flat.update(flatten_output(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def flatten_positional(output: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) output in order, ModelOutputs read as their ``to_tuple()``: a dict output and its
    ``return_dict=False`` tuple give the same list."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, ModelOutput):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)):
        return [tensor for value in output for tensor in flatten_positional(value)]
    return []


def top_field(name: str) -> str:
    return name.split(".", 1)[0]


def assert_outputs_close(
    actual: Any, expected: Any, *, exact: bool = False, exclude: tuple[str, ...] = (), what: str = "outputs"
) -> None:
    """The same tensor fields, each equal (``exact``) or close; ``exclude`` drops top-level fields."""
    actual_flat = {k: v for k, v in flatten_output(actual).items() if top_field(k) not in exclude}
    expected_flat = {k: v for k, v in flatten_output(expected).items() if top_field(k) not in exclude}
    assert actual_flat.keys() == expected_flat.keys(), (
        f"{what}: different fields: only in actual {sorted(actual_flat.keys() - expected_flat.keys())}, only in "
        f"expected {sorted(expected_flat.keys() - actual_flat.keys())}"
    )
    for name, tensor in expected_flat.items():
        tolerance = dict(atol=0.0, rtol=0.0) if exact else CLOSE
        torch.testing.assert_close(
            actual_flat[name], tensor, **tolerance, msg=lambda message, name=name: f"{what}, {name}: {message}"
        )


def resolve(output: Any, path: str) -> Any:
    for name in filter(None, path.split(".")):
        output = getattr(output, name)
    return output


def forward(model: nn.Module, inputs: Inputs, **kwargs: Any) -> Any:
    with torch.no_grad():
        return model(**clone_inputs(inputs), **kwargs)


def clone_inputs(inputs: Inputs) -> Inputs:
    def clone(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, tuple):
            return tuple(clone(v) for v in value)
        return value

    return {name: clone(value) for name, value in inputs.items()}


def split_inputs(inputs: Inputs, batch: int, start: int, stop: int) -> Inputs:
    """Rows ``start:stop`` of every batch-major input (tensors, tuples of tensors); other values as they are."""

    def rows(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
            return value[start:stop]
        if isinstance(value, tuple):
            return tuple(rows(v) for v in value)
        return value

    return {name: rows(value) for name, value in inputs.items()}


def text_config_of(config: PretrainedConfig) -> PretrainedConfig:
    return getattr(config, "text_config", None) or config


def all_configs(config: PretrainedConfig) -> dict[str, PretrainedConfig]:
    """The config and its sub-configs (``text_config``, ``vision_config``, ...), by name."""
    found = {"config": config}
    for name in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, name, None)
        if isinstance(sub, PretrainedConfig):
            found[name] = sub
    for name, value in vars(config).items():
        if isinstance(value, PretrainedConfig):
            found[name] = value
    return found


def active_dropouts(model: nn.Module) -> list[str]:
    """Modules that would draw random numbers in training mode: dropout / drop path with a positive rate, or an
    attention module with a positive ``dropout``."""
    active = []
    for name, module in model.named_modules():
        rates = [getattr(module, "dropout", None)]
        if "Drop" in type(module).__name__:
            rates += [getattr(module, attribute, None) for attribute in ("p", "rate", "drop_prob")]
        if any(isinstance(rate, float) and rate > 0 for rate in rates):
            active.append(name)
    return active


def with_token_id(inputs: Inputs, token_id: int) -> Inputs:
    """A copy of ``inputs`` where every ``*input_ids`` tensor holds ``token_id`` at row 0, position 1."""
    changed = clone_inputs(inputs)
    for name, value in changed.items():
        if name.endswith("input_ids") and isinstance(value, torch.Tensor):
            value[0, 1] = token_id
    return changed


# --------------------------------------------------------------------------------------------------- checks


def check_save_load(case: ModelContractCase, tmp_path: Path) -> None:
    """``save_pretrained`` writes safetensors; ``from_pretrained`` reports no missing/unexpected/mismatched weight,
    returns an eval-mode model with the same state and bit-identical outputs."""
    model = case.build()
    inputs = case.inputs(model.config, with_loss=True)
    expected = forward(model, inputs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert not list(tmp_path.glob("*.bin"))
    loaded, info = case.model_class.from_pretrained(tmp_path, output_loading_info=True)
    problems = {key: info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
    assert not problems, problems
    assert type(loaded) is case.model_class and not loaded.training
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for name, tensor in saved_state.items():
        assert torch.equal(tensor, loaded_state[name]), f"{name} differs after the round trip"
    assert_outputs_close(forward(loaded, inputs), expected, exact=True, what="reloaded model")


def check_auto_resolution(case: ModelContractCase, tmp_path: Path) -> None:
    """``AutoConfig`` resolves the config's ``model_type`` (and a saved config) to its class, and every Auto class
    registered for the head builds exactly the head class from the config."""
    config = case.config_factory()
    assert type(AutoConfig.for_model(config.model_type)) is type(config)
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert type(reloaded) is type(config)
    assert reloaded.to_diff_dict() == config.to_diff_dict()
    for auto_class in case.auto_classes:
        model = auto_class.from_config(config)
        assert type(model) is case.model_class, f"{auto_class.__name__} built {type(model).__name__}"


def check_return_dict_false(case: ModelContractCase, tmp_path: Path) -> None:
    """``return_dict=False`` (as a kwarg and as ``config.return_dict``) returns a tuple holding what the dict
    output's ``to_tuple()`` holds, every supported output flag set."""
    model = case.build()
    inputs = case.inputs(model.config, with_loss=True)
    flags = case.flags()
    as_dict = forward(model, inputs, **flags)
    assert isinstance(as_dict, ModelOutput), type(as_dict)
    expected = flatten_positional(as_dict)
    for route in ("return_dict=False", "config.return_dict=False"):
        if route.startswith("config"):
            model.config.return_dict = False
            output = forward(model, inputs, **flags)
        else:
            output = forward(model, inputs, **flags, return_dict=False)
        assert isinstance(output, tuple) and not isinstance(output, ModelOutput), f"{route}: {type(output).__name__}"
        actual = flatten_positional(output)
        assert len(actual) == len(expected), f"{route}: {len(actual)} tensors, to_tuple() holds {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            torch.testing.assert_close(a, e, atol=0.0, rtol=0.0, msg=lambda m, r=route, i=index: f"{r}, item {i}: {m}")


def _check_states(case: ModelContractCase, output: Any, flag: str, config: PretrainedConfig, inputs: Inputs) -> None:
    if case.states is None:
        return
    batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
    for spec in case.states(config, inputs):
        holder = resolve(output, spec.path)
        where = spec.path or "output"
        if flag == "output_hidden_states":
            states = holder.hidden_states
            assert isinstance(states, tuple), f"{where}.hidden_states is {type(states).__name__}"
            assert len(states) == spec.num_layers + 1, (
                f"{where}: {len(states)} hidden states for {spec.num_layers} layers (expected layers + 1)"
            )
            shapes = {tuple(s.shape) for s in states}
            assert shapes == {(batch, spec.seq_len, spec.hidden_size)}, f"{where}.hidden_states shapes {shapes}"
        else:
            maps = holder.attentions
            assert isinstance(maps, tuple), f"{where}.attentions is {type(maps).__name__}"
            assert len(maps) == spec.num_layers, f"{where}: {len(maps)} attention maps for {spec.num_layers} layers"
            shapes = {tuple(m.shape) for m in maps}
            assert shapes == {(batch, spec.num_heads, spec.seq_len, spec.seq_len)}, f"{where}.attentions {shapes}"
            for index, probs in enumerate(maps):
                torch.testing.assert_close(
                    probs.sum(-1), torch.ones_like(probs.sum(-1)), msg=lambda m, i=index: f"{where}.attentions[{i}]"
                )


def _check_output_flag(case: ModelContractCase, flag: str) -> None:
    """The flag as a kwarg adds outputs and changes no other; ``config.<flag> = True`` gives the same outputs as the
    kwarg; the per-layer states have the spec'd count and shapes."""
    config = case.config_factory()
    model = case.build(config, attn_implementation="eager" if flag == "output_attentions" else None)
    inputs = case.inputs(model.config, with_loss=True)
    plain = forward(model, inputs)
    flagged = forward(model, inputs, **{flag: True})
    plain_flat, flagged_flat = flatten_output(plain), flatten_output(flagged)
    added = sorted(flagged_flat.keys() - plain_flat.keys())
    assert added, f"{flag}=True returned no additional output"
    assert_outputs_close(
        {k: v for k, v in flagged_flat.items() if k in plain_flat}, plain_flat, what=f"outputs with {flag}=True"
    )
    _check_states(case, flagged, flag, model.config, inputs)
    setattr(model.config, flag, True)
    from_config = forward(model, inputs)
    setattr(model.config, flag, False)
    assert_outputs_close(from_config, flagged, exact=True, what=f"config.{flag}=True vs the {flag}=True kwarg")


def check_output_hidden_states(case: ModelContractCase, tmp_path: Path) -> None:
    _check_output_flag(case, "output_hidden_states")


def check_output_attentions(case: ModelContractCase, tmp_path: Path) -> None:
    _check_output_flag(case, "output_attentions")


def _attention_fields(output: Any) -> set[str]:
    return {k for k in flatten_output(output) if "attentions" in k}


def check_sdpa_matches_eager(case: ModelContractCase, tmp_path: Path) -> None:
    """Built with ``attn_implementation="sdpa"`` and ``"eager"`` (every sub-config following) and the same weights,
    the outputs agree, with and without ``output_attentions``; asking for attentions changes no other output."""
    models = {}
    for implementation in ("sdpa", "eager"):
        models[implementation] = case.build(attn_implementation=implementation)
        wrong = {
            name: sub._attn_implementation
            for name, sub in all_configs(models[implementation].config).items()
            if sub._attn_implementation != implementation
        }
        assert not wrong, f"attn_implementation={implementation!r} did not reach {wrong}"
    models["eager"].load_state_dict(models["sdpa"].state_dict())
    inputs = case.inputs(models["sdpa"].config, with_loss=True)
    outputs = {name: forward(model, inputs) for name, model in models.items()}
    assert_outputs_close(outputs["eager"], outputs["sdpa"], what="eager vs sdpa")
    if not case.output_attentions:
        return
    with_maps = {name: forward(model, inputs, output_attentions=True) for name, model in models.items()}
    assert_outputs_close(with_maps["eager"], with_maps["sdpa"], what="eager vs sdpa, output_attentions=True")
    for name in models:
        maps = _attention_fields(with_maps[name])
        assert maps, f"{name}: output_attentions=True returned no attentions"
        assert_outputs_close(
            {k: v for k, v in flatten_output(with_maps[name]).items() if k not in maps},
            outputs[name],
            what=f"{name}: outputs with output_attentions=True vs without",
        )


def check_gradient_checkpointing(case: ModelContractCase, tmp_path: Path) -> None:
    """In training mode (no dropout), ``gradient_checkpointing_enable()`` gives the same loss and gradients."""
    reference = case.build().train()
    assert not active_dropouts(reference), f"the case config has dropout: {active_dropouts(reference)[:5]}"
    model = copy.deepcopy(reference)
    assert model.supports_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()), "no layer is checkpointed"
    inputs = case.inputs(model.config, with_loss=True)
    losses = {}
    for name, network in (("reference", reference), ("checkpointed", model)):
        loss = network(**clone_inputs(inputs)).loss
        loss.backward()
        losses[name] = loss.detach()
    torch.testing.assert_close(losses["checkpointed"], losses["reference"], atol=1e-6, rtol=1e-5)
    checkpointed = dict(model.named_parameters())
    with_grad = 0
    for name, parameter in reference.named_parameters():
        grad, expected = checkpointed[name].grad, parameter.grad
        assert (grad is None) == (expected is None), (
            f"{name}: gradient {'missing' if grad is None else 'present'} with checkpointing only"
        )
        if expected is not None:
            with_grad += 1
            torch.testing.assert_close(grad, expected, **CLOSE, msg=lambda m, n=name: f"grad of {n}: {m}")
    assert with_grad, "no parameter got a gradient"


def check_batching_equivalence(case: ModelContractCase, tmp_path: Path) -> None:
    """The outputs of a batch of 4 equal the concatenated outputs of its halves (every supported flag set; fields
    coupling the batch excluded, scalar losses skipped; an output may hold k rows per example, example-major)."""
    model = case.build()
    batch = 4
    inputs = case.inputs(model.config, batch=batch, with_loss=True)
    flags = case.flags()
    whole = flatten_output(forward(model, inputs, **flags))
    halves = [flatten_output(forward(model, split_inputs(inputs, batch, a, a + 2), **flags)) for a in (0, 2)]
    compared = 0
    for name, tensor in whole.items():
        if top_field(name) in case.batch_coupled_outputs or tensor.ndim == 0:
            continue
        # rows are examples, or k rows per example in example order (e.g. the image tower over image pairs)
        assert tensor.shape[0] % batch == 0, f"{name} {tuple(tensor.shape)} is not batch-major"
        parts = torch.cat([half[name] for half in halves])
        torch.testing.assert_close(tensor, parts, **CLOSE, msg=lambda m, n=name: f"{n}: {m}")
        compared += 1
    assert compared, "no output compared"


def check_determinism(case: ModelContractCase, tmp_path: Path) -> None:
    """Two eval-mode forwards on the same inputs give bit-identical outputs."""
    model = case.build()
    inputs = case.inputs(model.config, with_loss=True)
    assert_outputs_close(forward(model, inputs), forward(model, inputs), exact=True, what="second forward")


def check_input_embeddings(case: ModelContractCase, tmp_path: Path) -> None:
    """``get_input_embeddings`` returns the token embedding (text heads; the patch embedding module for image-only
    heads); ``set_input_embeddings`` replaces it and the forward uses the new one."""
    model = case.build()
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, nn.Module), type(embeddings)
    if not case.has_text_embeddings:  # an image-only head: the patch embedding, as transformers' vision models
        return
    vocab = text_config_of(model.config).vocab_size
    assert isinstance(embeddings, nn.Embedding) and embeddings.num_embeddings == vocab, embeddings
    inputs = case.inputs(model.config, with_loss=True)
    before = forward(model, inputs)
    torch.manual_seed(1)
    replacement = nn.Embedding(vocab, embeddings.embedding_dim)
    model.set_input_embeddings(replacement)
    assert model.get_input_embeddings() is replacement
    after = forward(model, inputs)
    changed = [
        name for name, tensor in flatten_output(before).items()
        if not torch.equal(tensor, flatten_output(after)[name])
    ]
    assert changed, "set_input_embeddings did not change any output"


def check_resize_token_embeddings(case: ModelContractCase, tmp_path: Path) -> None:
    """``resize_token_embeddings(vocab + 3)``: the text config's vocab, every embedding of the old vocabulary size
    (momentum towers, answer decoders included) and every vocabulary-sized output follow; the new highest id runs
    (loss included) and the resized model saves and loads."""
    model = case.build()
    old = text_config_of(model.config).vocab_size
    new = old + TEXT_EMBEDDINGS_ADDED
    inputs = case.inputs(model.config, with_loss=True)
    vocab_outputs = [k for k, t in flatten_output(forward(model, inputs)).items() if t.ndim and t.shape[-1] == old]
    copies = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.num_embeddings == old]
    assert copies, "no embedding of the vocabulary size"
    model.resize_token_embeddings(new)
    assert text_config_of(model.config).vocab_size == new
    stale = [name for name in copies if model.get_submodule(name).num_embeddings != new]
    assert not stale, f"embeddings left at the old vocabulary size {old}: {stale}"
    output_embeddings = model.get_output_embeddings()
    if output_embeddings is not None:
        assert output_embeddings.weight.shape[0] == new
    new_inputs = with_token_id(inputs, new - 1)
    resized = forward(model, new_inputs)
    flat = flatten_output(resized)
    not_resized = {k: tuple(flat[k].shape) for k in vocab_outputs if flat[k].shape[-1] != new}
    assert not not_resized, f"vocabulary-sized outputs not resized: {not_resized}"
    model.save_pretrained(tmp_path)
    loaded = case.model_class.from_pretrained(tmp_path)
    assert text_config_of(loaded.config).vocab_size == new
    assert_outputs_close(forward(loaded, new_inputs), resized, exact=True, what="resized model reloaded")


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Inputs]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Inputs:
        return self.items[index]


def _collate(items: list[Inputs]) -> Inputs:
    """Stack the tensors; other values (``return_loss=True``) are the same in every item."""
    batch = {}
    for name, value in items[0].items():
        batch[name] = torch.stack([item[name] for item in items]) if isinstance(value, torch.Tensor) else value
    return batch


def check_trainer_step(case: ModelContractCase, tmp_path: Path) -> None:
    """One step of the stock ``Trainer`` on a tiny dataset of the head's inputs: a finite loss, trainable parameters
    change, frozen ones (momentum towers) do not."""
    model = case.build().train()
    batch = 4
    inputs = case.inputs(model.config, batch=batch, with_loss=True)
    inputs = {k: v for k, v in inputs.items() if k not in case.batch_relative_inputs}
    items = [
        {k: (v[i] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == batch else v) for k, v in inputs.items()}
        for i in range(batch)
    ]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_ListDataset(items), data_collator=_collate)
    result = trainer.train()
    assert result.global_step == 1
    assert math.isfinite(result.training_loss), result.training_loss
    parameters = dict(trainer.model.named_parameters())
    changed = [n for n, p in parameters.items() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert changed, "no trainable parameter changed"
    frozen = [n for n, p in parameters.items() if not p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert not frozen, f"frozen parameters changed: {frozen[:5]}"


def check_main_input_name(case: ModelContractCase, tmp_path: Path) -> None:
    """``main_input_name`` is the first argument of ``forward`` (named, not ``*args``)."""
    parameters = list(inspect.signature(case.model_class.forward).parameters.values())[1:]
    assert parameters, "forward takes no argument"
    first = parameters[0]
    assert first.kind in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD), (
        f"forward's first argument is {first}: main_input_name {case.model_class.main_input_name!r} cannot be checked"
    )
    assert case.model_class.main_input_name == first.name, (
        f"main_input_name {case.model_class.main_input_name!r} but forward starts with {first.name!r}"
    )


def check_projected_features(case: ModelContractCase, tmp_path: Path) -> None:
    """``get_image_features``/``get_text_features`` return a ``BaseModelOutputWithPooling`` whose ``pooler_output``
    is the projected feature (L2-normalised: forward's ``image_embeds``/``text_embeds``)."""
    model = case.build()
    inputs = case.inputs(model.config)
    output = forward(model, inputs)
    text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask") if k in inputs}
    for method, kwargs, embeds in (
        ("get_image_features", {"pixel_values": inputs["pixel_values"]}, output.image_embeds),
        ("get_text_features", text_inputs, output.text_embeds),
    ):
        with torch.no_grad():
            features = getattr(model, method)(**kwargs)
        assert isinstance(features, BaseModelOutputWithPooling), f"{method} returned {type(features).__name__}"
        assert features.last_hidden_state is not None, f"{method}: no last_hidden_state"
        pooled = features.pooler_output
        torch.testing.assert_close(
            nn.functional.normalize(pooled, dim=-1), embeds, **CLOSE, msg=lambda m, x=method: f"{x}: {m}"
        )


def check_projection_output_names(case: ModelContractCase, tmp_path: Path) -> None:
    """A ``*WithProjection`` tower names its projected features ``image_embeds``/``text_embeds``."""
    model = case.build()
    output = forward(model, case.inputs(model.config))
    assert case.embeds_name in output.keys(), f"no {case.embeds_name} among {list(output.keys())}"
    embeds = output[case.embeds_name]
    assert embeds.shape == (2, model.config.projection_dim), tuple(embeds.shape)


def check_multimodal_features(case: ModelContractCase, tmp_path: Path) -> None:
    """``get_multimodal_features(input_ids, pixel_values, attention_mask)`` (transformers' BLIP API): one feature row
    per (image b, text b) pair."""
    model = case.build()
    assert hasattr(model, "get_multimodal_features"), f"{case.name} has no get_multimodal_features"
    inputs = case.inputs(model.config)
    with torch.no_grad():
        features = model.get_multimodal_features(
            input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"]
        )
    if isinstance(features, ModelOutput):
        features = features.pooler_output
    assert isinstance(features, torch.Tensor) and features.ndim == 2 and features.shape[0] == 2, features


class _MethodModule(nn.Module):
    """``model.<method>(**kwargs)`` as a module's forward (what torch.compile / torch.export take)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, **kwargs: Any) -> Any:
        if self.method == "forward":
            return self.model(**kwargs)
        return getattr(self.model, self.method)(**kwargs)


def _encoders(case: ModelContractCase) -> Iterator[tuple[str, _MethodModule, Inputs, Any]]:
    model = case.build()
    inputs = case.inputs(model.config)
    for spec in case.encoders:
        module = _MethodModule(model, spec.method).eval()
        kwargs = {name: inputs[name] for name in spec.input_names}
        yield spec.method, module, kwargs, forward(module, kwargs)


def check_torch_compile(case: ModelContractCase, tmp_path: Path) -> None:
    """Each encoder under ``torch.compile(backend="eager")`` matches eager."""
    for method, module, kwargs, expected in _encoders(case):
        torch._dynamo.reset()
        compiled = torch.compile(module, backend="eager")
        assert_outputs_close(forward(compiled, kwargs), expected, what=f"compiled {method}")


def check_torch_export(case: ModelContractCase, tmp_path: Path) -> None:
    """Each encoder exports with ``torch.export.export`` and the exported program matches eager."""
    for method, module, kwargs, expected in _encoders(case):
        program = torch.export.export(module, args=(), kwargs=clone_inputs(kwargs))
        assert_outputs_close(forward(program.module(), kwargs), expected, what=f"exported {method}")


# --------------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Check:
    function: Callable[[ModelContractCase, Path], None]
    applies: Callable[[ModelContractCase], bool] = lambda case: True
    slow: bool = False


CHECKS: dict[str, Check] = {
    "save_load": Check(check_save_load),
    "auto_resolution": Check(check_auto_resolution),
    "return_dict_false": Check(check_return_dict_false),
    "output_hidden_states": Check(check_output_hidden_states, lambda c: c.output_hidden_states),
    "output_attentions": Check(check_output_attentions, lambda c: c.output_attentions),
    "sdpa_matches_eager": Check(check_sdpa_matches_eager),
    "gradient_checkpointing": Check(check_gradient_checkpointing, lambda c: c.has_loss),
    "batching_equivalence": Check(check_batching_equivalence, lambda c: c.can_batch_split),
    "determinism": Check(check_determinism),
    "input_embeddings": Check(check_input_embeddings),
    "resize_token_embeddings": Check(check_resize_token_embeddings, lambda c: c.has_text_embeddings),
    "trainer_step": Check(check_trainer_step, lambda c: c.has_loss),
    "main_input_name": Check(check_main_input_name),
    "projected_features": Check(check_projected_features, lambda c: c.projected_features),
    "projection_output_names": Check(check_projection_output_names, lambda c: c.embeds_name is not None),
    "multimodal_features": Check(check_multimodal_features, lambda c: c.multimodal_features),
    "torch_compile": Check(check_torch_compile, lambda c: bool(c.encoders), slow=True),
    "torch_export": Check(check_torch_export, lambda c: bool(c.encoders), slow=True),
}


__all__ = [
    "CHECKS",
    "Check",
    "EncoderSpec",
    "ModelContractCase",
    "StatesSpec",
    "assert_outputs_close",
    "flatten_output",
    "flatten_positional",
]
