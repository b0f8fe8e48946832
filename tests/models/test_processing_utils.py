"""The shared processor and image-processor bases (hf_vlp.models.processing_utils / image_processing_utils)."""

import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from transformers import BertTokenizer

from hf_vlp.models.albef.image_processing_albef import VlpAlbefImageProcessor
from hf_vlp.models.albef.processing_albef import VlpAlbefProcessor
from hf_vlp.models.blip.image_processing_blip import VlpBlipImageProcessor
from hf_vlp.models.blip.processing_blip import VlpBlipProcessor
from hf_vlp.models.clip.image_processing_clip import VlpClipImageProcessor
from hf_vlp.models.clip.processing_clip import VlpClipProcessor
from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
from hf_vlp.models.image_processing_utils import SquareResizeImageProcessor, VlpImageProcessorBase
from hf_vlp.models.processing_utils import overlong_rows, pad_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "originals"


def _clip_processor() -> VlpClipProcessor:
    meta = json.loads((FIXTURES / "clip_vit" / "fixture_meta.json").read_text())
    tokenizer = clip_tokenizer_from_bpe(FIXTURES / "clip_vit" / meta["tokenizer"]["bpe_file"])
    return VlpClipProcessor(VlpClipImageProcessor(size=32, crop_size=32), tokenizer)


def _albef_processor() -> VlpAlbefProcessor:
    tokenizer = BertTokenizer(vocab=str(FIXTURES / "albef_pretrain" / "vocab.txt"))
    return VlpAlbefProcessor(VlpAlbefImageProcessor(size=32), tokenizer)


def _blip_processor() -> VlpBlipProcessor:
    tokenizer = BertTokenizer(vocab=str(FIXTURES / "blip_pretrain" / "vocab.txt"), do_lower_case=True)
    return VlpBlipProcessor(VlpBlipImageProcessor(size=32), tokenizer)


@pytest.mark.parametrize("make_processor", [_clip_processor, _albef_processor, _blip_processor])
def test_bad_processor_calls_raise(make_processor) -> None:
    """The checks every processor's ``__call__`` shares (moved here from the three processors' test files)."""
    processor = make_processor()
    with pytest.raises(ValueError, match="text`, `images` or both"):
        processor()
    with pytest.raises(TypeError, match="string or a list of strings"):
        processor(text=[1, 2])
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[])
    with pytest.raises(ValueError, match="padding"):
        processor(text="a dog", padding="do_not_pad")
    with pytest.raises(TypeError, match="without images"):
        processor(text="a dog", size=32)


@pytest.mark.parametrize("make_processor", [_albef_processor, _blip_processor])
def test_bad_bert_processor_calls_raise(make_processor) -> None:
    processor = make_processor()
    with pytest.raises(ValueError, match="text_kind"):
        processor(text="a dog", text_kind="answer")
    with pytest.raises(TypeError, match="list of strings"):
        processor.encode_answers("yes")


def test_image_processors_share_one_base_and_do_not_inherit_across_models() -> None:
    assert VlpClipImageProcessor.__bases__ == (VlpImageProcessorBase,)
    assert VlpAlbefImageProcessor.__bases__ == VlpBlipImageProcessor.__bases__ == (SquareResizeImageProcessor,)
    assert not issubclass(VlpBlipImageProcessor, VlpAlbefImageProcessor)
    assert not issubclass(VlpAlbefImageProcessor, VlpClipImageProcessor)
    # the private-hook override lives in the base only
    for cls in (VlpClipImageProcessor, SquareResizeImageProcessor, VlpAlbefImageProcessor, VlpBlipImageProcessor):
        assert "_prepare_images_structure" not in vars(cls)


@pytest.mark.parametrize("cls", [VlpClipImageProcessor, VlpAlbefImageProcessor, VlpBlipImageProcessor])
def test_saved_settings_keep_their_type_name_and_leave_class_settings_out(cls) -> None:
    saved = cls().to_dict()
    assert saved["image_processor_type"] == cls.__name__
    assert "convert_rgb_before_resize" not in saved


def test_rgb_conversion_order_is_the_models() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    image = PIL.Image.fromarray(rgba, mode="RGBA")
    assert VlpAlbefImageProcessor().process_image(image, do_convert_rgb=True).mode == "RGB"
    assert VlpClipImageProcessor().process_image(image, do_convert_rgb=True).mode == "RGBA"  # converted after crop


def test_overlong_rows_raise_or_warn_on_the_callers_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hf_vlp.test_processing_utils")
    with pytest.raises(ValueError, match="Text 1 has 5 tokens, more than max_length=4; shorten it"):
        overlong_rows([3, 5], 4, limit_name="max_length", truncation=False, fix="shorten it", logger=logger)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        rows = overlong_rows([3, 5, 6], 4, limit_name="max_length", truncation=True, fix="", logger=logger,
                             kept_note=" (kept)")
    assert rows == [1, 2]
    assert [record.getMessage() for record in caplog.records if record.name == logger.name] == [
        "2 of 3 texts were longer than max_length=4 tokens and were truncated (kept)."
    ]


def test_pad_rows() -> None:
    assert pad_rows([[5, 6], [7]], 0) == {"input_ids": [[5, 6], [7, 0]], "attention_mask": [[1, 1], [1, 0]]}
    assert pad_rows([[5]], 9, length=3) == {"input_ids": [[5, 9, 9]], "attention_mask": [[1, 0, 0]]}


def test_a_processor_or_text_tower_that_skips_a_required_hook_cannot_be_built():
    """The shared bases declare their per-model hooks abstract: leaving one out fails at construction, naming it."""
    from hf_vlp.models.albef.configuration_albef import VlpAlbefTextConfig
    from hf_vlp.models.albef.modeling_albef import VlpAlbefTextModel
    from hf_vlp.models.processing_utils import BertTextProcessorBase
    from hf_vlp.models.towers import TextTowerMixin
    from hf_vlp.training.tasks.fusion import QuestionAnsweringTask

    class NoFraming(BertTextProcessorBase):
        attributes = []

    class NoTransformer(VlpAlbefTextModel):
        build_transformer = TextTowerMixin.build_transformer  # the abstract declaration, not ALBEF's

    class NoScoring(QuestionAnsweringTask):
        pass

    with pytest.raises(TypeError, match="_framed_rows"):
        NoFraming()
    with pytest.raises(TypeError, match="build_transformer"):
        NoTransformer(VlpAlbefTextConfig())
    with pytest.raises(TypeError, match="scored_answers"):
        NoScoring()
