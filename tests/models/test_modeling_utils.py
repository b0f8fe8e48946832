"""The output contract every forward declaring ``**kwargs: Unpack[OutputKwargs]`` gets from the base class, and
``main_input_name`` following the forward's first input."""

from __future__ import annotations

import inspect

import pytest
import torch

import hf_vlp
from hf_vlp.models.albef import VlpAlbefForVisualEntailment
from hf_vlp.models.blip import VlpBlipForQuestionAnswering, VlpBlipModel
from hf_vlp.models.modeling_utils import VlpPreTrainedModel, first_named_input, takes_output_kwargs
from tests.helpers.tiny_models import tiny_albef_config, tiny_blip_batch, tiny_blip_config


def registered_model_classes() -> list[type]:
    """Every model class the package exports."""
    exported = (getattr(hf_vlp, name) for name in dir(hf_vlp))
    models = {cls for cls in exported if isinstance(cls, type) and issubclass(cls, VlpPreTrainedModel)}
    return sorted((cls for cls in models if "PreTrained" not in cls.__name__), key=lambda cls: cls.__name__)


@pytest.fixture(scope="module")
def blip() -> VlpBlipModel:
    return VlpBlipModel(tiny_blip_config()).eval()


def test_an_unknown_keyword_names_itself_instead_of_vanishing(blip):
    batch = tiny_blip_batch(2)
    with pytest.raises(TypeError, match=r"VlpBlipModel.forward got unexpected keyword argument\(s\) \['output_attention'\]"):
        blip(**batch, output_attention=True)


def test_flags_come_from_the_call_then_the_config(blip):
    batch = tiny_blip_batch(2)
    layers = blip.config.text_config.num_hidden_layers
    with torch.no_grad():
        plain = blip(**batch)
        assert plain.text_model_output.hidden_states is None and plain.text_model_output.attentions is None
        blip.config.output_hidden_states = True
        from_config = blip(**batch)
        overridden = blip(**batch, output_hidden_states=False)
        blip.config.output_hidden_states = False
    assert len(from_config.text_model_output.hidden_states) == layers + 1
    assert overridden.text_model_output.hidden_states is None
    torch.testing.assert_close(from_config.logits_per_image, plain.logits_per_image)


def test_return_dict_false_from_the_call_or_the_config_gives_the_tuple(blip):
    batch = tiny_blip_batch(2)
    with torch.no_grad():
        output = blip(**batch)
        as_tuple = blip(**batch, return_dict=False)
        blip.config.return_dict = False
        from_config = blip(**batch)
        blip.config.return_dict = True
    assert isinstance(as_tuple, tuple) and isinstance(from_config, tuple)
    torch.testing.assert_close(as_tuple[0], output.logits_per_image)
    assert len(as_tuple) == len(output.to_tuple()) == len(from_config)


@pytest.mark.parametrize("model_class", registered_model_classes(), ids=lambda cls: cls.__name__)
def test_main_input_name_is_the_first_input_of_forward(model_class):
    first = first_named_input(model_class.forward)
    if first is not None:
        assert model_class.main_input_name == first
    else:  # a tower wrapper passing its arguments on: the tower's main input
        assert model_class.main_input_name in ("input_ids", "pixel_values")


@pytest.mark.parametrize("model_class", registered_model_classes(), ids=lambda cls: cls.__name__)
def test_every_registered_forward_takes_the_output_flags(model_class):
    parameters = inspect.signature(model_class.forward).parameters
    assert takes_output_kwargs(model_class.forward) or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ), f"{model_class.__name__}.forward accepts no output flags"


def test_vqa_heads_return_the_towers_states_and_attentions_when_asked():
    model = VlpBlipForQuestionAnswering(tiny_blip_config()).eval()
    batch = tiny_blip_batch(2)
    with torch.no_grad():
        plain = model(**batch, answer_input_ids=batch["input_ids"])
        asked = model(**batch, answer_input_ids=batch["input_ids"], output_hidden_states=True, output_attentions=True)
    text_layers = model.config.text_config.num_hidden_layers
    assert plain.text_model_output.hidden_states is None
    assert len(asked.text_model_output.hidden_states) == text_layers + 1
    assert len(asked.text_model_output.attentions) == text_layers
    assert len(asked.vision_model_output.hidden_states) == model.config.vision_config.num_hidden_layers + 1
    torch.testing.assert_close(asked.logits, plain.logits)


def test_classifier_heads_return_the_towers_states_when_asked():
    config = tiny_albef_config()
    model = VlpAlbefForVisualEntailment(config).eval()
    batch = tiny_blip_batch(2)
    with torch.no_grad():
        asked = model(**batch, output_hidden_states=True, output_attentions=True)
    assert len(asked.text_model_output.attentions) == config.text_config.num_hidden_layers
    assert len(asked.vision_model_output.hidden_states) == config.vision_config.num_hidden_layers + 1
    assert asked.last_hidden_state.shape[:2] == batch["input_ids"].shape


@pytest.mark.parametrize("architecture", ["albef", "blip"])
def test_multimodal_features_are_what_the_itm_head_reads(architecture):
    from hf_vlp.models.albef import VlpAlbefModel

    model = (VlpAlbefModel(tiny_albef_config()) if architecture == "albef" else VlpBlipModel(tiny_blip_config())).eval()
    batch = tiny_blip_batch(3)
    with torch.no_grad():
        features = model.get_multimodal_features(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
        itm_logits = model(**batch, output_itm=True).itm_logits
    assert features.pooler_output.shape == (3, model.config.text_config.hidden_size)
    torch.testing.assert_close(model.itm_head(features.pooler_output), itm_logits)
