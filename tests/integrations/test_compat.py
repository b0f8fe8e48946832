"""The private transformers internals hf_vlp relies on still exist with the signatures it uses.

Every name here is reached only through :mod:`hf_vlp.integrations.compat`; when a transformers upgrade renames one or
changes its parameters, these tests fail naming the method instead of a model failing deep inside loading or
generation."""

import inspect

import pytest
import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel

from hf_vlp.integrations.compat import (
    INITIALIZED_FLAG,
    PRIVATE_API,
    BeamSearchHooksMixin,
    initialize_modules_now,
    is_loaded_from_checkpoint,
)


@pytest.mark.parametrize(
    ("owner", "name", "parameters"), PRIVATE_API, ids=[f"{owner.__name__}.{name}" for owner, name, _ in PRIVATE_API]
)
def test_private_transformers_method_exists_with_the_parameters_we_pass(owner, name, parameters) -> None:
    method = getattr(owner, name, None)
    assert method is not None, f"transformers' {owner.__name__}.{name} is gone; update hf_vlp/integrations/compat.py"
    if parameters is not None:
        signature = inspect.signature(method)
        missing = [parameter for parameter in parameters if parameter not in signature.parameters]
        assert not missing, (
            f"transformers' {owner.__name__}.{name} no longer takes {missing} (signature {signature}); update "
            "hf_vlp/integrations/compat.py"
        )


def test_beam_search_hooks_are_all_present() -> None:
    assert BeamSearchHooksMixin.beam_search_hooks_missing() == [], (
        "GenerationMixin lacks beam-search methods that BeamSearchHooksMixin overrides"
    )


def test_beam_search_hooks_pass_the_keyword_arguments_through_the_adjustments() -> None:
    seen = {}

    class Base:
        def _update_finished_beams(self, **kwargs):
            seen["finished"] = kwargs
            return "finished"

        def _check_early_stop_heuristic(self, **kwargs):
            seen["early"] = kwargs
            return "early"

    class Hooked(BeamSearchHooksMixin, Base):
        def adjust_finished_beams(self, arguments):
            return {**arguments, "cur_len": arguments["cur_len"] + 1}

    model = Hooked()
    assert model._update_finished_beams(cur_len=3) == "finished" and seen["finished"] == {"cur_len": 4}
    assert model._check_early_stop_heuristic(decoder_prompt_len=2) == "early" and seen["early"] == {"decoder_prompt_len": 2}


def test_generation_mixin_beam_search_still_calls_the_hooked_methods_by_keyword() -> None:
    source = inspect.getsource(GenerationMixin)
    for name in ("_update_finished_beams", "_check_early_stop_heuristic"):
        assert f"self.{name}(" in source, f"GenerationMixin no longer calls self.{name}; BeamSearchHooksMixin is dead"


def test_loaded_flag_name_and_initialize_modules_now() -> None:
    class Tiny(PreTrainedModel):
        config_class = None

        def _init_weights(self, module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                module.weight.data.fill_(0.5)

    model = Tiny(PretrainedConfig())
    layer = nn.Linear(2, 2)
    assert not is_loaded_from_checkpoint(layer.weight)
    initialize_modules_now(model, layer)
    assert torch.equal(layer.weight, torch.full((2, 2), 0.5))
    assert getattr(layer, INITIALIZED_FLAG) is True, f"transformers no longer marks initialised modules {INITIALIZED_FLAG}"
    setattr(layer.weight, INITIALIZED_FLAG, True)
    assert is_loaded_from_checkpoint(layer.weight)
