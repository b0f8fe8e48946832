"""ALBEF visual-reasoning heads: NLVR2 (paired encoder with shared cross-attention key/value), its text-assignment
pre-training and SNLI-VE - layout, save/load of the tie, initialisation from pre-trained ALBEF, distillation loss,
input errors, and overfitting 8 examples per head."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_vlp.models.albef import (
    VlpAlbefConfig,
    VlpAlbefForPretraining,
    VlpAlbefForTextAssignment,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
    VlpAlbefPairedTextModel,
)
from hf_vlp.models.albef.modeling_albef_reasoning import (
    distilled_classification_loss,
    paired_num_layers,
    sample_text_assignment,
)
from hf_vlp.modules.attention import padding_mask
from hf_vlp.modules.vision import interpolate_grid_embeddings
from tests.helpers.momentum_checks import train_with_adam
from tests.helpers.tiny_models import NO_DROPOUT, TINY_VIT

IMAGE, TEXT_LAYERS, FUSION = TINY_VIT["image_size"], 4, 2


def tiny_config(**overrides) -> VlpAlbefConfig:
    """The tiny ViT (``IMAGE`` px images, 8 px patches) and a width-32, 4-head text of ``TEXT_LAYERS`` layers fusing
    from ``FUSION``; a ``vision_config``/``text_config`` override replaces that tower's settings whole."""
    text = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=TEXT_LAYERS, num_attention_heads=4,
        max_position_embeddings=16, fusion_layer=FUSION, **NO_DROPOUT,
    )
    settings = {"vision_config": dict(TINY_VIT), "text_config": text, "embed_dim": 16, "queue_size": 8, **overrides}
    return VlpAlbefConfig(**settings)


def tiny_batch(batch: int = 4, images_per_text: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, images_per_text, 3, IMAGE, IMAGE) if images_per_text > 1 else (batch, 3, IMAGE, IMAGE)
    input_ids = torch.randint(5, 64, (batch, 6), generator=generator)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(shape, generator=generator),
    }


def paired_layers(model: VlpAlbefForVisualReasoning | VlpAlbefForTextAssignment, momentum: bool = False):
    text_model = model.momentum_text_model if momentum else model.text_model
    return text_model.transformer.encoder.layers


# --------------------------------------------------------------------------------------------------- layout


def test_paired_encoder_shares_one_kv_parameter_per_pair_and_nothing_else() -> None:
    model = VlpAlbefForVisualReasoning(tiny_config())
    assert paired_num_layers(model.config.text_config) == 6 and model.config.text_config.num_hidden_layers == 4
    for momentum in (False, True):
        layers = paired_layers(model, momentum)
        assert len(layers) == 6 and not any(layer.has_cross_attention for layer in layers[:FUSION])
        for first in (2, 4):
            a, b = layers[first], layers[first + 1]
            assert a.cross_attn.kv.weight is b.cross_attn.kv.weight and a.cross_attn.kv.bias is b.cross_attn.kv.bias
            for name in ("cross_attn.q.weight", "cross_attn.out_proj.weight", "norm_cross.weight", "attn.qkv.weight",
                         "norm1.weight", "mlp.fc1.weight", "norm2.bias"):
                assert a.get_parameter(name) is not b.get_parameter(name), name
        assert layers[3].cross_attn.kv.weight is not layers[4].cross_attn.kv.weight
    # the EMA pairs parameters one to one: the tie counts once on both sides
    online, momentum = zip(*model.momentum_pairs())
    assert sum(1 for m in online for _ in m.parameters()) == sum(1 for m in momentum for _ in m.parameters())
    assert all(not p.requires_grad for m in momentum for p in m.parameters())
    out = model(**tiny_batch(), labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()
    shared = paired_layers(model)[2].cross_attn.kv.weight
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert model.config.id2label == {0: "False", 1: "True"} and model.config.label2id == {"False": 0, "True": 1}


def test_pair_layers_cross_attend_the_first_then_the_second_image() -> None:
    torch.manual_seed(0)
    text_model = VlpAlbefPairedTextModel(tiny_config().text_config).eval()
    ids = tiny_batch()["input_ids"]
    first, second = torch.randn(4, 3, 24), torch.randn(4, 7, 24)  # different lengths tell the images apart
    out = text_model(ids, (first, second), output_attentions=True, return_dict=True)
    lengths = [None if w is None else w.shape[-1] for w in out.cross_attentions]
    assert lengths == [None, None, 3, 7, 3, 7]
    # the loop equals running each layer by hand on its image, as xbert does with a list of encoder states
    with torch.no_grad():
        hidden = text_model.transformer.embeddings(ids)
        for index, layer in enumerate(text_model.transformer.encoder.layers):
            memory = None if index < FUSION else (first, second)[(index - FUSION) % 2]
            hidden = layer(hidden, None, memory, None)[0]
        torch.testing.assert_close(out.last_hidden_state, hidden)
    with pytest.raises(ValueError, match="exactly two images"):
        text_model(ids, (first,))


def test_forward_shapes_hidden_states_and_tuple_output() -> None:
    model = VlpAlbefForVisualReasoning(tiny_config()).eval()
    batch = tiny_batch()
    out = model(**batch, labels=torch.tensor([0, 1, 1, 0]), output_hidden_states=True)
    assert out.logits.shape == (4, 2) and out.loss.ndim == 0
    assert out.last_hidden_state.shape == (4, 6, 32) and out.image_hidden_states.shape == (4, 2, 5, 24)
    plain = model(**batch)
    assert plain.loss is None and plain.last_hidden_state is None
    as_tuple = model(**batch, return_dict=False)
    torch.testing.assert_close(as_tuple[0], plain.logits)
    # the two images of an example are not interchangeable
    swapped = model(batch["input_ids"], batch["pixel_values"].flip(1), batch["attention_mask"]).logits
    assert not torch.allclose(swapped, plain.logits)


def test_tied_kv_survives_save_and_load(tmp_path: Path) -> None:
    model = VlpAlbefForVisualReasoning(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    kv_keys = sorted(key for key in saved if key.endswith("cross_attn.kv.weight"))
    assert kv_keys == [f"{tower}.transformer.encoder.layers.{i}.cross_attn.kv.weight"
                       for tower in ("momentum_text_model", "text_model") for i in (2, 4)]
    loaded = VlpAlbefForVisualReasoning.from_pretrained(tmp_path, dtype=torch.float32)
    batch = tiny_batch()
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    for momentum in (False, True):
        layers = paired_layers(loaded, momentum)
        assert layers[4].cross_attn.kv.weight is layers[5].cross_attn.kv.weight
        assert layers[4].cross_attn.kv.weight.requires_grad is not momentum
    with torch.no_grad():
        paired_layers(loaded)[2].cross_attn.kv.weight.add_(1.0)
    assert torch.equal(paired_layers(loaded)[3].cross_attn.kv.weight, paired_layers(loaded)[2].cross_attn.kv.weight)


# --------------------------------------------------------------------------------------------------- initialisation


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    directory = tmp_path_factory.mktemp("albef")
    VlpAlbefForPretraining(tiny_config()).save_pretrained(directory)
    return directory


def test_from_albef_pretrained_copies_fusion_layer_f_plus_i_into_both_layers_of_pair_i(pretrained_dir: Path) -> None:
    pretrained = VlpAlbefForPretraining.from_pretrained(pretrained_dir, dtype=torch.float32)
    source_layers = pretrained.text_model.transformer.encoder.layers
    for source in (pretrained_dir, pretrained):
        model = VlpAlbefForVisualReasoning.from_albef_pretrained(source)
        layers = paired_layers(model)
        for index, layer in enumerate(layers):
            origin = index if index < FUSION else FUSION + (index - FUSION) // 2
            for name, parameter in layer.named_parameters():
                assert torch.equal(parameter, source_layers[origin].get_parameter(name)), (index, name)
        assert layers[2].cross_attn.kv.weight is layers[3].cross_attn.kv.weight
        assert torch.equal(
            model.vision_model.transformer.patch_embed.weight,
            pretrained.vision_model.transformer.patch_embed.weight,
        )
        for online, momentum in model.momentum_pairs():
            for p, p_m in zip(online.parameters(), momentum.parameters()):
                assert torch.equal(p, p_m) and not p_m.requires_grad
        assert model.config.architectures is None and model.config.id2label == {0: "False", 1: "True"}


def test_nlvr_with_the_same_image_twice_applies_each_pretrained_fusion_layer_twice(pretrained_dir: Path) -> None:
    pretrained = VlpAlbefForPretraining.from_pretrained(pretrained_dir, dtype=torch.float32).eval()
    model = VlpAlbefForVisualReasoning.from_albef_pretrained(pretrained_dir)
    batch = tiny_batch(images_per_text=1)
    pairs = torch.stack([batch["pixel_values"]] * 2, dim=1)
    with torch.no_grad():
        fused = model(batch["input_ids"], pairs, batch["attention_mask"], output_hidden_states=True).last_hidden_state
        albef = pretrained
        image = albef.encode_image(batch["pixel_values"]).last_hidden_state
        hidden = albef.encode_text(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        mask = padding_mask(batch["attention_mask"], hidden.dtype)
        for layer in albef.text_model.transformer.encoder.layers[FUSION:]:
            hidden = layer(layer(hidden, mask, image)[0], mask, image)[0]
    torch.testing.assert_close(fused, hidden, atol=1e-5, rtol=0)


def test_from_albef_pretrained_resizes_positions_and_builds_ta_and_ve(pretrained_dir: Path) -> None:
    pretrained = VlpAlbefForPretraining.from_pretrained(pretrained_dir, dtype=torch.float32)
    positions = pretrained.vision_model.transformer.position_embedding
    model = VlpAlbefForVisualReasoning.from_albef_pretrained(pretrained, image_size=2 * IMAGE)
    expected = interpolate_grid_embeddings(positions, 1, 2, (4, 4))
    assert model.config.vision_config.image_size == 2 * IMAGE
    assert torch.equal(model.vision_model.transformer.position_embedding, expected)
    assert torch.equal(model.momentum_vision_model.transformer.position_embedding, expected)
    assert model(**tiny_batch() | {"pixel_values": torch.randn(4, 2, 3, 32, 32)}).logits.shape == (4, 2)

    ta = VlpAlbefForTextAssignment.from_albef_pretrained(pretrained)
    assert torch.equal(ta.vision_proj.weight, pretrained.vision_proj.weight)
    pretrained_layers = pretrained.text_model.transformer.encoder.layers
    assert torch.equal(paired_layers(ta)[5].mlp.fc1.weight, pretrained_layers[3].mlp.fc1.weight)
    assert ta.config.id2label == {0: "first_image", 1: "second_image", 2: "neither"}

    ve = VlpAlbefForVisualEntailment.from_albef_pretrained(pretrained_dir)
    towers = ((ve.text_model, pretrained.text_model), (ve.vision_model, pretrained.vision_model))
    for online, source in towers:
        for (name, p), p_source in zip(online.named_parameters(), source.parameters()):
            assert torch.equal(p, p_source), name
    assert ve.config.id2label == {0: "contradiction", 1: "neutral", 2: "entailment"}
    assert ve.config.label2id["entailment"] == 2

    with pytest.raises(TypeError, match="VlpAlbefModel"):
        VlpAlbefForVisualReasoning.from_albef_pretrained(42)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VlpAlbefForVisualReasoning.from_albef_pretrained(pretrained, image_size=20)


def test_task_checkpoints_are_not_pretrained_albef_and_vice_versa(pretrained_dir: Path, tmp_path: Path) -> None:
    VlpAlbefForVisualEntailment(tiny_config()).save_pretrained(tmp_path / "ve")
    with pytest.raises(ValueError, match="not pre-trained ALBEF towers"):
        VlpAlbefForVisualReasoning.from_albef_pretrained(tmp_path / "ve")
    with pytest.raises(ValueError, match="from_albef_pretrained"):
        VlpAlbefForVisualReasoning.from_pretrained(pretrained_dir)
    with pytest.raises(ValueError, match="from_albef_pretrained"):
        VlpAlbefForVisualEntailment.from_pretrained(pretrained_dir)


def test_text_assignment_weights_load_into_visual_reasoning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(2)
    ta = VlpAlbefForTextAssignment(tiny_config())
    ta.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model, info = VlpAlbefForVisualReasoning.from_pretrained(
            tmp_path, dtype=torch.float32, output_loading_info=True
        )
    assert info["missing_keys"] == {"cls_head.0.weight", "cls_head.0.bias", "cls_head.2.weight", "cls_head.2.bias"}
    assert info["unexpected_keys"] == set()
    # a text-assignment save has no momentum towers (they are copied from the loaded online ones below), so
    # transformers may warn that the momentum pairs' tied key/value are absent; nothing else may be reported missing
    corrupted = [record.getMessage() for record in caplog.records if "corrupted" in record.getMessage()]
    assert all("momentum_" in message and "to tie momentum_" in message for message in corrupted), corrupted
    for ours, theirs in ((model.text_model, ta.text_model), (model.vision_model, ta.vision_model)):
        for (name, p), p_ta in zip(ours.named_parameters(), theirs.parameters()):
            assert torch.equal(p, p_ta), name
    for online, momentum in model.momentum_pairs():  # copied from the loaded online towers, frozen
        for p, p_m in zip(online.parameters(), momentum.parameters()):
            assert torch.equal(p, p_m) and not p_m.requires_grad
    layers = paired_layers(model, momentum=True)
    assert layers[2].cross_attn.kv.weight is layers[3].cross_attn.kv.weight
    assert model.config.id2label == {0: "False", 1: "True"}


# --------------------------------------------------------------------------------------------------- loss and errors


def test_distillation_loss_by_hand_on_a_2x2_case() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5]])
    teacher = torch.tensor([[1.0, 0.0], [-2.0, 2.0]])
    labels = torch.tensor([0, 0])
    alpha = 0.4

    def log_softmax(row: list[float]) -> list[float]:
        norm = math.log(sum(math.exp(v) for v in row))
        return [v - norm for v in row]

    def softmax(row: list[float]) -> list[float]:
        return [math.exp(v) for v in log_softmax(row)]

    rows = [(logits[i].tolist(), teacher[i].tolist(), int(labels[i])) for i in range(2)]
    hard = sum(-log_softmax(s)[y] for s, _, y in rows) / 2
    soft = sum(-sum(q * lp for q, lp in zip(softmax(t), log_softmax(s))) for s, t, _ in rows) / 2
    expected = (1 - alpha) * hard + alpha * soft
    assert distilled_classification_loss(logits, labels, teacher, alpha).item() == pytest.approx(expected, abs=1e-6)
    assert distilled_classification_loss(logits, labels, None, alpha).item() == pytest.approx(hard, abs=1e-6)

    model = VlpAlbefForVisualReasoning(tiny_config()).eval()
    with torch.no_grad():
        model.momentum_cls_head[2].weight.mul_(-3.0)  # a teacher that disagrees with the student
    batch = tiny_batch(batch=2)
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        student = model.classify(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])[0]
        teacher = model.classify(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], momentum=True)[0]
        out = model(**batch, labels=labels, alpha=alpha)
        default = model(**batch, labels=labels)  # alpha = distill_alpha = config.alpha (0.4)
        model.distill_alpha = 0.0
        plain = model(**batch, labels=labels)
    torch.testing.assert_close(out.loss, distilled_classification_loss(student, labels, teacher, alpha))
    torch.testing.assert_close(default.loss, out.loss)
    torch.testing.assert_close(plain.loss, torch.nn.functional.cross_entropy(student, labels))


def test_label_and_input_errors() -> None:
    model = VlpAlbefForVisualReasoning(tiny_config()).eval()
    batch = tiny_batch()
    with pytest.raises(ValueError, match="labels contain -100"):
        model(**batch, labels=torch.tensor([0, -100, 1, 1]))
    with pytest.raises(ValueError, match=r"labels \[2\] are not classes of this head \(0 = False, 1 = True\)"):
        model(**batch, labels=torch.tensor([0, 2, 1, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        model(**batch, labels=torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        model(**batch, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[batch, 2, channels, height, width\].*torch.stack"):
        model(batch["input_ids"], batch["pixel_values"][:, 0])
    with pytest.raises(ValueError, match=r"\[batch, 2, channels"):
        model(batch["input_ids"], torch.randn(4, 3, 3, IMAGE, IMAGE))
    with pytest.raises(ValueError, match="one image pair per text: got 3 and 4"):
        model(batch["input_ids"], batch["pixel_values"][:3])
    ve = VlpAlbefForVisualEntailment(tiny_config()).eval()
    with pytest.raises(ValueError, match="one premise image per hypothesis"):
        ve(batch["input_ids"], batch["pixel_values"])
    with pytest.raises(ValueError, match=r"labels \[3\] are not classes.*2 = entailment"):
        ve(batch["input_ids"], batch["pixel_values"][:, 0], labels=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="at least one fusion layer"):
        VlpAlbefForVisualReasoning(tiny_config(text_config=dict(num_hidden_layers=2, fusion_layer=2)))


# --------------------------------------------------------------------------------------------------- text assignment


def original_text_assignment(weights: torch.Tensor) -> tuple[list[list[int]], list[int]]:
    """``model_pretrain_nlvr.py``'s loop on the global random stream."""
    pairs, labels = [], []
    for b in range(weights.shape[0]):
        if torch.rand(1) > 1 / 3:
            idx = torch.multinomial(weights[b], 1).item()
            if torch.rand(1) > 0.5:
                pairs.append([b, idx])
                labels.append(0)
            else:
                pairs.append([idx, b])
                labels.append(1)
        else:
            idx = torch.multinomial(weights[b], 2)
            pairs.append(idx.tolist())
            labels.append(2)
    return pairs, labels


def test_text_assignment_sampling_follows_the_original() -> None:
    features = torch.nn.functional.normalize(torch.randn(12, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    weights = torch.softmax(features @ features.T / 0.07, dim=1)
    weights.fill_diagonal_(0)
    torch.manual_seed(7)
    expected_pairs, expected_labels = original_text_assignment(weights)
    torch.manual_seed(7)
    pairs, labels = sample_text_assignment(features)
    assert pairs.tolist() == expected_pairs and labels.tolist() == expected_labels
    assert set(expected_labels) == {0, 1, 2}
    for row, ((first, second), label) in enumerate(zip(pairs.tolist(), labels.tolist())):
        assert first != second and [first == row, second == row, row not in (first, second)][label]
    again = sample_text_assignment(features, torch.Generator().manual_seed(5))
    same = sample_text_assignment(features, torch.Generator().manual_seed(5))
    assert torch.equal(again[0], same[0]) and torch.equal(again[1], same[1])
    with pytest.raises(ValueError, match="at least 3"):
        sample_text_assignment(features[:2])


def test_text_assignment_forward_sampled_indexed_and_paired() -> None:
    model = VlpAlbefForTextAssignment(tiny_config()).eval()
    batch = tiny_batch(batch=5, images_per_text=1)
    sampled = model(**batch, generator=torch.Generator().manual_seed(0))
    assert sampled.logits.shape == (5, 3) and sampled.loss.ndim == 0 and sampled.image_pair_indices.shape == (5, 2)
    given = model(**batch, image_pair_indices=sampled.image_pair_indices, labels=sampled.labels)
    torch.testing.assert_close(given.logits, sampled.logits)
    torch.testing.assert_close(given.loss, sampled.loss)
    pairs = batch["pixel_values"][sampled.image_pair_indices]
    paired = model(batch["input_ids"], pairs, batch["attention_mask"], labels=sampled.labels)
    torch.testing.assert_close(paired.logits, sampled.logits, atol=1e-5, rtol=0)
    assert paired.image_pair_indices is None
    with pytest.raises(ValueError, match="together with their labels"):
        model(**batch, image_pair_indices=sampled.image_pair_indices)
    with pytest.raises(ValueError, match=r"\[5, 2\] in-batch image indices"):
        model(**batch, image_pair_indices=torch.tensor([[0, 9]] * 5), labels=sampled.labels)


# --------------------------------------------------------------------------------------------------- overfitting


def overfit(model, step, steps: int = 30, lr: float = 1e-2) -> tuple[float, float]:
    """Train ``steps`` Adam steps (EMA after each, as MomentumCallback); return (first loss, last loss)."""
    torch.manual_seed(0)
    losses = train_with_adam(model, lambda _: step(model), steps, lr, ema_momentum=0.9)
    return losses[0], losses[-1]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


@pytest.mark.parametrize("head", ["nlvr2", "snli-ve"])
def test_overfit_eight_examples(head: str) -> None:
    torch.manual_seed(0)
    config = tiny_config(momentum=0.9)
    if head == "nlvr2":
        model, batch = VlpAlbefForVisualReasoning(config), tiny_batch(batch=8, seed=1)
        labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    else:
        model, batch = VlpAlbefForVisualEntailment(config), tiny_batch(batch=8, images_per_text=1, seed=1)
        labels = torch.tensor([0, 1, 2, 2, 1, 0, 2, 1])
    first, last = overfit(model, lambda m: m(**batch, labels=labels).loss)
    with torch.no_grad():
        logits = model(**batch).logits
    assert last < 0.4 * first, (first, last)
    assert accuracy(logits, labels) == 1.0


def test_overfit_eight_examples_text_assignment() -> None:
    torch.manual_seed(0)
    model = VlpAlbefForTextAssignment(tiny_config())
    batch = tiny_batch(batch=8, images_per_text=1, seed=2)
    # every label, each text with its own (first, second) images
    fixed = {
        "image_pair_indices": torch.tensor([[0, 1], [2, 1], [1, 3], [4, 5], [6, 4], [7, 0], [3, 2], [5, 7]]),
        "labels": torch.tensor([0, 2, 1, 0, 1, 2, 1, 2]),
    }
    first, last = overfit(model, lambda m: m(**batch, **fixed).loss, lr=5e-3)
    with torch.no_grad():
        logits = model(**batch, **fixed).logits
    assert last < 0.2 * first, (first, last)
    assert accuracy(logits, fixed["labels"]) == 1.0


def test_model_card_names_the_task_when_no_pipeline_exists(tmp_path):
    from hf_vlp.integrations.model_card import render_model_card

    model = VlpAlbefForVisualEntailment(tiny_config())
    card = render_model_card(model, repo_id="me/ve", metrics={"accuracy": 0.9}, dataset="synthetic-shapes")
    assert card.data.pipeline_tag is None
    assert card.data.eval_results[0].task_type == "visual-entailment"
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").is_file()
