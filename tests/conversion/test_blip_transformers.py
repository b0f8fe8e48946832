"""Converting transformers' own BLIP directories (random tiny weights): captioner, retrieval (ITM + ITC) and VQA
models give transformers' outputs (decoder logits, ITM logits, cosines, question states, generated ids) within 1e-4,
through ``conversion/blip_transformers.py`` and through ``convert_blip.py --checkpoint DIR``; errors name the fix."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipForQuestionAnswering,
    BlipModel,
)

from conversion.blip_transformers import (
    convert_transformers_blip,
    is_transformers_blip_directory,
    original_layout,
)
from conversion.common import ConversionError, run_cli
from conversion.convert_blip import convert_blip_checkpoint, main
from hf_vlp.models.blip import (
    VlpBlipForConditionalGeneration,
    VlpBlipForQuestionAnswering,
    VlpBlipModel,
    VlpBlipProcessor,
    add_blip_special_tokens,
)

VOCAB = Path(__file__).resolve().parents[1] / "fixtures" / "originals" / "blip_caption" / "vocab.txt"
CLS, SEP, PAD, DEC, ENC = 2, 3, 0, 64, 65
ATOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two OpenMP threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def transformers_config(vision_width: int = 32, eps: float = 1e-5) -> BlipConfig:
    return BlipConfig(
        vision_config=dict(hidden_size=vision_width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, layer_norm_eps=eps),
        text_config=dict(vocab_size=66, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=40, encoder_hidden_size=vision_width, bos_token_id=DEC,
                         sep_token_id=SEP, pad_token_id=PAD),
        image_text_hidden_size=16,
    )


@functools.cache
def tokenizer() -> BertTokenizer:
    return add_blip_special_tokens(BertTokenizer(vocab=str(VOCAB), do_lower_case=True))


def scaled_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """O(1)-scale random weights (transformers' 0.02 init makes every logit nearly equal and hides mapping errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
                parameter.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            elif parameter.ndim >= 2:
                parameter.copy_(noise / parameter.shape[-1] ** 0.5)
            else:
                parameter.copy_(0.1 * noise)
    return model.eval()


def saved(tmp_path: Path, model_class: type, with_tokenizer: bool = True, **config) -> tuple[torch.nn.Module, Path]:
    model = scaled_init(model_class(transformers_config(**config)), seed=len(model_class.__name__))
    folder = tmp_path / model_class.__name__
    model.save_pretrained(folder)
    if with_tokenizer:
        tokenizer().save_pretrained(folder)
    return model, folder


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 60, (3, 8), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = CLS, SEP
    return torch.randn(3, 3, 32, 32, generator=generator), input_ids


# --------------------------------------------------------------------------------------------------- heads


def test_captioner_gives_transformers_logits_and_generations(tmp_path: Path) -> None:
    theirs, folder = saved(tmp_path, BlipForConditionalGeneration)
    result = convert_transformers_blip(folder, verify=True)
    ours = result.model
    assert type(ours) is VlpBlipForConditionalGeneration and result.kind == "caption"
    assert max(result.differences.values()) < ATOL
    assert ours.config.vision_config.layer_norm_eps == 1e-5  # the directory's, so the outputs agree
    assert ours.lm_head.decoder.weight is ours.get_input_embeddings().weight
    pixel_values, input_ids = batch()
    decoder_ids = input_ids.clone()
    decoder_ids[:, 0] = DEC  # transformers' forward uses the ids as given; ours puts [DEC] first itself
    prompt = torch.tensor([[CLS, 5, 6, 7, SEP]])
    with torch.no_grad():
        torch.testing.assert_close(ours(pixel_values, input_ids).logits,
                                   theirs(pixel_values=pixel_values, input_ids=decoder_ids).logits, atol=ATOL, rtol=0)
        for settings in (dict(num_beams=3, max_length=14, min_length=5), dict(num_beams=1, max_length=14),
                         dict(num_beams=3, max_length=12, repetition_penalty=1.1)):
            expected = theirs.generate(pixel_values=pixel_values, input_ids=prompt.repeat(3, 1), **settings)
            generated = ours.generate(pixel_values, prompt, beam_scoring="transformers", **settings)
            assert torch.equal(generated, expected), settings


def test_retrieval_model_gives_transformers_itm_logits_and_cosines(tmp_path: Path) -> None:
    theirs, folder = saved(tmp_path, BlipForImageTextRetrieval)
    result = convert_transformers_blip(folder, verify=True)
    ours = result.model
    assert type(ours) is VlpBlipModel and result.head == "model" and max(result.differences.values()) < ATOL
    assert ours.temp.item() == pytest.approx(0.07)  # transformers' model has no temperature: the original's start
    pixel_values, input_ids = batch(1)
    with torch.no_grad():
        itm = theirs(input_ids=input_ids, pixel_values=pixel_values).itm_score  # [CLS] kept, as blip_itm.py
        cosine = theirs(input_ids=input_ids, pixel_values=pixel_values, use_itm_head=False).itm_score
        torch.testing.assert_close(
            ours.get_itm_logits(input_ids, pixel_values, replace_first_token=False), itm, atol=ATOL, rtol=0
        )
        image = torch.nn.functional.normalize(ours.get_image_features(pixel_values).pooler_output, dim=-1)
        text = torch.nn.functional.normalize(ours.get_text_features(input_ids).pooler_output, dim=-1)
        torch.testing.assert_close(image @ text.t(), cosine, atol=ATOL, rtol=0)


def test_vqa_model_gives_transformers_states_logits_and_answers(tmp_path: Path) -> None:
    theirs, folder = saved(tmp_path, BlipForQuestionAnswering)
    result = convert_transformers_blip(folder, verify=True)
    ours = result.model
    assert type(ours) is VlpBlipForQuestionAnswering and max(result.differences.values()) < ATOL
    pixel_values, input_ids = batch(2)
    question_ids = input_ids.clone()
    question_ids[:, 0] = ENC  # transformers encodes the question ids as given; ours puts [ENC] first, as the original
    with torch.no_grad():
        expected = theirs.generate(input_ids=question_ids, pixel_values=pixel_values, num_beams=3, max_length=8)
        generated = ours.generate(pixel_values, input_ids, beam_scoring="transformers", num_beams=3, max_length=8)
    assert torch.equal(generated, expected)


def test_convert_blip_cli_takes_a_transformers_directory(tmp_path: Path, capsys) -> None:
    _, folder = saved(tmp_path, BlipForConditionalGeneration)
    output = tmp_path / "converted"
    status = run_cli(main, ["--checkpoint", str(folder), "--output", str(output), "--verify"])
    assert status == 0, capsys.readouterr().err
    loaded = VlpBlipForConditionalGeneration.from_pretrained(output, dtype=torch.float32)
    processor = VlpBlipProcessor.from_pretrained(output)
    assert processor.special_token_ids()["enc_token_id"] == loaded.config.text_config.enc_token_id == ENC
    card = (output / "README.md").read_text()
    assert "Converted from transformers' `BlipForConditionalGeneration`" in card and "max |diff|" in card
    assert json.loads((output / "generation_config.json").read_text())["num_beams"] == 3


# --------------------------------------------------------------------------------------------------- layout, errors


def test_original_layout_renames_the_vit_back_and_restores_the_tied_lm_head() -> None:
    state = {
        "vision_model.embeddings.class_embedding": torch.zeros(1),
        "vision_model.encoder.layers.3.self_attn.projection.weight": torch.zeros(1),
        "vision_model.encoder.layers.3.layer_norm2.bias": torch.zeros(1),
        "vision_model.post_layernorm.weight": torch.zeros(1),
        "text_decoder.bert.embeddings.word_embeddings.weight": torch.ones(2),
        "text_decoder.cls.predictions.transform.dense.weight": torch.zeros(1),
        "text_decoder.cls.predictions.bias": torch.full((2,), 3.0),
    }
    renamed = original_layout(state)
    assert set(renamed) == {
        "visual_encoder.cls_token", "visual_encoder.blocks.3.attn.proj.weight", "visual_encoder.blocks.3.norm2.bias",
        "visual_encoder.norm.weight", "text_decoder.bert.embeddings.word_embeddings.weight",
        "text_decoder.cls.predictions.transform.dense.weight", "text_decoder.cls.predictions.bias",
        "text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias",
    }
    assert renamed["text_decoder.cls.predictions.decoder.weight"] is state["text_decoder.bert.embeddings.word_embeddings.weight"]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    _, folder = saved(tmp_path, BlipModel, with_tokenizer=False)
    assert is_transformers_blip_directory(folder)
    with pytest.raises(ConversionError, match="BlipModel is a CLIP-style dual encoder"):
        convert_transformers_blip(folder)
    with pytest.raises(ConversionError, match="without config.json"):
        convert_transformers_blip(tmp_path)
    _, untokenized = saved(tmp_path, BlipForConditionalGeneration, with_tokenizer=False)
    with pytest.raises(ConversionError, match="pass --tokenizer"):  # [CLS]=101 etc. do not fit a 66-token vocabulary
        convert_transformers_blip(untokenized)
    converted = convert_transformers_blip(untokenized, tokenizer=VOCAB)
    assert converted.processor is not None and converted.model.config.text_config.enc_token_id == ENC
    with pytest.raises(ConversionError, match="cannot be written from a BLIP captioning"):
        convert_transformers_blip(untokenized, tokenizer=VOCAB, head="vqa")
    with pytest.raises(ConversionError, match="a transformers directory has its own config.json"):
        convert_blip_checkpoint(untokenized, original_config={"vit": "base"})
