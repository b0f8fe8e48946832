"""CoCa test helpers: the tiny configs and batches (from :mod:`tests.helpers.tiny_models`) and the fixture's open_clip
checkpoint converted by ``conversion/convert_coca.py`` into either CoCa head."""

from __future__ import annotations

import functools

from transformers import PreTrainedModel

from conversion.convert_coca import convert_coca_checkpoint
from tests.helpers.fixtures import Tensors, fixture_dir, model_from_state
from tests.helpers.tiny_models import tiny_coca_batch, tiny_coca_config

__all__ = ["FIXTURE_BPE", "FIXTURE_CHECKPOINT", "OPEN_CLIP_CONFIG", "converted_fixture", "fixture_coca",
           "tiny_coca_batch", "tiny_coca_config"]

FIXTURE_CHECKPOINT = fixture_dir("coca") / "checkpoint.pt"
OPEN_CLIP_CONFIG = fixture_dir("coca") / "open_clip_config.json"
FIXTURE_BPE = fixture_dir("coca") / "bpe_simple_vocab_truncated.txt.gz"
HEAD_NAMES = {"VlpCocaModel": "model", "VlpCocaForConditionalGeneration": "captioning"}


@functools.cache
def converted_fixture(head: str) -> tuple[dict, Tensors]:
    """The fixture converted to ``head`` (with its open_clip config and vocabulary): config dict and state dict."""
    result = convert_coca_checkpoint(FIXTURE_CHECKPOINT, model_config=OPEN_CLIP_CONFIG, bpe=FIXTURE_BPE, head=head)
    return result.model.config.to_dict(), {key: value.clone() for key, value in result.model.state_dict().items()}


def fixture_coca(model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """A fresh ``model_class`` holding the coca fixture's original weights, in eval mode."""
    return model_from_state(model_class, converted_fixture(HEAD_NAMES[model_class.__name__]))
