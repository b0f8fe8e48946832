"""The shared classification loss: transformers' problem-type rule and hand-checked loss values."""

import math

import pytest
import torch
from transformers import PretrainedConfig

from hf_vlp.utils.classification import classification_loss, infer_problem_type


def _config(num_labels: int, problem_type: str | None = None) -> PretrainedConfig:
    return PretrainedConfig(num_labels=num_labels, problem_type=problem_type)


def test_problem_type_is_inferred_as_transformers_does():
    assert infer_problem_type(1, torch.tensor([1])) == "regression"
    assert infer_problem_type(1, torch.tensor([1.0])) == "regression"
    assert infer_problem_type(3, torch.tensor([1])) == "single_label_classification"
    assert infer_problem_type(3, torch.tensor([1], dtype=torch.int32)) == "single_label_classification"
    assert infer_problem_type(3, torch.tensor([[1.0, 0.0, 1.0]])) == "multi_label_classification"
    assert infer_problem_type(3, torch.tensor([[1, 0, 1]], dtype=torch.uint8)) == "multi_label_classification"


def test_regression_is_mean_squared_error():
    config = _config(1)
    logits = torch.tensor([[0.5], [1.0], [-1.0]])
    loss = classification_loss(logits, torch.tensor([1.5, 1.0, 1.0]), config)
    assert math.isclose(loss.item(), (1.0 + 0.0 + 4.0) / 3, rel_tol=1e-6)
    assert config.problem_type == "regression"  # recorded, as transformers does
    two_targets = _config(2, "regression")
    loss = classification_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 3.0]]), two_targets)
    assert math.isclose(loss.item(), (1.0 + 4.0) / 2, rel_tol=1e-6)


def test_single_label_is_cross_entropy_ignoring_minus_100():
    config = _config(2)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]])  # p(class 1) = 3/4 in row 0
    loss = classification_loss(logits, torch.tensor([1, 0, -100]), config)
    assert math.isclose(loss.item(), (-math.log(0.75) + math.log(2.0)) / 2, rel_tol=1e-6)
    assert config.problem_type == "single_label_classification"


def test_multi_label_is_binary_cross_entropy_with_logits():
    config = _config(2)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # sigmoid: 1/2 and 3/4
    loss = classification_loss(logits, torch.tensor([[1.0, 0.0]]), config)
    assert math.isclose(loss.item(), (math.log(2.0) - math.log(0.25)) / 2, rel_tol=1e-6)
    assert config.problem_type == "multi_label_classification"


def test_a_set_problem_type_wins_and_a_wrong_one_is_named():
    config = _config(2, "multi_label_classification")
    loss = classification_loss(torch.zeros(1, 2), torch.tensor([[1, 0]]), config)  # integer multi-hot targets
    assert math.isclose(loss.item(), math.log(2.0), rel_tol=1e-6)
    config.problem_type = "ranking"
    with pytest.raises(ValueError, match="problem_type must be one of"):
        classification_loss(torch.zeros(1, 2), torch.tensor([1]), config)
