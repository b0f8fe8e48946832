"""CoCa's joint training step on two gloo ranks (DDP) and on one process over the concatenated global batch.

CoCa has no momentum towers, queues or sampled negatives: its contrastive term gathers the features of every rank with
gradient, and its captioning term is a mean over the rank's caption tokens, so a distributed step should equal one
step on the global batch when every rank holds as many caption tokens (the reasoning is in
``tests/models/coca/test_distributed_coca.py``). ``tiny_coca_batch`` alternates full and padded captions, so ranks of
``LOCAL_BATCH`` = 4 rows hold the same number of caption tokens while their rows differ in length.
Each spawned rank runs :func:`rank_run`, which rebuilds the same model and batches from this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hf_vlp.models.coca import VlpCocaForConditionalGeneration

from .distributed_pretraining import grads_of
from .gloo_ranks import run_on_ranks
from .tiny_models import tiny_coca_batch, tiny_coca_config

WORLD_SIZE, LOCAL_BATCH, STEPS, LR = 2, 4, 2, 0.1
GLOBAL_BATCH = WORLD_SIZE * LOCAL_BATCH
LOSS_NAMES = ("loss", "contrastive_loss", "caption_loss")

Batch = dict[str, torch.Tensor]


def make_model() -> VlpCocaForConditionalGeneration:
    """The tiny captioning CoCa (no dropout) in train mode, with the default loss weights (1 and 2)."""
    torch.manual_seed(0)
    return VlpCocaForConditionalGeneration(tiny_coca_config()).train()


def global_steps() -> list[Batch]:
    """``STEPS`` global batches of ``GLOBAL_BATCH`` image-caption pairs."""
    return [tiny_coca_batch(GLOBAL_BATCH, seed=step) for step in range(STEPS)]


def rank_rows(inputs: Batch, rank: int) -> Batch:
    """Rank ``rank``'s rows of a global step (what a DistributedSampler hands it)."""
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    return {name: value[rows] for name, value in inputs.items()}


def caption_tokens(inputs: Batch) -> int:
    """How many tokens the captioning loss averages over: every non-pad position after the first."""
    return int(inputs["attention_mask"][:, 1:].sum())


def train(model: nn.Module, forward: nn.Module, step_inputs: list[Batch]) -> dict[str, object]:
    """SGD steps of ``forward`` (the model, or its DDP wrapper) on ``step_inputs`` with the joint loss; records each
    step's loss terms, its batch's similarity logits (``[b, b]`` on a rank) and the gradients before the update, then
    the weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    record: dict[str, list] = {"terms": [], "logits_per_image": [], "grads": []}
    for inputs in step_inputs:
        optimizer.zero_grad()
        output = forward(**inputs, labels=inputs["input_ids"])
        output.loss.backward()
        record["terms"].append({name: getattr(output, name).detach().clone() for name in LOSS_NAMES})
        record["logits_per_image"].append(output.logits_per_image.detach().clone())
        record["grads"].append(grads_of(model))
        optimizer.step()
    return {**record, "weights": {name: value.detach().clone() for name, value in model.state_dict().items()}}


def rank_run(rank: int) -> dict[str, object]:
    """On gloo rank ``rank``: the DDP-wrapped model trained on the rank's rows (DDP averages the gradients)."""
    from torch.nn.parallel import DistributedDataParallel

    model = make_model()
    return train(model, DistributedDataParallel(model), [rank_rows(step, rank) for step in global_steps()])


def two_rank_runs(out_dir: Path) -> dict[str, object]:
    """Both ranks' records (spawned gloo processes writing to ``out_dir``) and the same training on one process, each
    step one forward of the whole global batch."""
    ranks = run_on_ranks(rank_run, WORLD_SIZE, out_dir)
    torch.set_num_threads(1)
    model = make_model()
    return {"ranks": ranks, "reference": train(model, model, global_steps())}
