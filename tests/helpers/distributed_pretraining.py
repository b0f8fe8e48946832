"""Momentum pre-training on two gloo ranks (DDP) and its single-process reference, for every momentum-contrastive
architecture (``RUNS``: ALBEF, BLIP); the checks the distributed tests share live here too.

``torch.multiprocessing.spawn`` pickles ``distributed_worker`` by name and the architecture by its key, so a worker
rebuilds the same run from this module. Every random choice (MLM masking, ITM negatives) is drawn once from the
GLOBAL batch and sliced per rank, so the distributed and the reference runs see exactly the same inputs.

A new architecture adds a ``PretrainingRun`` (its tiny config and its global steps) to ``RUNS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from hf_vlp.models.albef import VlpAlbefForPretraining
from hf_vlp.objectives.mlm import mask_tokens
from hf_vlp.models.blip import VlpBlipForPretraining
from hf_vlp.objectives.momentum import momentum_update

from .tiny_models import CLS_ID, NO_DROPOUT, PAD_ID, SEP_ID, tiny_albef_config, tiny_blip_config, tiny_captions

WORLD_SIZE, LOCAL_BATCH, STEPS, QUEUE_SIZE = 2, 3, 3, 12
GLOBAL_BATCH = WORLD_SIZE * LOCAL_BATCH
SEQ_LEN, VOCAB, IMAGE_SIZE, LR = 7, 40, 16, 0.05
QUEUE_KEYS = ("image_queue.queue", "image_queue.ptr", "text_queue.queue", "text_queue.ptr")
ATOL = RTOL = 1e-5
ALBEF_MASK_ID = 3

StepInputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PretrainingRun:
    """One architecture's tiny run: ``make_model`` (seeded, in train mode), ``make_global_steps`` (``STEPS``
    global batches, identical in every process), the inputs sliced per rank and the loss terms recorded."""

    make_model: Callable[[], nn.Module]
    make_global_steps: Callable[[], list[StepInputs]]
    row_inputs: tuple[str, ...]
    loss_names: tuple[str, ...]


# --------------------------------------------------------------------------------------------------- architectures


def make_albef_model() -> VlpAlbefForPretraining:
    """Tiny, dropout-free ALBEF; the queue (12) holds two global batches (6), so three steps wrap it once."""
    torch.manual_seed(0)
    config = tiny_albef_config(
        vision=dict(hidden_size=16, intermediate_size=32),
        text=dict(num_hidden_layers=2, pad_token_id=PAD_ID, cls_token_id=CLS_ID, mask_token_id=ALBEF_MASK_ID,
                  **NO_DROPOUT),
        embed_dim=8, queue_size=QUEUE_SIZE, momentum=0.5, alpha=0.4, mlm_probability=0.5,
    )
    return VlpAlbefForPretraining(config).train()


def make_blip_model() -> VlpBlipForPretraining:
    """Tiny, dropout-free BLIP; the queue (12) holds two global batches (6), so three steps wrap it once."""
    torch.manual_seed(0)
    config = tiny_blip_config(
        vision=dict(hidden_size=16, intermediate_size=32), queue_size=QUEUE_SIZE, momentum=0.5, alpha=0.4
    )
    return VlpBlipForPretraining(config).train()


def itm_negatives(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-rank ITM negatives ``[WORLD_SIZE, LOCAL_BATCH]``: row ``r`` indexes rank ``r``'s local batch (the model
    picks negatives inside the batch it is given) at a non-zero offset, so never the positive itself."""
    offsets = torch.randint(1, LOCAL_BATCH, (2, WORLD_SIZE, LOCAL_BATCH), generator=generator)
    own = torch.arange(LOCAL_BATCH)
    return {
        "itm_negative_image_indices": (own + offsets[0]) % LOCAL_BATCH,
        "itm_negative_text_indices": (own + offsets[1]) % LOCAL_BATCH,
    }


def noise_images(generator: torch.Generator) -> torch.Tensor:
    return torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def albef_global_steps() -> list[StepInputs]:
    """Global batches with their MLM masking and per-rank ITM negatives."""
    generator = torch.Generator().manual_seed(1234)
    steps = []
    for _ in range(STEPS):
        input_ids, attention_mask = tiny_captions(generator, GLOBAL_BATCH, length=SEQ_LEN, vocab_end=VOCAB,
                                                  padded_from=4)
        mlm_input_ids, mlm_labels = mask_tokens(
            input_ids, vocab_size=VOCAB, mask_token_id=ALBEF_MASK_ID, special_token_ids=(PAD_ID, CLS_ID),
            mlm_probability=0.5, generator=generator,
        )
        negatives = itm_negatives(generator)
        steps.append({
            "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": noise_images(generator),
            "mlm_input_ids": mlm_input_ids, "mlm_labels": mlm_labels, **negatives,
        })
    return steps


def blip_global_steps() -> list[StepInputs]:
    """Global batches with per-rank ITM negatives (the LM objective has no random choice)."""
    generator = torch.Generator().manual_seed(1234)
    steps = []
    for _ in range(STEPS):
        input_ids, attention_mask = tiny_captions(generator, GLOBAL_BATCH, length=SEQ_LEN, vocab_end=38,
                                                  sep_id=SEP_ID)
        negatives = itm_negatives(generator)
        steps.append({
            "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": noise_images(generator),
            **negatives,
        })
    return steps


IMAGE_TEXT = ("input_ids", "attention_mask", "pixel_values")
RUNS = {
    "albef": PretrainingRun(make_albef_model, albef_global_steps, (*IMAGE_TEXT, "mlm_input_ids", "mlm_labels"),
                            ("loss", "loss_itc", "loss_itm", "loss_mlm")),
    "blip": PretrainingRun(make_blip_model, blip_global_steps, IMAGE_TEXT, ("loss", "loss_itc", "loss_itm", "loss_lm")),
}


# --------------------------------------------------------------------------------------------------- harness


def rank_shard(run: PretrainingRun, step: StepInputs, rank: int) -> StepInputs:
    """Rank ``rank``'s rows of a global step (what a DistributedSampler would hand it)."""
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    shard = {name: step[name][rows] for name in run.row_inputs}
    shard["itm_negative_image_indices"] = step["itm_negative_image_indices"][rank]
    shard["itm_negative_text_indices"] = step["itm_negative_text_indices"][rank]
    return shard


def global_forward_inputs(run: PretrainingRun, step: StepInputs) -> StepInputs:
    """The whole global batch as one forward's inputs; the per-rank ITM indices stay valid rows of it."""
    inputs = {name: step[name] for name in run.row_inputs}
    inputs["itm_negative_image_indices"] = step["itm_negative_image_indices"].reshape(-1)
    inputs["itm_negative_text_indices"] = step["itm_negative_text_indices"].reshape(-1)
    return inputs


def grads_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.grad.detach().clone()
        for name, param in model.named_parameters()
        if param.requires_grad and param.grad is not None
    }


def queues_of(model: nn.Module) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {key: state[key].detach().clone() for key in QUEUE_KEYS}


def loss_terms(run: PretrainingRun, output) -> dict[str, torch.Tensor]:
    return {name: getattr(output, name) for name in run.loss_names}


def train(
    run: PretrainingRun, model: nn.Module, backward_step: Callable[[StepInputs], list[dict[str, torch.Tensor]]]
) -> dict[str, object]:
    """SGD steps, each followed by one EMA step (as MomentumCallback does after every optimizer step).

    ``backward_step`` runs the forward(s) and backward(s) of one global step, leaving in ``.grad`` the gradient of
    the mean of the per-rank losses, and returns those losses; records losses, gradients and queues of every step.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    record: dict[str, list] = {"losses": [], "grads": [], "queues": []}
    record["trainable"] = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    for step in run.make_global_steps():
        optimizer.zero_grad()
        rank_losses = backward_step(step)
        record["losses"].append([{k: v.detach().clone() for k, v in losses.items()} for losses in rank_losses])
        record["grads"].append(grads_of(model))
        record["queues"].append(queues_of(model))
        optimizer.step()
        momentum_update(model.momentum_pairs(), model.momentum)
    record["state"] = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return record


def distributed_worker(rank: int, world_size: int, out_dir: str, arch: str) -> None:
    """One gloo rank: DDP-wrapped model on its shard; DDP averages the gradients over ranks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    run = RUNS[arch]
    out = Path(out_dir)
    dist.init_process_group("gloo", init_method=f"file://{out}/rdzv", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = run.make_model()
        initial_queues = queues_of(model)
        # No buffer broadcast: the queues must agree across ranks because of the all-gather, not because DDP
        # copies rank 0's buffers over.
        ddp = DistributedDataParallel(model, broadcast_buffers=False)

        def backward_step(step: StepInputs) -> list[dict[str, torch.Tensor]]:
            losses = loss_terms(run, ddp(**rank_shard(run, step, rank), return_loss=True))
            losses["loss"].backward()
            return [losses]

        result = train(run, model, backward_step)
        result["initial_queues"] = initial_queues
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process_reference(arch: str) -> dict[str, object]:
    """The same training on one process.

    Per step: each rank's shard is forwarded with the queues as they were (``update_queues=False``) and the mean of
    the per-rank losses is the objective (what DDP's gradient averaging optimises); then one forward of the
    concatenated global batch (no gradient) enqueues its momentum features - the queue update of a global-batch run -
    and records that run's own losses, which differ from the per-rank ones because the ITC sees only the local
    batch plus the queue. (Its ITM/MLM terms reuse the per-rank indices and are not compared.)
    """
    torch.set_num_threads(1)
    run = RUNS[arch]
    model = run.make_model()
    global_losses: list[dict[str, torch.Tensor]] = []
    global_momentum: list[dict[str, torch.Tensor]] = []
    shard_momentum: list[dict[str, torch.Tensor]] = []

    def backward_step(step: StepInputs) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for rank in range(WORLD_SIZE):
            # backward before the next forward: each forward clamps ``temp`` in place, which would invalidate the
            # previous graph; accumulating loss / WORLD_SIZE per shard gives the gradient of the mean.
            output = model(**rank_shard(run, step, rank), return_loss=True, update_queues=False)
            (output.loss / WORLD_SIZE).backward()
            outputs.append(output)
        with torch.no_grad():
            whole = model(**global_forward_inputs(run, step), return_loss=True, update_queues=True)
        global_losses.append({k: v.detach().clone() for k, v in loss_terms(run, whole).items()})
        global_momentum.append({"image": whole.momentum_image_embeds, "text": whole.momentum_text_embeds})
        shard_momentum.append({
            "image": torch.cat([o.momentum_image_embeds for o in outputs]),
            "text": torch.cat([o.momentum_text_embeds for o in outputs]),
        })
        return [loss_terms(run, output) for output in outputs]

    initial_queues = queues_of(model)
    result = train(run, model, backward_step)
    result.update(
        initial_queues=initial_queues, global_losses=global_losses, global_momentum=global_momentum,
        shard_momentum=shard_momentum,
    )
    return result


def two_rank_runs(arch: str, out_dir: Path) -> dict[str, object]:
    """Both ranks' records (spawned gloo processes writing to ``out_dir``) and the single-process reference."""
    mp.spawn(distributed_worker, args=(WORLD_SIZE, str(out_dir), arch), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]
    return {"ranks": ranks, "reference": single_process_reference(arch)}


# --------------------------------------------------------------------------------------------------- shared checks


def assert_rank_losses_equal_the_reference(runs: dict[str, object], arch: str) -> None:
    """Each rank's loss terms equal the reference's terms of its shard."""
    ranks, reference = runs["ranks"], runs["reference"]
    for step in range(STEPS):
        for rank, result in enumerate(ranks):
            (losses,) = result["losses"][step]
            for name in RUNS[arch].loss_names:
                torch.testing.assert_close(
                    losses[name], reference["losses"][step][rank][name], atol=ATOL, rtol=RTOL,
                    msg=f"step {step} rank {rank} {name}",
                )


def assert_gradients_equal_the_reference(runs: dict[str, object]) -> None:
    """Every trainable parameter's gradient, on both ranks, equals the gradient of the mean per-rank loss."""
    ranks, reference = runs["ranks"], runs["reference"]
    trainable = reference["trainable"]
    for step in range(STEPS):
        expected = reference["grads"][step]
        assert sorted(expected) == trainable, "every trainable parameter gets a gradient"
        for result in ranks:
            assert result["trainable"] == trainable
            grads = result["grads"][step]
            assert sorted(grads) == trainable
            for name, grad in expected.items():
                torch.testing.assert_close(grads[name], grad, atol=ATOL, rtol=RTOL, msg=f"step {step} {name}")
        for name in expected:
            assert torch.equal(ranks[0]["grads"][step][name], ranks[1]["grads"][step][name]), name


def assert_queues_equal_the_global_batch_run(runs: dict[str, object]) -> None:
    """The queues agree across ranks and with the reference's global-batch enqueue, newest columns rank 0's rows
    then rank 1's."""
    ranks, reference = runs["ranks"], runs["reference"]
    for key in QUEUE_KEYS:
        assert torch.equal(ranks[0]["initial_queues"][key], reference["initial_queues"][key]), key
        assert torch.equal(ranks[1]["initial_queues"][key], reference["initial_queues"][key]), key
    for step in range(STEPS):
        expected = reference["queues"][step]
        written = (step + 1) * GLOBAL_BATCH
        # a queue of two global batches: ptr 6, 0 (wrapped), 6
        assert int(expected["image_queue.ptr"]) == int(expected["text_queue.ptr"]) == written % QUEUE_SIZE
        for key in QUEUE_KEYS:
            assert torch.equal(ranks[0]["queues"][step][key], ranks[1]["queues"][step][key]), f"step {step} {key}"
            torch.testing.assert_close(
                ranks[0]["queues"][step][key], expected[key], atol=ATOL, rtol=RTOL, msg=f"step {step} {key}"
            )
        start = (written - GLOBAL_BATCH) % QUEUE_SIZE
        columns = slice(start, start + GLOBAL_BATCH)
        for modality in ("image", "text"):
            newest = ranks[0]["queues"][step][f"{modality}_queue.queue"][:, columns].T
            torch.testing.assert_close(
                newest, reference["global_momentum"][step][modality], atol=ATOL, rtol=RTOL, msg=f"{modality} {step}"
            )


def assert_final_states_equal_the_reference(runs: dict[str, object]) -> None:
    """After training both ranks hold the same weights, buffers and momentum towers as the reference."""
    ranks, expected = runs["ranks"], runs["reference"]["state"]
    for key, value in expected.items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        if value.is_floating_point():
            torch.testing.assert_close(ranks[0]["state"][key], value, atol=ATOL, rtol=RTOL, msg=key)
        else:
            assert torch.equal(ranks[0]["state"][key], value), key


def per_rank_itc_gaps(runs: dict[str, object]) -> list[float]:
    """Per step, |mean of the per-rank ITC losses - the global-batch forward's ITC loss|."""
    reference = runs["reference"]
    gaps = []
    for step in range(STEPS):
        per_rank = torch.stack([losses["loss_itc"] for losses in reference["losses"][step]]).mean()
        gaps.append(float((per_rank - reference["global_losses"][step]["loss_itc"]).abs()))
    return gaps
