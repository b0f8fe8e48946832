"""VLMo test helpers: the tiny configs and batches (from :mod:`tests.helpers.tiny_models`) and the fixture's original
checkpoint converted by ``conversion/convert_vlmo.py`` into any VLMo head."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel

from conversion.convert_vlmo import convert_vlmo_checkpoint
from tests.helpers.fixtures import Tensors, fixture_dir, model_from_state
from tests.helpers.tiny_models import tiny_vlmo_batch, tiny_vlmo_config

__all__ = ["FIXTURE_CHECKPOINT", "ORIGINAL_CONFIG", "converted_fixture", "fixture_vlmo", "fixture_vocab",
           "tiny_vlmo_batch", "tiny_vlmo_config"]

FIXTURE_CHECKPOINT = fixture_dir("vlmo") / "checkpoint.ckpt"
ORIGINAL_CONFIG = fixture_dir("vlmo") / "original_config.json"
# the fixture's ids: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK]; a vocabulary of 100
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
VOCAB_SIZE = 100
HEAD_NAMES = {
    "VlpVlmoModel": "model", "VlpVlmoForPretraining": "pretraining", "VlpVlmoForMaskedLM": "masked_lm",
    "VlpVlmoForQuestionAnswering": "vqa", "VlpVlmoForVisualReasoning": "nlvr2",
    "VlpVlmoForImageTextRetrieval": "retrieval",
}


@functools.cache
def fixture_vocab() -> Path:
    """A WordPiece vocabulary with the fixture's special ids (written once per session)."""
    folder = tempfile.mkdtemp(prefix="vlmo-vocab-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = Path(folder) / "vocab.txt"
    words = [f"word{i}" for i in range(VOCAB_SIZE - len(SPECIAL_TOKENS))]
    path.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n")
    return path


@functools.cache
def converted_fixture(head: str) -> tuple[dict, Tensors]:
    """The fixture converted to ``head`` (with its original config and vocabulary): config dict and state dict."""
    result = convert_vlmo_checkpoint(FIXTURE_CHECKPOINT, original_config=ORIGINAL_CONFIG, tokenizer=fixture_vocab(),
                                     head=head)
    return result.model.config.to_dict(), {key: value.clone() for key, value in result.model.state_dict().items()}


def fixture_vlmo(model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """A fresh ``model_class`` holding the vlmo fixture's original weights, in eval mode."""
    return model_from_state(model_class, converted_fixture(HEAD_NAMES[model_class.__name__]))
