"""VQA answer-ranking accuracy and classifier accuracy with stand-in models."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_vlp.evaluation.classification import classification_accuracy
from hf_vlp.evaluation.vqa import answer_score, vqa_accuracy


def test_answer_score_is_exact_for_one_answer_and_vqa_style_for_lists():
    assert answer_score("red", "red") == 1.0 and answer_score("red", ["blue"]) == 0.0
    assert answer_score("red", ["red", "red", "blue", "red", "red"]) == 1.0
    assert answer_score("red", ["red", "blue", "blue"]) == pytest.approx(1 / 3)


class FirstWordProcessor:
    """Questions "q<k>" -> id k; every candidate answer is one token."""

    def encode_answers(self, answers, return_tensors="pt"):
        ids = torch.arange(len(answers))[:, None].repeat(1, 3)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def __call__(self, images=None, text=None, text_kind="caption", return_tensors="pt"):
        ids = torch.tensor([int(t[1:]) for t in text])[:, None]
        return {"pixel_values": torch.zeros(len(images), 3, 2, 2), "input_ids": ids, "attention_mask": torch.ones_like(ids)}


class RankByQuestion(nn.Module):
    """Ranks candidate ``question id % A`` first."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def rank_answers(self, pixel_values, input_ids, answer_input_ids, attention_mask=None, answer_attention_mask=None, k=1):
        best = input_ids[:, 0] % answer_input_ids.shape[0]
        return SimpleNamespace(answer_indices=best[:, None])


def test_vqa_accuracy_ranks_the_candidate_list():
    answer_list = ["yes", "no", "red"]
    questions = ["q0", "q1", "q2", "q5"]  # predicted: yes, no, red, red
    answers = ["yes", "yes", ["red", "red", "red"], "no"]
    metrics = vqa_accuracy(RankByQuestion(), FirstWordProcessor(), [None] * 4, questions, answers, answer_list,
                           batch_size=3)
    assert metrics["vqa_accuracy"] == pytest.approx(0.5)
    assert metrics["vqa_chance"] == pytest.approx(1 / 3)
    assert metrics["vqa_majority_baseline"] == pytest.approx(0.5)  # "yes" twice out of four
    with pytest.raises(TypeError, match="rank_answers"):
        vqa_accuracy(nn.Linear(1, 1), FirstWordProcessor(), [None], ["q0"], ["yes"], answer_list)


class EchoClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, features):
        return SimpleNamespace(logits=features)


def test_classification_accuracy_per_class():
    rows = [{"label": label, "guess": guess} for label, guess in [(0, 0), (1, 1), (1, 0), (2, 2)]]

    def collate(batch):
        return {
            "features": nn.functional.one_hot(torch.tensor([row["guess"] for row in batch]), 3).float(),
            "labels": torch.tensor([row["label"] for row in batch]),
        }

    metrics = classification_accuracy(EchoClassifier(), collate, rows, 3, batch_size=3, class_names=["a", "b", "c"])
    assert metrics["accuracy"] == 0.75 and metrics["chance"] == pytest.approx(1 / 3)
    assert metrics["majority_baseline"] == 0.5 and metrics["accuracy_b"] == 0.5 and metrics["accuracy_c"] == 1.0
    with pytest.raises(ValueError, match="predicts 3 classes"):
        classification_accuracy(EchoClassifier(), collate, rows, 2)
