"""BLIP captioning with ``generate``: the original's recorded generations (beam 3, greedy, NoCaps' repetition penalty)
reproduced token for token, cache == no cache, the image tower and the image keys/values computed once, the caption
helper and the image-text-to-text pipeline, the shared cross-attention memory, an overfitting run and errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from transformers import GenerationConfig, pipeline

from conversion.convert_blip import convert_blip_checkpoint
from hf_vlp.models.blip import CAPTION_DECODING, VlpBlipConfig, VlpBlipForConditionalGeneration
from hf_vlp.generation.beam_scoring import pad_after_end
from hf_vlp.modules.attention import Attention, AttentionMemory, padding_mask
from tests.helpers.fixtures import fixture_dir, fixture_metadata, fixture_tensors
from tests.helpers.tiny_models import WIDE_BLIP_TEXT, tiny_blip_config

FIXTURE = fixture_dir("blip_caption")
DEC, SEP, PAD = 64, 3, 0
RECORDED = {  # outputs.safetensors name -> the generate() settings that produced it (README)
    "generated_ids_beam3": CAPTION_DECODING["coco"],
    "generated_ids_greedy": {**CAPTION_DECODING["coco"], "num_beams": 1},
    "generated_ids_beam3_rep1.1_nocaps": CAPTION_DECODING["nocaps"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def converted(output: Path | None = None):
    return convert_blip_checkpoint(
        FIXTURE / "checkpoint.pth", output, FIXTURE / "original_config.json", FIXTURE / "vocab.txt", head="caption"
    )


def captioner() -> VlpBlipForConditionalGeneration:
    return converted().model.eval()


def fixture() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    return *fixture_tensors(FIXTURE.name), fixture_metadata(FIXTURE.name)


def raw_images() -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(image.numpy()) for image in fixture()[0]["raw_images_uint8"]]


def tiny_config() -> VlpBlipConfig:
    return tiny_blip_config(vision=dict(num_hidden_layers=1), text=WIDE_BLIP_TEXT)


# --------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_generations_are_reproduced_token_for_token(name: str) -> None:
    inputs, outputs, _ = fixture()
    with torch.no_grad():
        generated = captioner().generate(inputs["pixel_values"], inputs["prompt_input_ids_for_generate"], **RECORDED[name])
    assert torch.equal(generated, outputs[name]), f"{name}:\n{generated}\n{outputs[name]}"


def test_default_generation_config_is_the_coco_setting_and_processor_prompts_work() -> None:
    """``generate(pixel_values, processor ids)``: [CLS] -> [DEC], the trailing [SEP] dropped, one row for all images."""
    inputs, outputs, _ = fixture()
    model = captioner()
    config = model.generation_config
    assert (config.num_beams, config.max_length, config.min_length, config.repetition_penalty) == (3, 20, 5, 1.0)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (DEC, SEP, PAD)
    prompt = converted().processor(text=["a picture of "], return_tensors="pt")
    assert prompt["input_ids"].tolist() == [[2, 5, 6, 7, SEP]]
    with torch.no_grad():
        generated = model.generate(inputs["pixel_values"], **prompt)
    assert torch.equal(generated, outputs["generated_ids_beam3"])
    assert torch.equal(
        model.prompt_input_ids(prompt["input_ids"], None, 2), inputs["prompt_input_ids_for_generate"]
    )
    assert model.prompt_input_ids(None, None, 3).tolist() == [[DEC]] * 3


def test_transformers_beam_scoring_normalises_by_generated_length() -> None:
    """transformers 5 divides by the generated length: on NoCaps' setting the first image's short caption (ended by
    [SEP] at length 10) loses to a max-length one; "original" scoring keeps it. Padding after [SEP] is [PAD]."""
    inputs, outputs, _ = fixture()
    recorded = outputs["generated_ids_beam3_rep1.1_nocaps"]
    with torch.no_grad():
        transformers_scored = captioner().generate(
            inputs["pixel_values"], inputs["prompt_input_ids_for_generate"], beam_scoring="transformers",
            **CAPTION_DECODING["nocaps"],
        )
    assert torch.equal(transformers_scored[1], recorded[1]) and not torch.equal(transformers_scored[0], recorded[0])
    assert recorded[0, 9] == SEP and (recorded[0, 10:] == PAD).all()
    ended = torch.tensor([[DEC, 5, 9, SEP, SEP, 7], [DEC, 5, SEP, 8, 9, 9]])
    assert pad_after_end(ended, 1, torch.tensor([SEP]), PAD).tolist() == [[DEC, 5, 9, SEP, 0, 0], [DEC, 5, SEP, 0, 0, 0]]


# --------------------------------------------------------------------------------------------------- caching


@pytest.mark.parametrize("settings", [dict(num_beams=3), dict(do_sample=True, top_p=0.9, num_return_sequences=2)])
def test_generation_with_the_caches_equals_generation_without(settings: dict) -> None:
    inputs, _, _ = fixture()
    model = captioner()
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        with torch.no_grad():
            runs.append(model.generate(inputs["pixel_values"], inputs["prompt_input_ids_for_generate"],
                                       max_length=12, use_cache=use_cache, **settings))
    assert torch.equal(*runs)
    assert runs[0].shape[0] == 2 * settings.get("num_return_sequences", 1)


def test_image_tower_runs_once_and_each_cross_attention_projects_the_images_once(monkeypatch) -> None:
    """With beams, the ViT runs once per generate and every layer's image keys/values are projected once (one copy
    per image, shared by its 3 beams); without the cache every step re-projects them for every beam."""
    inputs, _, _ = fixture()
    model = captioner()
    vision_calls, projections = [], []
    model.vision_model.register_forward_hook(lambda module, args, output: vision_calls.append(1))
    original = Attention.project_key_value

    def counted(self: Attention, states: torch.Tensor):
        projections.append(states.shape[0])
        return original(self, states)

    monkeypatch.setattr(Attention, "project_key_value", counted)
    with torch.no_grad():
        model.generate(inputs["pixel_values"], inputs["prompt_input_ids_for_generate"], max_length=10)
    layers = model.config.text_config.num_hidden_layers
    assert len(vision_calls) == 1 and projections == [2] * layers
    projections.clear()
    with torch.no_grad():
        model.generate(inputs["pixel_values"], inputs["prompt_input_ids_for_generate"], max_length=10, use_cache=False)
    assert len(projections) == layers * 6 and set(projections) == {6}  # 6 steps, 2 images x 3 beams


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_memory_rows_serve_groups_of_query_rows_as_repeated_states(implementation: str) -> None:
    config = tiny_config()
    config.text_config._attn_implementation = implementation
    torch.manual_seed(0)
    attention = Attention(32, 4, config=config.text_config, cross_attention=True, kv_size=24).eval()
    queries, states = torch.randn(6, 5, 32), torch.randn(2, 7, 24)
    keep = torch.ones(2, 7, dtype=torch.long)
    keep[1, 4:] = 0
    repeated, repeated_probs = attention(
        queries, states.repeat_interleave(3, 0), padding_mask(keep.repeat_interleave(3, 0), torch.float32),
        output_attentions=True,
    )
    memory = AttentionMemory(states)
    grouped, grouped_probs = attention(queries, memory, padding_mask(keep, torch.float32), output_attentions=True)
    torch.testing.assert_close(grouped, repeated, atol=1e-6, rtol=0)
    torch.testing.assert_close(grouped_probs, repeated_probs, atol=1e-6, rtol=0)
    assert (grouped_probs[3:, :, :, 4:] == 0).all()  # the second memory row's padding, for its three query rows
    key, _ = memory.key_value(attention)
    assert memory.key_value(attention)[0] is key and key.shape == (2, 4, 7, 8)
    with pytest.raises(ValueError, match="cannot serve 5 query rows"):
        attention(queries[:5], memory)
    with pytest.raises(ValueError, match=r"memory states \[batch, length, width\]"):
        AttentionMemory(torch.randn(7, 24))


# --------------------------------------------------------------------------------------------------- helpers


def test_caption_helper_and_the_image_text_to_text_pipeline_give_the_original_captions(tmp_path: Path) -> None:
    _, _, metadata = fixture()
    expected = json.loads(metadata["generated_captions_beam3"])
    result = convert_blip_checkpoint(
        FIXTURE / "checkpoint.pth", tmp_path / "captioner", FIXTURE / "original_config.json", FIXTURE / "vocab.txt"
    )
    images = raw_images()
    assert result.model.caption(images, result.processor) == expected
    captioner_pipeline = pipeline("image-text-to-text", model=str(tmp_path / "captioner"))
    outputs = captioner_pipeline(images=images[1], text="a picture of")
    assert outputs == [{"input_text": "a picture of", "generated_text": "a picture of " + expected[1]}]
    sampled = result.model.caption(images[:1], result.processor, **CAPTION_DECODING["sampling"])
    assert len(sampled) == 1 and isinstance(sampled[0], str)


def test_generation_config_survives_save_and_is_rebuilt_without_its_file(tmp_path: Path) -> None:
    inputs, outputs, _ = fixture()
    model = captioner()
    model.save_pretrained(tmp_path)
    saved = GenerationConfig.from_pretrained(tmp_path)
    assert (saved.num_beams, saved.max_length, saved.min_length, saved.eos_token_id) == (3, 20, 5, SEP)
    (tmp_path / "generation_config.json").unlink()
    bare = VlpBlipForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        generated = bare.generate(inputs["pixel_values"], inputs["prompt_input_ids_for_generate"],
                                  **CAPTION_DECODING["coco"])
    assert torch.equal(generated, outputs["generated_ids_beam3"])


# --------------------------------------------------------------------------------------------------- training


def test_overfitting_eight_captions_then_greedy_generation_writes_them() -> None:
    torch.manual_seed(0)
    model = VlpBlipForConditionalGeneration(tiny_config()).train()
    generator = torch.Generator().manual_seed(1)
    captions = torch.randint(5, 38, (8, 7), generator=generator)
    captions[:, 0], captions[:, -1] = 2, SEP
    pixel_values = torch.randn(8, 3, 16, 16, generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        output = model(pixel_values, captions, labels=captions)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if torch.equal(output.logits.argmax(-1)[:, :-1], captions[:, 1:]) and output.loss < 1.0:
            break
    with torch.no_grad():
        generated = model.eval().generate(pixel_values, num_beams=1, max_length=10, min_length=1)
    assert torch.equal(generated[:, 1:7], captions[:, 1:]), f"not memorised (loss {output.loss.item():.3f})"
    assert (generated[:, 7:] == PAD).all()  # [PAD] after [SEP]


# --------------------------------------------------------------------------------------------------- errors


def test_generation_errors_say_what_to_do() -> None:
    model = VlpBlipForConditionalGeneration(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="exactly one of pixel_values or image_hidden_states"):
        model.generate(input_ids=torch.tensor([[2, 5, 3]]))
    with pytest.raises(ValueError, match="prompts are padded"):
        model.generate(pixel_values, torch.tensor([[2, 5, 6, 3], [2, 5, 3, 0]]))
    with pytest.raises(ValueError, match="prompts are padded"):
        model.generate(pixel_values, torch.tensor([[2, 5, 6, 3]] * 2), torch.tensor([[1, 1, 1, 0]] * 2))
    with pytest.raises(ValueError, match="got 3 prompts for 2 images"):
        model.generate(pixel_values, torch.tensor([[2, 5, 3]] * 3))
    with pytest.raises(ValueError, match="beam_scoring must be one of"):
        model.generate(pixel_values, beam_scoring="best")
    with pytest.raises(ValueError, match="call generate"):
        model.prepare_inputs_for_generation(torch.tensor([[38]]))
    with pytest.raises(ValueError, match="no token-type embeddings"):
        model.generate(pixel_values, token_type_ids=torch.ones(2, 3, dtype=torch.long))
