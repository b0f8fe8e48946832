"""Retrieval recall@K: brute-force agreement, multi-caption images, chunking, bounded memory, Trainer integration."""

from __future__ import annotations


import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.trainer_pt_utils import EvalLoopContainer, nested_detach
from transformers.trainer_utils import EvalPrediction

from hf_vlp import VlpClipOutput
from hf_vlp.evaluation import (
    image_to_text_ranks,
    make_compute_metrics,
    retrieval_metrics_from_model,
    retrieval_recall,
    text_to_image_ranks,
)


def random_gallery(num_images: int, num_texts: int, dim: int, seed: int = 0):
    """Random embeddings where every image has >= 1 caption and captions lean towards their image."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, dim, generator=generator)
    extra = torch.randint(0, num_images, (num_texts - num_images,), generator=generator)
    text_to_image = torch.cat([torch.arange(num_images), extra])[torch.randperm(num_texts, generator=generator)]
    texts = images[text_to_image] + 2.0 * torch.randn(num_texts, dim, generator=generator)
    return images, texts, text_to_image


def brute_force_ranks(images, texts, text_to_image):
    """Reference: the full similarity matrix, sorted with argsort."""
    similarity = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    text_order = similarity.argsort(dim=1, descending=True)  # [Ni, Nt]
    position_of_text = text_order.argsort(dim=1)
    i2t = torch.stack(
        [position_of_text[i, (text_to_image == i).nonzero().flatten()].min() for i in range(images.shape[0])]
    )
    image_order = similarity.T.argsort(dim=1, descending=True)  # [Nt, Ni]
    t2i = (image_order == text_to_image[:, None]).float().argmax(dim=1)
    return i2t, t2i


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 36, 37, 100, 1024])
def test_matches_brute_force_for_chunk_sizes_that_do_not_divide_n(chunk_size):
    images, texts, text_to_image = random_gallery(37, 101, 16)
    i2t_reference, t2i_reference = brute_force_ranks(images, texts, text_to_image)
    unit_images, unit_texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
    assert torch.equal(image_to_text_ranks(unit_images, unit_texts, text_to_image, chunk_size), i2t_reference)
    assert torch.equal(text_to_image_ranks(unit_images, unit_texts, text_to_image, chunk_size), t2i_reference)

    metrics = retrieval_recall(images, texts, text_to_image, ks=(1, 5, 10), chunk_size=chunk_size)
    for k in (1, 5, 10):
        assert metrics[f"i2t_r{k}"] == pytest.approx((i2t_reference < k).float().mean().item())
        assert metrics[f"t2i_r{k}"] == pytest.approx((t2i_reference < k).float().mean().item())
    assert metrics["mean_recall"] == pytest.approx(np.mean([v for key, v in metrics.items() if key != "mean_recall"]))
    assert 0.0 < metrics["t2i_r1"] < metrics["t2i_r10"] < 1.0  # the data is neither trivial nor hopeless


def test_tiny_chunks_give_identical_results():
    images, texts, text_to_image = random_gallery(50, 130, 8, seed=3)
    assert retrieval_recall(images, texts, text_to_image, chunk_size=3) == retrieval_recall(
        images, texts, text_to_image, chunk_size=100_000
    )


def test_an_image_is_correct_if_any_of_its_captions_is_in_the_top_k():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.1, 1.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    text_to_image = [0, 1, 0, 1]  # caption 0 of image 0 looks like image 1; image 0's other caption is perfect
    metrics = retrieval_recall(images, texts, text_to_image, ks=(1, 2))
    assert metrics == pytest.approx(
        {"i2t_r1": 1.0, "i2t_r2": 1.0, "t2i_r1": 0.75, "t2i_r2": 1.0, "mean_recall": 3.75 / 4}
    )


def test_ties_count_against_the_query_but_not_among_an_images_own_captions():
    collapsed = retrieval_recall(torch.ones(4, 3), torch.ones(4, 3), range(4), ks=(1, 4))
    assert collapsed["i2t_r1"] == 0.0 and collapsed["t2i_r1"] == 0.0
    assert collapsed["i2t_r4"] == 1.0 and collapsed["t2i_r4"] == 1.0

    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # image 0 has two identical captions
    assert retrieval_recall(images, texts, [0, 0, 1], ks=(1,))["i2t_r1"] == 1.0


def test_feature_scale_does_not_matter():
    images, texts, text_to_image = random_gallery(20, 45, 8, seed=1)
    scales = torch.rand(45, 1) * 10 + 0.1
    assert retrieval_recall(images, texts, text_to_image) == retrieval_recall(images * 3, texts * scales, text_to_image)


class PeakTensorSize(TorchDispatchMode):
    """Records the largest tensor any torch op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else [result]:
            if isinstance(tensor, torch.Tensor):
                self.peak = max(self.peak, tensor.numel())
        return result


def test_memory_is_bounded_by_chunk_times_gallery():
    num_images, num_texts, chunk_size = 200, 1000, 32
    images, texts, text_to_image = random_gallery(num_images, num_texts, 8, seed=2)
    with PeakTensorSize() as tracker:
        chunked = retrieval_recall(images, texts, text_to_image, chunk_size=chunk_size)
    assert tracker.peak <= chunk_size * num_texts < num_images * num_texts
    assert chunked == retrieval_recall(images, texts, text_to_image, chunk_size=num_texts)


def test_coco_sized_gallery_5k_by_25k_runs_chunked():
    num_images, num_texts, chunk_size = 5000, 25000, 1024
    images, texts, text_to_image = random_gallery(num_images, num_texts, 32, seed=4)
    with PeakTensorSize() as tracker:
        metrics = retrieval_recall(images, texts, text_to_image, chunk_size=chunk_size)
    assert tracker.peak <= chunk_size * num_texts  # 25.6M entries instead of 125M
    assert 0.0 < metrics["t2i_r1"] < metrics["t2i_r10"] <= 1.0
    assert metrics["i2t_r1"] > metrics["t2i_r1"]  # five captions per image make image->text easier


@pytest.mark.parametrize(
    ("text_to_image", "match"),
    [
        ([0, 0, 1], "no caption"),
        ([0, 1], "2 entries but there are 3 texts"),
        ([0, 1, 3], r"\[0, 3\)"),
    ],
)
def test_bad_mapping_is_rejected(text_to_image, match):
    with pytest.raises(ValueError, match=match):
        retrieval_recall(torch.randn(3, 4), torch.randn(3, 4), text_to_image)


def test_bad_embeddings_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.full((2, 4), float("nan")), torch.randn(2, 4), [0, 1])
    with pytest.raises(ValueError, match="Embedding sizes differ"):
        retrieval_recall(torch.randn(2, 4), torch.randn(2, 5), [0, 1])
    with pytest.raises(ValueError, match="ks"):
        retrieval_recall(torch.randn(2, 4), torch.randn(2, 4), [0, 1], ks=(0,))


# --- a toy dual encoder usable both directly and through transformers.Trainer -------------------------


class ToyClip(nn.Module):
    """Images are 6-d vectors, texts are token ids; both linearly embedded into 4-d."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_projection = nn.Linear(6, 4)
        self.token_embedding = nn.Embedding(10, 4)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_projection(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.token_embedding(input_ids).mean(dim=1)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, return_loss: bool = True) -> VlpClipOutput:
        image_embeds = F.normalize(self.get_image_features(pixel_values), dim=-1)
        text_embeds = F.normalize(self.get_text_features(input_ids), dim=-1)
        logits_per_image = 10.0 * image_embeds @ text_embeds.T
        targets = torch.arange(len(image_embeds))
        loss = F.cross_entropy(logits_per_image, targets) if return_loss else None
        return VlpClipOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.T,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=BaseModelOutputWithPooling(
                last_hidden_state=self.token_embedding(input_ids), pooler_output=text_embeds
            ),
            vision_model_output=BaseModelOutputWithPooling(
                last_hidden_state=image_embeds[:, None], pooler_output=image_embeds
            ),
        )


class VectorProcessor:
    """'Images' are float vectors; texts are space-separated token ids."""

    def __call__(self, text=None, images=None, return_tensors="pt", padding=False):
        if images is not None:
            return {"pixel_values": torch.stack([torch.as_tensor(image) for image in images])}
        ids = torch.tensor([[int(token) for token in t.split()] for t in text])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture
def eval_rows():
    generator = torch.Generator().manual_seed(5)
    pixel_values = torch.randn(12, 6, generator=generator)
    input_ids = torch.randint(0, 10, (12, 3), generator=generator)
    return pixel_values, input_ids


def direct_recall(model, pixel_values, input_ids, swap=False, **kwargs):
    with torch.no_grad():
        output = model(pixel_values=pixel_values, input_ids=input_ids)
    image_embeds, text_embeds = output.image_embeds, output.text_embeds
    if swap:
        image_embeds, text_embeds = text_embeds, image_embeds
    return retrieval_recall(image_embeds, text_embeds, range(len(pixel_values)), **kwargs)


def trainer_style_eval_prediction(model, pixel_values, input_ids, batch_size, concat=True):
    """EvalPrediction assembled exactly as Trainer.evaluation_loop/prediction_step do (no labels, loss-able model)."""
    predictions = EvalLoopContainer(concat, padding_index=-100)
    labels = EvalLoopContainer(concat, padding_index=-100)
    with torch.no_grad():
        for start in range(0, len(pixel_values), batch_size):
            outputs = model(
                pixel_values=pixel_values[start : start + batch_size], input_ids=input_ids[start : start + batch_size]
            )
            logits = nested_detach(tuple(v for k, v in outputs.items() if k not in ["loss"]))
            predictions.add(logits)
            labels.add(())
    return EvalPrediction(predictions=predictions.get_arrays(), label_ids=labels.get_arrays())


def test_compute_metrics_on_trainer_style_predictions(eval_rows):
    model = ToyClip()
    expected = direct_recall(model, *eval_rows, ks=(1, 5))
    assert expected != direct_recall(model, *eval_rows, swap=True, ks=(1, 5))  # image/text mix-up would show
    eval_prediction = trainer_style_eval_prediction(model, *eval_rows, batch_size=5)
    assert eval_prediction.predictions[0].shape == (12, 5)  # padded square logits: unusable for recall
    assert make_compute_metrics(ks=(1, 5))(eval_prediction) == pytest.approx(expected)
    assert make_compute_metrics(embeds_positions=(3, 2), ks=(1, 5))(eval_prediction) == pytest.approx(expected)
    swapped = direct_recall(model, *eval_rows, swap=True, ks=(1, 5))
    assert make_compute_metrics(embeds_positions=(2, 3), ks=(1, 5))(eval_prediction) == pytest.approx(swapped)


def test_compute_metrics_without_concatenated_batches(eval_rows):
    model = ToyClip()
    eval_prediction = trainer_style_eval_prediction(model, *eval_rows, batch_size=5, concat=False)
    assert isinstance(eval_prediction.predictions, list)
    assert make_compute_metrics()(eval_prediction) == pytest.approx(direct_recall(model, *eval_rows))


def test_compute_metrics_groups_rows_of_the_same_image(eval_rows):
    pixel_values, input_ids = eval_rows
    image_ids = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "g", "h", "h"]
    first_row = {image_id: row for row, image_id in reversed(list(enumerate(image_ids)))}
    pixel_values = pixel_values[[first_row[image_id] for image_id in image_ids]]  # repeated rows hold the same image
    model = ToyClip()
    eval_prediction = trainer_style_eval_prediction(model, pixel_values, input_ids, batch_size=5)

    gallery_rows = sorted(set(first_row.values()))
    gallery_index = {image_id: gallery_rows.index(first_row[image_id]) for image_id in image_ids}
    with torch.no_grad():
        output = model(pixel_values=pixel_values, input_ids=input_ids)
    expected = retrieval_recall(
        output.image_embeds[gallery_rows], output.text_embeds, [gallery_index[i] for i in image_ids]
    )
    assert make_compute_metrics(image_ids=image_ids)(eval_prediction) == pytest.approx(expected)
    with pytest.raises(ValueError, match="one id per eval-dataset row"):
        make_compute_metrics(image_ids=image_ids[:-1])(eval_prediction)


def test_compute_metrics_asks_for_positions_when_detection_fails():
    eval_prediction = EvalPrediction(predictions=(np.full((4, 4), -100.0), np.eye(4, 3)[:, :3]), label_ids=())
    with pytest.raises(ValueError, match="embeds_positions"):
        make_compute_metrics()(eval_prediction)


@pytest.mark.parametrize("batch_eval_metrics", [False, True])
def test_compute_metrics_inside_a_real_trainer_evaluate(eval_rows, tmp_path, batch_eval_metrics):
    pixel_values, input_ids = eval_rows
    model = ToyClip()
    dataset = datasets.Dataset.from_dict(
        {"pixel_values": pixel_values.tolist(), "input_ids": input_ids.tolist()}
    ).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=5, use_cpu=True, batch_eval_metrics=batch_eval_metrics
    )
    trainer = Trainer(model=model, args=args, eval_dataset=dataset, compute_metrics=make_compute_metrics(ks=(1, 5)))
    metrics = trainer.evaluate()
    expected = direct_recall(model, pixel_values, input_ids, ks=(1, 5))
    assert {key: metrics[f"eval_{key}"] for key in expected} == pytest.approx(expected)


def test_retrieval_metrics_from_model(eval_rows):
    pixel_values, input_ids = eval_rows
    images = list(pixel_values)
    texts = [" ".join(map(str, row.tolist())) for row in input_ids]
    model = ToyClip()
    expected = direct_recall(model, pixel_values, input_ids)
    assert retrieval_metrics_from_model(model, VectorProcessor(), images, texts, batch_size=5, text_batch_size=4) == (
        pytest.approx(expected)
    )

    # two captions per image
    doubled_texts = texts + texts[::-1]
    text_to_image = list(range(12)) + list(range(11, -1, -1))
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values)
        text_features = model.get_text_features(torch.cat([input_ids, input_ids.flip(0)]))
    expected = retrieval_recall(image_features, text_features, text_to_image)
    result = retrieval_metrics_from_model(model, VectorProcessor(), images, doubled_texts, text_to_image, batch_size=5)
    assert result == pytest.approx(expected)
    with pytest.raises(ValueError, match="pass `text_to_image`"):
        retrieval_metrics_from_model(model, VectorProcessor(), images, doubled_texts)
