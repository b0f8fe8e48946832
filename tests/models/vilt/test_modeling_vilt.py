"""ViLT's model behaviour: variable-resolution image tokens, patch sampling, head initialisation, losses on
hand-checkable batches, the retrieval interface and error paths. Parity with the original is in
``tests/conversion/test_convert_vilt.py``; the common model checks in ``tests/models/test_model_contract.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_vlp.models.vilt import (
    VlpViltForImageTextRetrieval,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltModel,
)
from hf_vlp.objectives.contrastive import RetrievalFeatures
from tests.helpers.tiny_models import tiny_vilt_batch, tiny_vilt_config

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(model_class: type, seed: int = 0, **settings: object) -> nn.Module:
    torch.manual_seed(seed)
    return model_class(tiny_vilt_config(**settings)).eval()


def image_token_count(model: VlpViltModel, batch: dict[str, torch.Tensor]) -> int:
    return model.embed_image(batch["pixel_values"], batch["pixel_mask"]).tokens.shape[1]


def test_image_tokens_are_the_largest_images_patches_plus_class_token() -> None:
    model = seeded(VlpViltModel)
    batch = tiny_vilt_batch(3, image_sizes=((16, 24), (16, 16), (8, 24)))
    embedded = model.embed_image(batch["pixel_values"], batch["pixel_mask"])
    assert embedded.tokens.shape[1] == 1 + 6  # 2 x 3 patches of the 16 x 24 image
    assert embedded.token_mask.tolist() == [[1] * 7, [1] * 5 + [0] * 2, [1] * 4 + [0] * 3]
    # real patches row-major, padding slots -1
    assert embedded.patch_index[1].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [-1, -1], [-1, -1]]
    assert embedded.patch_index[2].tolist() == [[0, 0], [0, 1], [0, 2], [-1, -1], [-1, -1], [-1, -1]]


def test_padding_slots_do_not_change_the_real_tokens() -> None:
    """An image alone and the same image padded into a larger batch canvas give the same text and pooled states."""
    model = seeded(VlpViltModel)
    batch = tiny_vilt_batch(3, image_sizes=((16, 24), (16, 16), (8, 24)))
    together = model(**batch)
    for row in range(3):
        rows, columns = batch["pixel_mask"][row].nonzero().max(dim=0).values.add(1).tolist()
        alone = model(
            batch["input_ids"][row : row + 1], batch["attention_mask"][row : row + 1],
            pixel_values=batch["pixel_values"][row : row + 1, :, :rows, :columns],
        )
        torch.testing.assert_close(alone.pooler_output, together.pooler_output[row : row + 1], atol=1e-5, rtol=1e-4)
        length = batch["input_ids"].shape[1]
        torch.testing.assert_close(
            alone.last_hidden_state[:, :length], together.last_hidden_state[row : row + 1, :length], atol=1e-5,
            rtol=1e-4,
        )


def test_pixel_mask_defaults_to_the_zero_padding() -> None:
    model = seeded(VlpViltModel)
    batch = tiny_vilt_batch(3)
    explicit = model(**batch)
    derived = model(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
    torch.testing.assert_close(derived.last_hidden_state, explicit.last_hidden_state, atol=0, rtol=0)


def test_a_grid_sized_image_uses_the_position_grid_unchanged() -> None:
    """Interpolating the 2 x 2 grid to 2 x 2 (bilinear, align_corners) is the identity: the 16 px image's tokens are
    the ViT's plain embedding."""
    model = seeded(VlpViltModel)
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    masked = model.embed_image(pixels, torch.ones(2, 16, 16, dtype=torch.long)).tokens
    torch.testing.assert_close(masked, model.transformer.embed(pixels), atol=1e-6, rtol=0)


def test_training_samples_at_most_max_image_length_patches_reproducibly() -> None:
    model = seeded(VlpViltModel, max_image_length=4).train()
    batch = tiny_vilt_batch(4, image_sizes=((16, 24), (16, 16)))
    assert image_token_count(model, batch) == 1 + 4
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(model.embed_image(batch["pixel_values"], batch["pixel_mask"]).patch_index)
    assert torch.equal(draws[0], draws[1])
    torch.manual_seed(8)
    other = model.embed_image(batch["pixel_values"], batch["pixel_mask"]).patch_index
    assert not torch.equal(draws[0][0], other[0])  # the 6-patch image keeps another 4
    # evaluation keeps every patch whatever max_image_length says
    assert image_token_count(model.eval(), batch) == 1 + 6
    unlimited = seeded(VlpViltModel, max_image_length=-1).train()
    assert image_token_count(unlimited, batch) == 1 + 6


def test_modality_rows_mark_text_and_image_tokens() -> None:
    model = seeded(VlpViltModel)
    batch = tiny_vilt_batch(2)
    first = model(**batch, output_hidden_states=True).hidden_states[0]
    shift = torch.randn(16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.modality_embeddings.weight[1] += shift
    second = model(**batch, output_hidden_states=True).hidden_states[0]
    length = batch["input_ids"].shape[1]
    torch.testing.assert_close(second[:, :length], first[:, :length], atol=0, rtol=0)
    torch.testing.assert_close(second[:, length:], first[:, length:] + shift, atol=1e-6, rtol=0)


def test_errors_name_the_problem() -> None:
    model = seeded(VlpViltModel)
    batch = tiny_vilt_batch(2)
    with pytest.raises(ValueError, match="pass pixel_values"):
        model(batch["input_ids"], batch["attention_mask"])
    with pytest.raises(ValueError, match="one image per text"):
        model(batch["input_ids"][:1], batch["attention_mask"][:1], pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="image_token_type_idx"):
        model(**batch, image_token_type_idx=2)
    with pytest.raises(ValueError, match="pixel_mask"):
        model(**{**batch, "pixel_mask": batch["pixel_mask"][:, :8]})
    with pytest.raises(ValueError, match="beyond max_position_embeddings"):
        model(batch["input_ids"].repeat(1, 2), batch["attention_mask"].repeat(1, 2), pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="soft answer scores"):
        seeded(VlpViltForQuestionAnswering)(**batch, labels=torch.zeros(2))
    with pytest.raises(ValueError, match="both images"):
        seeded(VlpViltForVisualReasoning)(**batch)


def test_vqa_loss_is_bce_summed_over_answers_and_averaged_over_the_batch() -> None:
    model = seeded(VlpViltForQuestionAnswering)
    batch = tiny_vilt_batch(3)
    targets = torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0, 0.6, 0.9, 0], [0, 0, 0, 0, 0]])
    output = model(**batch, labels=targets)
    probabilities = output.logits.sigmoid()
    by_hand = -(targets * probabilities.log() + (1 - targets) * (1 - probabilities).log()).sum(dim=1).mean()
    torch.testing.assert_close(output.loss, by_hand, atol=1e-6, rtol=1e-5)


def test_nlvr2_second_image_row_starts_as_the_image_row_and_is_used() -> None:
    model = seeded(VlpViltForVisualReasoning)
    assert torch.equal(model.second_image_modality_embedding, model.vilt.modality_embeddings.weight[1])
    batch = {**tiny_vilt_batch(2), **{k: v for k, v in tiny_vilt_batch(2, seed=1, suffix="_2").items() if "_2" in k}}
    before = model(**batch).pooler_output_2
    with torch.no_grad():  # (a constant shift would vanish in the LayerNorms)
        model.second_image_modality_embedding += torch.randn(16, generator=torch.Generator().manual_seed(0))
    after = model(**batch)
    assert (after.pooler_output_2 - before).abs().max() > 1e-4
    first_only = model.vilt(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
    torch.testing.assert_close(after.pooler_output_1, first_only.pooler_output, atol=0, rtol=0)


def test_pretraining_losses_and_itm_image_index() -> None:
    model = seeded(VlpViltForPretraining)
    batch = tiny_vilt_batch(4)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = batch["input_ids"][:, 2]
    masked = batch["input_ids"].clone()
    masked[:, 2] = 4
    itm_labels = torch.tensor([1, 0, 1, 0])
    index = torch.tensor([0, 2, 2, 1])
    output = model(**batch, mlm_input_ids=masked, labels=labels, itm_labels=itm_labels, itm_image_index=index)
    torch.testing.assert_close(output.loss, output.loss_mlm + output.loss_itm + output.loss_wpa)
    torch.testing.assert_close(output.loss_itm, nn.functional.cross_entropy(output.itm_logits, itm_labels))
    expected_wpa = 0.1 * (output.wpa_distance[itm_labels == 1].sum() - output.wpa_distance[itm_labels == 0].sum()) / 4
    torch.testing.assert_close(output.loss_wpa, expected_wpa)
    # the ITM pass pairs text b with image index[b]; the MLM pass reads the masked text with its own image
    paired = {key: value[index] for key, value in batch.items() if key.startswith("pixel")}
    itm_only = model.vilt(batch["input_ids"], batch["attention_mask"], **paired)
    torch.testing.assert_close(output.itm_logits, model.itm_head(itm_only.pooler_output), atol=1e-5, rtol=1e-4)
    mlm_only = model.vilt(masked, batch["attention_mask"], pixel_values=batch["pixel_values"],
                          pixel_mask=batch["pixel_mask"])
    expected_mlm = model.mlm_head(mlm_only.last_hidden_state[:, : masked.shape[1]])
    torch.testing.assert_close(output.mlm_logits, expected_mlm, atol=1e-5, rtol=1e-4)
    output.loss.backward()
    assert model.mlm_head.decoder.weight.grad is not None
    assert model.itm_head.weight.grad is not None


def test_mlm_decoder_is_not_tied_to_the_word_embeddings() -> None:
    model = seeded(VlpViltForPretraining)
    assert model.mlm_head.decoder.weight.data_ptr() != model.vilt.text_embeddings.word_embeddings.weight.data_ptr()
    assert not torch.equal(model.mlm_head.decoder.weight, model.vilt.text_embeddings.word_embeddings.weight)


def test_retrieval_ranks_with_rank_output_starting_from_the_itm_match_row(tmp_path) -> None:
    model = seeded(VlpViltForImageTextRetrieval)
    torch.testing.assert_close(model.rank_output.weight[0], model.itm_head.weight[1], atol=0, rtol=0)
    assert not any(parameter.requires_grad for parameter in model.itm_head.parameters())
    model.save_pretrained(tmp_path)
    loaded = VlpViltForImageTextRetrieval.from_pretrained(tmp_path)
    assert not any(parameter.requires_grad for parameter in loaded.itm_head.parameters())
    assert all(parameter.requires_grad for parameter in loaded.rank_output.parameters())
    batch = tiny_vilt_batch(3)
    scores = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], batch["pixel_mask"])
    for image in range(3):
        pair = model(
            batch["input_ids"], batch["attention_mask"],
            pixel_values=batch["pixel_values"][[image] * 3], pixel_mask=batch["pixel_mask"][[image] * 3],
        ).logits[:, 0]
        torch.testing.assert_close(scores.image_to_text[image], pair, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.text_to_image, scores.image_to_text.T)


def test_retrieval_gallery_chunks_of_different_canvases_join() -> None:
    """Images embedded in chunks with different canvases (so different token counts) score as one batch does."""
    model = seeded(VlpViltForPretraining)
    batch = tiny_vilt_batch(3, image_sizes=((16, 24), (16, 16), (8, 24)))
    texts = model.encode_texts(batch["input_ids"], batch["attention_mask"])
    whole = model.score_matrices(model.encode_images(batch["pixel_values"], batch["pixel_mask"]), texts)
    chunks = [
        model.encode_images(batch["pixel_values"][:1, :, :16, :24], batch["pixel_mask"][:1, :16, :24]),
        model.encode_images(batch["pixel_values"][1:2, :, :16, :16], batch["pixel_mask"][1:2, :16, :16]),
        model.encode_images(batch["pixel_values"][2:, :, :8, :24], batch["pixel_mask"][2:, :8, :24]),
    ]
    joined = model.score_matrices(RetrievalFeatures.cat(chunks), texts, batch_size=2)
    torch.testing.assert_close(joined.image_to_text, whole.image_to_text, atol=1e-5, rtol=1e-4)
    pooled = model.vilt(**batch).pooler_output
    torch.testing.assert_close(whole.image_to_text.diagonal(), model.itm_head(pooled)[:, 1], atol=1e-5, rtol=1e-4)


def test_retrieval_fine_tuning_loss_takes_the_first_text_as_positive() -> None:
    model = seeded(VlpViltForImageTextRetrieval)
    batch = tiny_vilt_batch(2)
    grouped_ids = torch.stack([batch["input_ids"], batch["input_ids"].roll(1, 0), batch["input_ids"].roll(1, 1)], 1)
    grouped_mask = torch.stack([batch["attention_mask"]] * 3, dim=1)
    output = model(grouped_ids, grouped_mask, pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    assert output.logits.shape == (2, 3)
    torch.testing.assert_close(output.loss, nn.functional.cross_entropy(output.logits, torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="texts per image"):
        model(**batch, return_loss=True)
