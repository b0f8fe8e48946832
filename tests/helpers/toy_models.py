"""Toy dual encoders with momentum copies and queues, and their two-process worker, for the distributed, momentum
and callback tests; ``torch.multiprocessing.spawn`` pickles ``distributed_worker`` by its module name."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from hf_vlp.objectives.distributed import all_gather_no_grad, get_rank, get_world_size
from hf_vlp.objectives.losses import (
    contrastive_loss,
    distillation_targets,
    id_match_targets,
    sample_hard_negatives,
    soft_target_contrastive,
)
from hf_vlp.objectives.momentum import FeatureQueue, MomentumModelMixin, copy_params, momentum_update


IMAGE_DIM, TEXT_DIM, EMBED_DIM = 6, 5, 4
GLOBAL_BATCH, QUEUE_SIZE, STEPS, MOMENTUM, LR = 8, 16, 3, 0.9, 0.5


class ToyDualEncoder(nn.Module):
    """Linear image/text towers with momentum copies, a learnable logit scale and feature queues."""

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(IMAGE_DIM, EMBED_DIM)
        self.text_proj = nn.Linear(TEXT_DIM, EMBED_DIM)
        self.image_proj_m = nn.Linear(IMAGE_DIM, EMBED_DIM)
        self.text_proj_m = nn.Linear(TEXT_DIM, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_queue = FeatureQueue(EMBED_DIM, QUEUE_SIZE)
        self.text_queue = FeatureQueue(EMBED_DIM, QUEUE_SIZE)
        self.id_queue = FeatureQueue(1, QUEUE_SIZE, dtype=torch.long, fill_value=-100)
        copy_params(self.momentum_pairs())

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.image_proj, self.image_proj_m), (self.text_proj, self.text_proj_m)]

    def forward(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        image_embeds = F.normalize(self.image_proj(image), dim=-1)
        text_embeds = F.normalize(self.text_proj(text), dim=-1)
        loss = contrastive_loss(image_embeds, text_embeds, self.logit_scale.exp())
        with torch.no_grad():
            self.image_queue.enqueue(all_gather_no_grad(F.normalize(self.image_proj_m(image), dim=-1)))
            self.text_queue.enqueue(all_gather_no_grad(F.normalize(self.text_proj_m(text), dim=-1)))
            self.id_queue.enqueue(all_gather_no_grad(ids))
        return loss


def make_global_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``STEPS`` global batches of (image, text, ids), identical in every process."""
    generator = torch.Generator().manual_seed(1234)
    batches = []
    for step in range(STEPS):
        image = torch.randn(GLOBAL_BATCH, IMAGE_DIM, generator=generator)
        text = torch.randn(GLOBAL_BATCH, TEXT_DIM, generator=generator)
        ids = torch.arange(GLOBAL_BATCH) + step * GLOBAL_BATCH
        batches.append((image, text, ids))
    return batches


def make_toy_dual_encoder() -> ToyDualEncoder:
    torch.manual_seed(0)
    return ToyDualEncoder()


def train_toy(model: nn.Module, core: ToyDualEncoder, batches, record_step) -> None:
    """SGD on the contrastive loss, one EMA step per optimizer step; ``record_step(step, loss)`` sees grads."""
    optimizer = torch.optim.SGD([p for p in core.parameters() if p.requires_grad], lr=LR)
    for step, (image, text, ids) in enumerate(batches):
        optimizer.zero_grad()
        loss = model(image, text, ids)
        loss.backward()
        record_step(step, loss)
        optimizer.step()
        momentum_update(core.momentum_pairs(), MOMENTUM)


def local_rows(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    rank, world = get_rank(), get_world_size()
    local = GLOBAL_BATCH // world
    return tuple(t[rank * local : (rank + 1) * local] for t in batch)


def grads_of(core: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in core.named_parameters() if p.requires_grad}


def distributed_worker(rank: int, world_size: int, out_dir: str) -> None:
    """One gloo rank: first-step gradients with both gather paths, then a short training run."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import hf_vlp.objectives.distributed as hf_dist

    out = Path(out_dir)
    dist.init_process_group("gloo", init_method=f"file://{out}/rdzv", rank=rank, world_size=world_size)
    try:
        batches = [local_rows(batch) for batch in make_global_batches()]
        result: dict[str, object] = {}

        # Gradient of step 0 through the functional-collectives fallback (fresh model, no training).
        core = make_toy_dual_encoder()
        ddp = DistributedDataParallel(core, broadcast_buffers=False)
        original = hf_dist._public_autograd_gather_available
        hf_dist._public_autograd_gather_available = lambda: False
        try:
            ddp(*batches[0]).backward()
        finally:
            hf_dist._public_autograd_gather_available = original
        result["fallback_grads"] = grads_of(core)

        core = make_toy_dual_encoder()
        ddp = DistributedDataParallel(core, broadcast_buffers=False)
        losses, grads = [], []

        def record(step: int, loss: torch.Tensor) -> None:
            losses.append(loss.detach().clone())
            grads.append(grads_of(core))

        train_toy(ddp, core, batches, record)
        result["losses"] = losses
        result["grads"] = grads
        result["state"] = {k: v.detach().clone() for k, v in core.state_dict().items()}
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def single_process_reference() -> dict[str, object]:
    """The same run on one process with the concatenated global batches."""
    core = make_toy_dual_encoder()
    losses, grads = [], []

    def record(step: int, loss: torch.Tensor) -> None:
        losses.append(loss.detach().clone())
        grads.append(grads_of(core))

    train_toy(core, core, make_global_batches(), record)
    return {"losses": losses, "grads": grads, "state": {k: v.detach().clone() for k, v in core.state_dict().items()}}


# --------------------------------------------------------------------------------------------------
# Trainer toy: an ALBEF-like model in transformers format.


class ToyMomentumConfig(PreTrainedConfig):
    model_type = "hf_vlp_test_toy_momentum"

    input_dim: int = 6
    embed_dim: int = 4
    queue_size: int = 8
    momentum: float = 0.9
    alpha: float = 0.4


class ToyMomentumModel(MomentumModelMixin, PreTrainedModel):
    """Momentum-distilled ITC (queues, id positives) plus ITM on sampled hard negatives.

    ``accepts_loss_kwargs = False``: ``forward`` takes ``**kwargs`` and the batch has ``labels``, so
    otherwise Trainer would pass ``num_items_in_batch`` and stop dividing this mean loss by the number
    of accumulation steps - the logged and optimised loss would grow with gradient_accumulation_steps.
    """

    config: ToyMomentumConfig
    config_class = ToyMomentumConfig
    base_model_prefix = "toy"
    accepts_loss_kwargs = False

    def __init__(self, config: ToyMomentumConfig) -> None:
        super().__init__(config)
        self.image_proj = nn.Linear(config.input_dim, config.embed_dim)
        self.text_proj = nn.Linear(config.input_dim, config.embed_dim)
        self.image_proj_m = nn.Linear(config.input_dim, config.embed_dim)
        self.text_proj_m = nn.Linear(config.input_dim, config.embed_dim)
        self.itm_head = nn.Linear(config.embed_dim, 2)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.id_queue = FeatureQueue(1, config.queue_size, dtype=torch.long, fill_value=-100)
        self.alpha_trace: list[float] = []
        self.post_init()
        self.init_momentum()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, FeatureQueue):
            module.reset_buffers()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.image_proj, self.image_proj_m), (self.text_proj, self.text_proj_m)]

    def forward(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, **kwargs) -> dict:
        image_feat = F.normalize(self.image_proj(image), dim=-1)
        text_feat = F.normalize(self.text_proj(text), dim=-1)
        scale = self.logit_scale.exp()
        with torch.no_grad():
            image_feat_m = F.normalize(self.image_proj_m(image), dim=-1)
            text_feat_m = F.normalize(self.text_proj_m(text), dim=-1)
            image_columns = self.image_queue.with_batch(image_feat_m)
            text_columns = self.text_queue.with_batch(text_feat_m)
            hard = id_match_targets(labels, self.id_queue.with_batch(labels))
            alpha = self.distill_alpha
            targets_i2t = distillation_targets(scale * image_feat_m @ text_columns, alpha, hard)
            targets_t2i = distillation_targets(scale * text_feat_m @ image_columns, alpha, hard)
        sim_i2t = scale * image_feat @ text_columns
        sim_t2i = scale * text_feat @ image_columns
        loss_itc = soft_target_contrastive(sim_i2t, sim_t2i, targets_i2t, targets_t2i)

        batch = labels.shape[0]
        positives = labels.reshape(-1, 1) == labels.reshape(1, -1)
        negative_image, negative_text = sample_hard_negatives(
            sim_i2t[:, :batch], sim_t2i[:, :batch], positives, eps=1e-4
        )
        fused = torch.cat(
            [image_feat * text_feat, image_feat[negative_image] * text_feat, image_feat * text_feat[negative_text]]
        )
        itm_labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long()
        loss_itm = F.cross_entropy(self.itm_head(fused), itm_labels)

        if self.training:
            self.alpha_trace.append(alpha)
            self.image_queue.enqueue(all_gather_no_grad(image_feat_m))
            self.text_queue.enqueue(all_gather_no_grad(text_feat_m))
            self.id_queue.enqueue(all_gather_no_grad(labels))
        return {"loss": loss_itc + loss_itm}


class ToyPairs(torch.utils.data.Dataset):
    """``n`` fixed random (image, text) vectors with unique ids as ``labels``."""

    def __init__(self, n: int = 8, dim: int = 6, seed: int = 7) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.image = torch.randn(n, dim, generator=generator)
        self.text = self.image + 0.3 * torch.randn(n, dim, generator=generator)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.image[index], "text": self.text[index], "labels": torch.tensor(index)}


def make_toy_momentum_model(**config_kwargs) -> ToyMomentumModel:
    torch.manual_seed(0)
    return ToyMomentumModel(ToyMomentumConfig(**config_kwargs))
