"""CoCa against the original (coca fixture: open_clip 3.3.0's CoCa with random weights): every recorded tensor, both
losses and the greedy generations, plus the model's own behaviour (losses, pooler layouts, errors, save/load)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch.nn import functional as F

from hf_vlp.models.coca import VlpCocaConfig, VlpCocaForConditionalGeneration, VlpCocaModel
from hf_vlp.models.coca.modeling_coca_generation import COCA_DECODING
from tests.helpers.coca import fixture_coca, tiny_coca_batch, tiny_coca_config
from tests.helpers.fixtures import fixture_tensors

FEATURES_ATOL = 1e-5
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def recorded() -> tuple[dict, dict]:
    return fixture_tensors("coca")


@pytest.fixture(scope="module")
def captioner() -> VlpCocaForConditionalGeneration:
    return fixture_coca(VlpCocaForConditionalGeneration)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = FEATURES_ATOL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=1e-5)


def test_towers_and_contrastive_outputs_match_original(recorded: tuple[dict, dict]) -> None:
    inputs, outputs = recorded
    model = fixture_coca(VlpCocaModel)
    with torch.no_grad():
        image = model.get_image_features(inputs["pixel_values"])
        tokens = model.vision_model(inputs["pixel_values"]).image_tokens
        text = model.get_text_features(inputs["input_ids"])
        result = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], return_loss=True)
    close(image.pooler_output, outputs["image_features"])
    close(tokens, outputs["image_tokens"])
    close(text.pooler_output, outputs["text_features"])
    close(text.last_hidden_state, outputs["text_token_embs"])
    close(result.image_embeds, outputs["image_embeds"])
    close(result.text_embeds, outputs["text_embeds"])
    close(result.logits_per_image, outputs["logits_per_image"], LOGITS_ATOL)
    close(result.logits_per_text, outputs["logits_per_text"], LOGITS_ATOL)
    close(model.logit_scale.detach(), outputs["logit_scale"])
    close(result.loss, outputs["contrastive_loss"], LOGITS_ATOL)


def test_joint_pass_matches_original_logits_and_losses(
    recorded: tuple[dict, dict], captioner: VlpCocaForConditionalGeneration
) -> None:
    inputs, outputs = recorded
    with torch.no_grad():
        result = captioner(inputs["pixel_values"], inputs["input_ids"], labels=inputs["input_ids"])
    labels = outputs["caption_labels"]
    assert torch.equal(inputs["input_ids"][:, 1:], labels)
    logits = result.logits[:, :-1]
    real = labels != 0
    close(logits[real], outputs["caption_logits"][real], LOGITS_ATOL)
    close(logits, outputs["caption_logits"], LOGITS_ATOL)  # open_clip 3.x's pad mask on every row, reproduced
    close(result.caption_loss, outputs["caption_loss"], LOGITS_ATOL)
    close(result.contrastive_loss, outputs["contrastive_loss"], LOGITS_ATOL)
    close(result.loss, outputs["caption_loss"] + outputs["contrastive_loss"], LOGITS_ATOL)
    close(result.caption_loss / 2.0, outputs["caption_loss_unweighted"], LOGITS_ATOL)
    close(result.image_embeds, outputs["image_embeds"])
    close(result.image_tokens, outputs["image_tokens"])
    close(result.logits_per_image, outputs["logits_per_image"], LOGITS_ATOL)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_equals_original_ids(
    recorded: tuple[dict, dict], captioner: VlpCocaForConditionalGeneration, use_cache: bool
) -> None:
    inputs, outputs = recorded
    # the recording: generate(generation_type="top_k", top_k=1, seq_len=12, min_seq_len=5, sot 998, eos 999)
    generated = captioner.generate(
        inputs["pixel_values"], num_beams=1, do_sample=False, max_length=12, min_length=5, use_cache=use_cache
    )
    assert torch.equal(generated, outputs["generated_ids_topk1"])


def test_every_decoding_mode_gives_the_same_ids_with_and_without_the_cache(
    captioner: VlpCocaForConditionalGeneration, recorded: tuple[dict, dict]
) -> None:
    pixel_values = recorded[0]["pixel_values"][:2]
    settings = [
        dict(num_beams=3),
        dict(num_beams=1, do_sample=True, top_k=5),
        dict(num_beams=1, do_sample=True, top_p=0.5, temperature=0.8),
    ]
    for options in settings:
        results = []
        for use_cache in (True, False):
            torch.manual_seed(0)
            results.append(captioner.generate(pixel_values, use_cache=use_cache, **options))
        assert torch.equal(results[0], results[1]), options


def test_default_generation_config_is_open_clips(captioner: VlpCocaForConditionalGeneration) -> None:
    config = captioner.generation_config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (998, 999, 0)
    assert config.forced_eos_token_id == 999 and config.max_length == 30 and config.min_length == 5
    assert config.num_beams == COCA_DECODING["num_beams"] == 2
    generated = captioner.generate(fixture_tensors("coca")[0]["pixel_values"][:2])
    assert generated.shape[1] <= 30 and (generated[:, 0] == 998).all()
    ended = (generated == 999).any(dim=1)
    assert ended.all()  # every caption ends with end-of-text, forced at max_length if need be


def test_incremental_decoding_equals_the_teacher_forced_logits() -> None:
    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).eval()
    batch = tiny_coca_batch(2)
    ids = batch["input_ids"][:1].repeat(2, 1)  # an unpadded caption
    with torch.no_grad():
        full = model(batch["pixel_values"], ids).logits
        tokens = model.encode_image_tokens(batch["pixel_values"])
        steps, cache = [], None
        for position in range(ids.shape[1]):
            out = model(input_ids=ids[:, position : position + 1], image_tokens=tokens, cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    layers = model.config.text_config.num_hidden_layers + model.config.decoder_config.num_hidden_layers
    assert len(cache.layers) == layers and cache.get_seq_length() == ids.shape[1]


def test_caption_loss_ignores_pads_and_minus_100_and_is_weighted_by_the_config() -> None:
    torch.manual_seed(0)
    config = tiny_coca_config(caption_loss_weight=3.0, contrastive_loss_weight=0.5)
    model = VlpCocaForConditionalGeneration(config).eval()
    batch = tiny_coca_batch(4)
    labels = batch["input_ids"].clone()
    labels[0, 2] = -100
    with torch.no_grad():
        out = model(batch["pixel_values"], batch["input_ids"], labels=labels)
        plain = VlpCocaModel(config).eval()
        plain.load_state_dict(model.state_dict(), strict=False)
        contrastive = plain(batch["input_ids"], batch["pixel_values"], return_loss=True).loss
    targets = labels[:, 1:].masked_fill(labels[:, 1:] == 0, -100)
    expected = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), targets, ignore_index=-100)
    torch.testing.assert_close(out.caption_loss, 3.0 * expected)
    torch.testing.assert_close(out.contrastive_loss, 0.5 * contrastive)
    torch.testing.assert_close(out.loss, out.caption_loss + out.contrastive_loss)
    model.config.contrastive_loss_weight = 0.0  # open_clip's COCO captioning recipe
    with torch.no_grad():
        captioning_only = model(batch["pixel_values"], batch["input_ids"], return_loss=True)
    assert captioning_only.contrastive_loss is None
    torch.testing.assert_close(captioning_only.loss, 3.0 * F.cross_entropy(
        out.logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:].masked_fill(batch["input_ids"][:, 1:] == 0, -100)
    ))


def test_parallel_pooler_layout_gives_a_separate_contrastive_query() -> None:
    config = tiny_coca_config(vision={"pooler_layout": "parallel"})
    model = VlpCocaForConditionalGeneration(config).eval()
    batch = tiny_coca_batch(2)
    with torch.no_grad():
        vision = model.vision_model(batch["pixel_values"])
    out = model(batch["pixel_values"], batch["input_ids"], labels=batch["input_ids"])
    assert vision.image_tokens.shape == (2, 5, 16) and config.vision_config.num_image_tokens == 5
    assert vision.pooler_output.shape == (2, 16) and model.vision_model.contrastive_pooler.query.shape == (1, 16)
    out.loss.backward()
    assert model.vision_model.contrastive_pooler.query.grad is not None
    single = tiny_coca_config()
    assert single.vision_config.num_image_tokens == 4 and not hasattr(VlpCocaModel(single).vision_model,
                                                                      "contrastive_pooler")


def test_a_generated_pad_token_ends_the_caption_as_in_open_clip() -> None:
    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).eval()
    with torch.no_grad():
        model.lm_head.weight[0] = model.lm_head.weight[5] * 50  # pad (also a real byte token) dominates token 5
        model.lm_head.weight[5] = -model.lm_head.weight[5]
    pixel_values = tiny_coca_batch(2)["pixel_values"]
    ended = model.generate(pixel_values, num_beams=1, max_length=8)
    open_ended = model.generate(pixel_values, num_beams=1, max_length=8, end_at_pad=False)
    rows = (ended[:, 1:] == 0).any(dim=1)
    assert rows.any(), "the test needs a row that emits the pad token"
    first = (ended[rows, 1:] == 0).int().argmax(dim=1)
    for row, start in zip(ended[rows], first.tolist()):
        assert (row[1 + start :] == 0).all() and not (row == 63).any()
    assert (open_ended[:, -1] == 63).all()  # without the rule, decoding runs on to the forced end-of-text


def test_prompted_generation_continues_the_prompt() -> None:
    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).eval()
    pixel_values = tiny_coca_batch(3)["pixel_values"]
    prompt = torch.tensor([[62, 7, 8, 63, 0, 0]])  # the processor's start, two tokens, end, pads
    generated = model.generate(pixel_values, prompt, num_beams=1, max_length=10)
    assert generated.shape[0] == 3 and torch.equal(generated[:, :3], torch.tensor([[62, 7, 8]]).expand(3, -1))
    with pytest.raises(ValueError, match="differ in length"):
        model.generate(pixel_values[:2], torch.tensor([[62, 7, 63, 0], [62, 7, 8, 63]]))
    with pytest.raises(ValueError, match="exactly one"):
        model.generate()


def test_overfitting_eight_pairs_memorises_captions_and_matches() -> None:
    """Both objectives learn 8 pairs: every caption token predicted, every image retrieves its caption, and greedy
    decoding writes the training captions."""
    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).train()
    batch = tiny_coca_batch(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    labels = batch["input_ids"]
    real = labels[:, 1:] != 0
    for _ in range(150):
        output = model(batch["pixel_values"], batch["input_ids"], labels=labels)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        result = model(batch["pixel_values"], batch["input_ids"])
    assert torch.equal(result.logits.argmax(-1)[:, :-1][real], labels[:, 1:][real]), output.loss.item()
    assert torch.equal(result.logits_per_image.argmax(-1), torch.arange(8))
    generated = model.generate(batch["pixel_values"], num_beams=1, max_length=labels.shape[1], min_length=1)
    for row, caption in zip(generated, labels):
        length = int((caption != 0).sum())
        assert torch.equal(row[:length], caption[:length])


def test_overfitting_eight_pairs_with_the_dual_encoder() -> None:
    torch.manual_seed(0)
    model = VlpCocaModel(tiny_coca_config()).train()
    batch = tiny_coca_batch(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        output = model(**batch, return_loss=True)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    with torch.no_grad():
        result = model.eval()(**batch)
    assert torch.equal(result.logits_per_image.argmax(-1), torch.arange(8)), output.loss.item()
    assert torch.equal(result.logits_per_text.argmax(-1), torch.arange(8))


def test_save_load_round_trip_keeps_outputs_and_generation_config(tmp_path) -> None:
    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).eval()
    model.generation_config.max_length = 9
    model.save_pretrained(tmp_path)
    loaded = VlpCocaForConditionalGeneration.from_pretrained(tmp_path).eval()
    dual = VlpCocaModel.from_pretrained(tmp_path).eval()  # the captioning weights are skipped on purpose
    batch = tiny_coca_batch(2)
    with torch.no_grad():
        expected = model(batch["pixel_values"], batch["input_ids"])
        torch.testing.assert_close(loaded(batch["pixel_values"], batch["input_ids"]).logits, expected.logits)
        torch.testing.assert_close(dual(batch["input_ids"], batch["pixel_values"]).logits_per_image,
                                   expected.logits_per_image)
    assert loaded.generation_config.max_length == 9 and loaded.generation_config.forced_eos_token_id == 63


def test_bad_inputs_and_configs_are_refused_with_the_fix() -> None:
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).eval()
    batch = tiny_coca_batch(2)
    with pytest.raises(ValueError, match="align with input_ids"):
        model(batch["pixel_values"], batch["input_ids"], labels=batch["input_ids"][:, 1:])
    tokens = model.encode_image_tokens(batch["pixel_values"])
    with pytest.raises(ValueError, match="not both"):
        model(batch["pixel_values"], batch["input_ids"], image_tokens=tokens)
    with pytest.raises(ValueError, match="image_tokens"):
        model(batch["pixel_values"], batch["input_ids"], use_cache=True)
    with pytest.raises(ValueError, match="row b with image row b"):
        model(input_ids=batch["input_ids"], image_tokens=tokens[:1])
    with pytest.raises(ValueError, match="both input_ids and pixel_values"):
        VlpCocaModel(tiny_coca_config())(input_ids=batch["input_ids"])
    with pytest.raises(StrictDataclassClassValidationError, match="decoder_config.hidden_size"):
        VlpCocaConfig(text_config={"hidden_size": 64, "num_attention_heads": 2})
    with pytest.raises(StrictDataclassClassValidationError, match="pooler_layout"):
        tiny_coca_config(vision={"pooler_layout": "cascade"})
    with pytest.raises(ValueError, match="Unknown CoCa preset"):
        VlpCocaConfig.from_preset("coca_ViT-H-14")
    large = VlpCocaConfig.from_preset("coca_ViT-L-14")
    assert (large.projection_dim, large.vision_config.hidden_size, large.vision_config.patch_size) == (768, 1024, 14)
    assert large.text_config.max_position_embeddings == 76 and large.decoder_config.num_attention_heads == 12


def test_caption_strings_stop_at_end_of_text_for_every_row_of_a_batch() -> None:
    from hf_vlp.models.clip.tokenization_clip import clip_tokenizer_from_bpe
    from tests.helpers.coca import FIXTURE_BPE

    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config(text={"max_position_embeddings": 8})).eval()
    assert model.generation_config.max_length == 8  # open_clip's 30, capped by the text context
    tokenizer = clip_tokenizer_from_bpe(FIXTURE_BPE)
    pixel_values = tiny_coca_batch(4)["pixel_values"]
    sequences = model.generate(pixel_values, num_beams=1)
    captions = model.caption(pixel_values, tokenizer, num_beams=1)
    assert len(captions) == 4
    for row, caption in zip(sequences.tolist(), captions):
        end = row.index(63) + 1 if 63 in row else len(row)  # (63 is an ordinary token of the fixture's vocabulary)
        assert caption == tokenizer.decode(row[:end], skip_special_tokens=True).strip()
        assert not caption.endswith("!")


def test_pooler_heads_are_checked_against_the_projection_dim_the_model_uses() -> None:
    towers = dict(text_config={"hidden_size": 40, "num_attention_heads": 4},
                  decoder_config={"hidden_size": 40, "num_attention_heads": 4})
    config = VlpCocaConfig(projection_dim=40, vision_config={"pooler_num_attention_heads": 5}, **towers)
    assert (config.vision_config.projection_dim, config.decoder_config.memory_size) == (40, 40)
    with pytest.raises(StrictDataclassClassValidationError, match="pooler_num_attention_heads"):
        VlpCocaConfig(projection_dim=40, vision_config={"pooler_num_attention_heads": 3}, **towers)


def test_generation_encodes_each_image_once_and_shares_its_tokens_across_beams() -> None:
    torch.manual_seed(0)
    model = VlpCocaForConditionalGeneration(tiny_coca_config()).eval()
    images, projected = [], []
    model.vision_model.register_forward_hook(lambda module, args, output: images.append(args[0].shape[0]))
    attention = model.text_decoder.transformer.layers[0].cross_attention_block.attn
    project = attention.project_key_value
    attention.project_key_value = lambda states: projected.append(states.shape[0]) or project(states)
    generated = model.generate(tiny_coca_batch(2)["pixel_values"], num_beams=3, max_length=8, min_length=8)
    assert generated.shape == (2, 8)
    assert images == [2]  # the image tower ran once, on the 2 images
    assert projected == [2]  # 7 decoding steps x 3 beams, one key/value projection of 2 images' tokens
