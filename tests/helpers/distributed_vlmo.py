"""VLMo pre-training on two gloo ranks (DDP) and on one process over the concatenated global batch.

VLMo has no momentum towers or queues: its ITC gathers the features of every rank with gradient and its ITM draws
negatives from the gathered batch, so a distributed step should equal one step on the global batch (the reasoning is
in ``tests/models/vlmo/test_distributed_vlmo.py``). Every input is fixed up front from the GLOBAL batch - the MLM
masking (the same number of labelled tokens on each rank) and the ITM negatives as global indices - and each rank
gets its rows. ``torch.multiprocessing.spawn`` pickles :func:`distributed_worker` by name, so a worker rebuilds the
same run from this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from hf_vlp.models.vlmo import VlpVlmoForPretraining
from hf_vlp.objectives.distributed import all_gather_no_grad

from .distributed_pretraining import grads_of
from .tiny_models import MASK_ID, tiny_vlmo_batch, tiny_vlmo_config

WORLD_SIZE, LOCAL_BATCH, STEPS, LR = 2, 3, 2, 0.05
GLOBAL_BATCH = WORLD_SIZE * LOCAL_BATCH
LABELLED_PER_RANK = 5  # masked tokens on each rank: equal counts make the global MLM mean the mean of rank means
WORD_COLUMNS = (1, 2, 3)  # caption positions that hold a word in every row of tiny_vlmo_batch
NEGATIVE_DRAWS = 12  # forwards that draw their own negatives, per rank
LOSS_NAMES = ("loss", "loss_itc", "loss_itm", "loss_mlm")
EMBED_NAMES = ("image_embeds", "text_embeds", "vl_image_embeds", "vl_text_embeds")

Batch = dict[str, torch.Tensor]


def make_model() -> VlpVlmoForPretraining:
    """Tiny, dropout-free VLMo in train mode; the wider init spreads the features, so the contrasts are not flat."""
    torch.manual_seed(0)
    return VlpVlmoForPretraining(tiny_vlmo_config(initializer_range=0.2)).train()


def mlm_masking(input_ids: torch.Tensor, generator: torch.Generator) -> Batch:
    """``LABELLED_PER_RANK`` word positions masked among each rank's rows (unevenly over its rows)."""
    labels = torch.full_like(input_ids, -100)
    for rank in range(WORLD_SIZE):
        cells = torch.randperm(LOCAL_BATCH * len(WORD_COLUMNS), generator=generator)[:LABELLED_PER_RANK]
        rows = rank * LOCAL_BATCH + cells // len(WORD_COLUMNS)
        columns = WORD_COLUMNS[0] + cells % len(WORD_COLUMNS)
        labels[rows, columns] = input_ids[rows, columns]
    return {"mlm_input_ids": input_ids.masked_fill(labels != -100, MASK_ID), "mlm_labels": labels}


def global_negatives(generator: torch.Generator) -> Batch:
    """Each global row's negative image and text: an index into the global batch other than the row itself."""
    own = torch.arange(GLOBAL_BATCH)
    offsets = torch.randint(1, GLOBAL_BATCH, (2, GLOBAL_BATCH), generator=generator)
    return {
        "itm_negative_image_indices": (own + offsets[0]) % GLOBAL_BATCH,
        "itm_negative_text_indices": (own + offsets[1]) % GLOBAL_BATCH,
    }


def global_steps() -> list[Batch]:
    """``STEPS`` global batches with their masking and negatives; every tensor has one row per global pair."""
    steps = []
    for step in range(STEPS):
        batch = tiny_vlmo_batch(GLOBAL_BATCH, seed=step)
        generator = torch.Generator().manual_seed(100 + step)
        steps.append({**batch, **mlm_masking(batch["input_ids"], generator), **global_negatives(generator)})
    return steps


def rank_rows(inputs: Batch, rank: int) -> Batch:
    """Rank ``rank``'s rows of a global step (what a DistributedSampler hands it); the negatives stay global."""
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    return {name: value[rows] for name, value in inputs.items()}


def detached(output, names: tuple[str, ...]) -> Batch:
    return {name: getattr(output, name).detach().clone() for name in names}


def train(model: nn.Module, forward: nn.Module, step_inputs: list[Batch]) -> dict[str, list]:
    """SGD steps of ``forward`` (the model, or its DDP wrapper) on ``step_inputs``; records each step's loss terms,
    features, ITM and MLM logits, and the gradients before the update."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    record: dict[str, list] = {"terms": [], "embeds": [], "itm_logits": [], "mlm_logits": [], "grads": []}
    for inputs in step_inputs:
        optimizer.zero_grad()
        output = forward(**inputs, return_loss=True)
        output.loss.backward()
        record["terms"].append(detached(output, LOSS_NAMES))
        record["embeds"].append(detached(output, EMBED_NAMES))
        record["itm_logits"].append(output.itm_logits.detach().clone())
        record["mlm_logits"].append(output.mlm_logits.detach().clone())
        record["grads"].append(grads_of(model))
        optimizer.step()
    record["trainable"] = sorted(name for name, param in model.named_parameters() if param.requires_grad)
    return record


@torch.no_grad()
def drawn_negatives(model: VlpVlmoForPretraining, inputs: Batch) -> dict[str, torch.Tensor]:
    """``NEGATIVE_DRAWS`` forwards that draw their own negatives: the indices ``[draws, rows]`` of each kind."""
    pairs = {name: inputs[name] for name in ("input_ids", "attention_mask", "pixel_values")}
    outputs = [model(**pairs, return_loss=False, generator=torch.Generator().manual_seed(seed))
               for seed in range(NEGATIVE_DRAWS)]
    return {kind: torch.stack([getattr(output, f"itm_negative_{kind}_indices") for output in outputs])
            for kind in ("image", "text")}


def distributed_worker(rank: int, world_size: int, out_dir: str) -> None:
    """One gloo rank: the DDP-wrapped model on its rows (DDP averages the gradients); then the gathered features of
    the trained model and its own negative draws."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    out = Path(out_dir)
    dist.init_process_group("gloo", init_method=f"file://{out}/rdzv", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = make_model()
        steps = [rank_rows(step, rank) for step in global_steps()]
        result = train(model, DistributedDataParallel(model), steps)
        result["gathered_embeds"] = [
            {name: all_gather_no_grad(embeds[name]) for name in EMBED_NAMES} for embeds in result["embeds"]
        ]
        result["drawn"] = drawn_negatives(model, steps[-1])
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process_reference() -> dict[str, list]:
    """The same training on one process, each step one forward of the whole global batch."""
    torch.set_num_threads(1)
    model = make_model()
    return train(model, model, global_steps())


def two_rank_runs(out_dir: Path) -> dict[str, object]:
    """Both ranks' records (spawned gloo processes writing to ``out_dir``) and the single-process reference."""
    mp.spawn(distributed_worker, args=(WORLD_SIZE, str(out_dir)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    return {"ranks": ranks, "reference": single_process_reference()}
