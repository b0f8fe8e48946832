"""Tiny ALBEF pretraining run on two gloo ranks and its single-process reference, for test_distributed_albef.py.

Imported as a plain module (the test puts this folder on ``sys.path``) so ``torch.multiprocessing.spawn`` can
pickle ``distributed_worker`` by name.

Every random choice (MLM masking, ITM negatives) is drawn once from the GLOBAL batch and sliced per rank, so the
distributed and the reference runs see exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hf_vlp.models.albef import VlpAlbefConfig
from hf_vlp.models.albef.modeling_albef import VlpAlbefForPretraining, mask_tokens
from hf_vlp.objectives.momentum import momentum_update


WORLD_SIZE, LOCAL_BATCH, STEPS, QUEUE_SIZE = 2, 3, 3, 12
GLOBAL_BATCH = WORLD_SIZE * LOCAL_BATCH
SEQ_LEN, VOCAB, IMAGE_SIZE, LR = 7, 40, 16, 0.05
PAD_ID, CLS_ID, MASK_ID = 0, 2, 3
QUEUE_KEYS = ("image_queue.queue", "image_queue.ptr", "text_queue.queue", "text_queue.ptr")
LOSS_NAMES = ("loss", "loss_itc", "loss_itm", "loss_mlm")

StepInputs = dict[str, torch.Tensor]


def make_config() -> VlpAlbefConfig:
    """Tiny, dropout-free ALBEF; the queue (12) holds two global batches (6), so three steps wrap it once."""
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8,
    )
    text = dict(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=12, fusion_layer=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=PAD_ID, cls_token_id=CLS_ID, mask_token_id=MASK_ID,
    )
    return VlpAlbefConfig(
        embed_dim=8, vision_config=vision, text_config=text, queue_size=QUEUE_SIZE, momentum=0.5, alpha=0.4,
        mlm_probability=0.5,
    )


def make_model() -> VlpAlbefForPretraining:
    torch.manual_seed(0)
    return VlpAlbefForPretraining(make_config()).train()


def make_global_steps() -> list[StepInputs]:
    """``STEPS`` global batches with their MLM masking and per-rank ITM negatives, identical in every process.

    ``itm_negative_*_indices`` are ``[WORLD_SIZE, LOCAL_BATCH]``: row ``r`` indexes rank ``r``'s local batch (the
    model picks negatives inside the batch it is given), never the row itself.
    """
    generator = torch.Generator().manual_seed(1234)
    steps = []
    for _ in range(STEPS):
        input_ids = torch.randint(5, VOCAB, (GLOBAL_BATCH, SEQ_LEN), generator=generator)
        input_ids[:, 0] = CLS_ID
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1::2, 4:] = 0
        input_ids[attention_mask == 0] = PAD_ID
        mlm_input_ids, mlm_labels = mask_tokens(
            input_ids, vocab_size=VOCAB, mask_token_id=MASK_ID, special_token_ids=(PAD_ID, CLS_ID),
            mlm_probability=0.5, generator=generator,
        )
        # ITM negatives: a non-zero offset inside the local batch, so never the positive itself.
        offsets = torch.randint(1, LOCAL_BATCH, (2, WORLD_SIZE, LOCAL_BATCH), generator=generator)
        own = torch.arange(LOCAL_BATCH)
        steps.append({
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.randn(GLOBAL_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            "mlm_input_ids": mlm_input_ids,
            "mlm_labels": mlm_labels,
            "itm_negative_image_indices": (own + offsets[0]) % LOCAL_BATCH,
            "itm_negative_text_indices": (own + offsets[1]) % LOCAL_BATCH,
        })
    return steps


def rank_shard(step: StepInputs, rank: int) -> StepInputs:
    """Rank ``rank``'s rows of a global step (what a DistributedSampler would hand it)."""
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    shard = {name: step[name][rows] for name in ("input_ids", "attention_mask", "pixel_values", "mlm_input_ids",
                                                  "mlm_labels")}
    shard["itm_negative_image_indices"] = step["itm_negative_image_indices"][rank]
    shard["itm_negative_text_indices"] = step["itm_negative_text_indices"][rank]
    return shard


def global_forward_inputs(step: StepInputs) -> StepInputs:
    """The whole global batch as one forward's inputs; the per-rank ITM indices stay valid rows of it."""
    inputs = {name: step[name] for name in ("input_ids", "attention_mask", "pixel_values", "mlm_input_ids",
                                            "mlm_labels")}
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


def train(
    model: VlpAlbefForPretraining,
    backward_step: Callable[[StepInputs], list[dict[str, torch.Tensor]]],
) -> dict[str, object]:
    """SGD steps, each followed by one EMA step (as MomentumCallback does after every optimizer step).

    ``backward_step`` runs the forward(s) and backward(s) of one global step, leaving in ``.grad`` the gradient of
    the mean of the per-rank losses, and returns those losses; records losses, gradients and queues of every step.
    """
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    record: dict[str, list] = {"losses": [], "grads": [], "queues": []}
    record["trainable"] = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    for step in make_global_steps():
        optimizer.zero_grad()
        rank_losses = backward_step(step)
        record["losses"].append([{k: v.detach().clone() for k, v in losses.items()} for losses in rank_losses])
        record["grads"].append(grads_of(model))
        record["queues"].append(queues_of(model))
        optimizer.step()
        momentum_update(model.momentum_pairs(), model.momentum)
    record["state"] = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return record


def loss_terms(output) -> dict[str, torch.Tensor]:
    return {name: getattr(output, name) for name in LOSS_NAMES}


def distributed_worker(rank: int, world_size: int, out_dir: str) -> None:
    """One gloo rank: DDP-wrapped model on its shard; DDP averages the gradients over ranks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    out = Path(out_dir)
    dist.init_process_group("gloo", init_method=f"file://{out}/rdzv", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = make_model()
        initial_queues = queues_of(model)
        # No buffer broadcast: the queues must agree across ranks because of the all-gather, not because DDP
        # copies rank 0's buffers over.
        ddp = DistributedDataParallel(model, broadcast_buffers=False)

        def backward_step(step: StepInputs) -> list[dict[str, torch.Tensor]]:
            losses = loss_terms(ddp(**rank_shard(step, rank), return_loss=True))
            losses["loss"].backward()
            return [losses]

        result = train(model, backward_step)
        result["initial_queues"] = initial_queues
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process_reference() -> dict[str, object]:
    """The same training on one process.

    Per step: each rank's shard is forwarded with the queues as they were (``update_queues=False``) and the mean of
    the per-rank losses is the objective (what DDP's gradient averaging optimises); then one forward of the
    concatenated global batch (no gradient) enqueues its momentum features - the queue update of a global-batch run -
    and records that run's own losses, which differ from the per-rank ones because ALBEF's ITC sees only the local
    batch plus the queue. (Its ITM/MLM terms reuse the per-rank indices and are not compared.)
    """
    model = make_model()
    global_losses: list[dict[str, torch.Tensor]] = []
    global_momentum: list[dict[str, torch.Tensor]] = []
    shard_momentum: list[dict[str, torch.Tensor]] = []

    def backward_step(step: StepInputs) -> list[dict[str, torch.Tensor]]:
        outputs = []
        for rank in range(WORLD_SIZE):
            # backward before the next forward: each forward clamps ``temp`` in place, which would invalidate the
            # previous graph; accumulating loss / WORLD_SIZE per shard gives the gradient of the mean.
            output = model(**rank_shard(step, rank), return_loss=True, update_queues=False)
            (output.loss / WORLD_SIZE).backward()
            outputs.append(output)
        with torch.no_grad():
            whole = model(**global_forward_inputs(step), return_loss=True, update_queues=True)
        global_losses.append({k: v.detach().clone() for k, v in loss_terms(whole).items()})
        global_momentum.append({"image": whole.momentum_image_embeds, "text": whole.momentum_text_embeds})
        shard_momentum.append({
            "image": torch.cat([o.momentum_image_embeds for o in outputs]),
            "text": torch.cat([o.momentum_text_embeds for o in outputs]),
        })
        return [loss_terms(output) for output in outputs]

    initial_queues = queues_of(model)
    result = train(model, backward_step)
    result.update(
        initial_queues=initial_queues, global_losses=global_losses, global_momentum=global_momentum,
        shard_momentum=shard_momentum,
    )
    return result
