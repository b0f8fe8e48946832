"""VLMo test helpers: the tiny configs and batches (from :mod:`tests.helpers.tiny_models`) and the fixture's original
checkpoint loaded into any VLMo head."""

from __future__ import annotations

import functools

import torch
from transformers import PreTrainedModel

from conversion.rules import vlmo_head_rules, vlmo_rules
from hf_vlp.models.vlmo import VlpVlmoConfig
from hf_vlp.utils.checkpoints import Drop, map_state_dict
from tests.helpers.fixtures import fixture_dir
from tests.helpers.tiny_models import tiny_vlmo_batch, tiny_vlmo_config

__all__ = ["fixture_vlmo", "tiny_vlmo_batch", "tiny_vlmo_config"]

HEAD_NAMES = {
    "VlpVlmoModel": "model", "VlpVlmoForPretraining": "pretraining", "VlpVlmoForMaskedLM": "masked_lm",
    "VlpVlmoForQuestionAnswering": "vqa", "VlpVlmoForVisualReasoning": "nlvr2",
    "VlpVlmoForImageTextRetrieval": "retrieval",
}
FIXTURE_CONFIG = dict(
    hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, vl_ffn_start_layer=2,
    image_size=32, patch_size=8, max_text_length=12, vocab_size=100, num_labels=10, pad_token_id=0, cls_token_id=1,
    sep_token_id=2, mask_token_id=3,
)


@functools.cache
def _state() -> dict[str, torch.Tensor]:
    return torch.load(fixture_dir("vlmo") / "checkpoint.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def fixture_vlmo(model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """A fresh ``model_class`` holding the vlmo fixture's original weights, in eval mode."""
    head = HEAD_NAMES[model_class.__name__]
    state = dict(_state())
    rows = state.pop("token_type_embeddings.weight")
    state["token_type_embeddings.weight"] = rows[:2]
    prefix = "" if head == "model" else "vlmo."
    rules = vlmo_rules(prefix, True) + [r for r in vlmo_head_rules(head)] + [Drop(r".*", "other head")]
    if head == "model":
        rules = vlmo_rules("", True) + [
            __import__("hf_vlp.utils.checkpoints", fromlist=["Rename"]).Rename(r"token_type_embeddings\.weight",
                                                                               "modality_embeddings.weight"),
            Drop(r".*", "other head"),
        ]
    mapped = map_state_dict(state, rules).tensors
    if head == "nlvr2":
        mapped["second_image_modality_embedding"] = rows[2]
    model = model_class(VlpVlmoConfig(**FIXTURE_CONFIG))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected, unexpected
    assert not missing, missing
    return model.eval()
