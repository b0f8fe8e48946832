"""`TrainerCallback`s for the stock `transformers.Trainer`.

- ``LogitScaleClampCallback``: clamps learnable temperatures after every optimizer step (CLIP/CoCa).
- ``MomentumCallback``: ALBEF/BLIP momentum machinery - queue-size check, EMA of the momentum towers
  once per optimizer step, and the distillation-weight (alpha) ramp.
- ``LossTermsCallback``: logs each objective's term of the loss (``loss_itc``, ``loss_itm``, ``loss_mlm``,
  ``loss_lm``, ...) next to the total at every logging step.

Both take the model from the callback kwargs (Trainer passes the bare model under DDP; DDP,
DataParallel, DeepSpeed and torch.compile wrappers are unwrapped anyway) and keep no training state, so resuming from a checkpoint is exact: the momentum
towers and queues live in the model's state dict and alpha is a function of ``state.global_step``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..objectives.momentum import FeatureQueue, momentum_update
from .batch_size import forward_batch, process_count


logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module | None, callback: str) -> nn.Module:
    if model is None:
        raise ValueError(f"{callback} needs the model; use it with transformers.Trainer, which passes model=...")
    # DDP / DataParallel / DeepSpeed / torch.compile wrappers; Trainer itself passes the bare model.
    return extract_model_from_parallel(model, keep_torch_compile=False)


class LogitScaleClampCallback(TrainerCallback):
    """Clamp every parameter named ``parameter_name`` to ``[min_value, max_value]`` after each optimizer step.

    The default is CLIP's rule for ``logit_scale`` (the log of the multiplier): ``[0, log(100)]``, so the
    multiplier stays in ``[1, 100]``. It applies to any model; a model without such a parameter is an error.
    """

    def __init__(
        self,
        max_value: float = math.log(100),
        min_value: float = 0.0,
        parameter_name: str = "logit_scale",
    ) -> None:
        if min_value > max_value:
            raise ValueError(f"min_value ({min_value}) must not exceed max_value ({max_value})")
        self.max_value = max_value
        self.min_value = min_value
        self.parameter_name = parameter_name

    def _parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [
            param
            for name, param in model.named_parameters()
            if name.rsplit(".", 1)[-1] == self.parameter_name
        ]

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        model = _unwrap(model, type(self).__name__)
        if not self._parameters(model):
            raise ValueError(
                f"LogitScaleClampCallback found no parameter named '{self.parameter_name}' in "
                f"{type(model).__name__}; remove the callback or pass parameter_name=<the temperature's name>."
            )

    @torch.no_grad()
    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        for param in self._parameters(_unwrap(model, type(self).__name__)):
            param.clamp_(self.min_value, self.max_value)


def distill_alpha_at(step: int, alpha_max: float, warmup_steps: int) -> float:
    """Linear ramp of the originals: ``alpha_max * min(1, step / warmup_steps)``; no ramp if warmup is 0."""
    if warmup_steps <= 0:
        return alpha_max
    return alpha_max * min(1.0, step / warmup_steps)


class MomentumCallback(TrainerCallback):
    """EMA update, queue check and alpha ramp for models with momentum towers (ALBEF, BLIP).

    The model provides ``momentum_pairs()`` (``(online, momentum)`` module pairs) and ``momentum``
    (see ``hf_vlp.objectives.momentum.MomentumModelMixin``); ``distill_alpha`` (attribute or 0-d buffer) is optional.

    - ``on_train_begin``: every ``FeatureQueue`` must hold a whole number of global micro-batches
      (``per_device_train_batch_size x world_size``: each forward enqueues one all-gathered micro-batch).
    - ``on_step_begin``: ``distill_alpha = alpha_max * min(1, global_step / warmup)``. ``alpha_max`` is
      ``alpha`` or the model's ``distill_alpha_max``; ``warmup`` is ``alpha_warmup_steps`` or
      ``alpha_warmup_epochs`` epochs of optimizer steps (1: ALBEF and BLIP retrieval, 2: BLIP pretraining).
    - ``on_optimizer_step``: one EMA step ``p_m = m p_m + (1 - m) p`` per optimizer step. The originals
      update at the start of every forward, i.e. per micro-batch; with gradient accumulation this is
      once per real update instead, which is the rule accumulation is meant to preserve.
    """

    def __init__(
        self,
        alpha_warmup_steps: int | None = None,
        *,
        alpha_warmup_epochs: float = 1.0,
        alpha: float | None = None,
    ) -> None:
        if alpha_warmup_steps is not None and alpha_warmup_steps < 0:
            raise ValueError(f"alpha_warmup_steps must be >= 0, got {alpha_warmup_steps}")
        if alpha_warmup_epochs < 0:
            raise ValueError(f"alpha_warmup_epochs must be >= 0, got {alpha_warmup_epochs}")
        self.alpha_warmup_steps = alpha_warmup_steps
        self.alpha_warmup_epochs = alpha_warmup_epochs
        self.alpha = alpha
        # Derived from the dataloader length at each train() start; never part of the training state.
        self._warmup_steps: int | None = alpha_warmup_steps

    @staticmethod
    def _momentum_model(model: nn.Module | None) -> nn.Module:
        model = _unwrap(model, "MomentumCallback")
        if not callable(getattr(model, "momentum_pairs", None)) or not hasattr(model, "momentum"):
            raise ValueError(
                f"MomentumCallback needs a model with momentum_pairs() and momentum (see "
                f"hf_vlp.objectives.momentum.MomentumModelMixin); {type(model).__name__} has none - remove the callback."
            )
        return model

    def _check_queues(self, model: nn.Module, args: TrainingArguments, state: TrainerState) -> None:
        per_device = state.train_batch_size or args.per_device_train_batch_size
        global_batch = forward_batch(args, per_device)
        for name, queue in model.named_modules():
            if isinstance(queue, FeatureQueue) and queue.size % global_batch != 0:
                smaller = max(global_batch, queue.size // global_batch * global_batch)
                raise ValueError(
                    f"FeatureQueue '{name}' has size {queue.size}, which is not a multiple of the global batch "
                    f"enqueued per forward, {global_batch} (per_device_train_batch_size={per_device} x "
                    f"world_size={args.world_size}). Set the queue size to a multiple of {global_batch} "
                    f"(e.g. {smaller} or {smaller + global_batch}) or change per_device_train_batch_size."
                )

    def _steps_per_epoch(self, args: TrainingArguments, state: TrainerState, train_dataloader) -> int:
        try:
            batches = len(train_dataloader)
        except TypeError:
            batches = 0
        if batches > 0:
            return math.ceil(batches / args.gradient_accumulation_steps)
        if state.max_steps > 0 and state.num_train_epochs > 0:
            return math.ceil(state.max_steps / state.num_train_epochs)
        raise ValueError(
            "MomentumCallback cannot tell the number of steps per epoch (the dataloader has no length); "
            "pass alpha_warmup_steps=..."
        )

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model=None,
        train_dataloader=None,
        **kwargs,
    ) -> None:
        model = self._momentum_model(model)
        self._check_queues(model, args, state)
        if self.alpha_warmup_steps is None:
            steps_per_epoch = self._steps_per_epoch(args, state, train_dataloader)
            self._warmup_steps = round(self.alpha_warmup_epochs * steps_per_epoch)
        if not args.dataloader_drop_last:
            self._check_last_batch(model, args, state, train_dataloader)

    def _check_last_batch(self, model: nn.Module, args: TrainingArguments, state: TrainerState, train_dataloader) -> None:
        """Without ``dataloader_drop_last`` the last batch of an epoch is short unless the dataset size is a multiple
        of the global batch; enqueueing it would shift every later write off the queue's batch grid (and crash when
        one runs past the end). Refuse it here, before any step, when the run reaches the end of an epoch."""
        queues = [(name, queue) for name, queue in model.named_modules() if isinstance(queue, FeatureQueue)]
        if not queues:
            return
        try:
            samples = len(train_dataloader.dataset)
            batches = len(train_dataloader)
        except (AttributeError, TypeError):  # a streamed dataset: its size is unknown
            logger.warning(
                "MomentumCallback: dataloader_drop_last=False with a streamed dataset; a short last batch cannot be "
                "enqueued in the momentum queues. Set dataloader_drop_last=True."
            )
            return
        per_device = state.train_batch_size or args.per_device_train_batch_size
        processes = process_count(args)
        last = math.ceil(samples / processes) % per_device
        reaches_end = state.max_steps <= 0 or state.max_steps * args.gradient_accumulation_steps >= batches
        if last and reaches_end:
            names = ", ".join(f"{name} ({queue.size})" for name, queue in queues)
            global_batch = forward_batch(args, per_device)
            raise ValueError(
                f"--dataloader-drop-last false: the {samples} training samples end each epoch with a batch of {last} "
                f"instead of {per_device}{f' per process x {processes}' if processes > 1 else ''}, which the momentum "
                f"queues {names} cannot take (they are filled in whole batches of {global_batch}). Pass "
                f"--dataloader-drop-last true or use a multiple of {global_batch} samples."
            )

    def _alpha_max(self, model: nn.Module) -> float | None:
        if self.alpha is not None:
            return self.alpha
        alpha_max = getattr(model, "distill_alpha_max", None)
        return None if alpha_max is None else float(alpha_max)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        model = _unwrap(model, type(self).__name__)
        if not hasattr(model, "distill_alpha"):
            return
        alpha_max = self._alpha_max(model)
        if alpha_max is None:
            raise ValueError(
                f"{type(model).__name__} has distill_alpha but no distill_alpha_max; pass "
                "MomentumCallback(alpha=...)."
            )
        alpha = distill_alpha_at(state.global_step, alpha_max, self._warmup_steps or 0)
        current = model.distill_alpha
        if isinstance(current, torch.Tensor):
            current.fill_(alpha)
        else:
            model.distill_alpha = alpha

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        model = self._momentum_model(model)
        momentum_update(model.momentum_pairs(), float(model.momentum))


LOSS_TERM_PREFIX = "loss_"


class LossTermsCallback(TrainerCallback):
    """Log every loss term of the model's outputs (fields named ``loss_*``: ``loss_itc``, ``loss_itm``,
    ``loss_mlm``, ``loss_lm``, ...) next to the Trainer's total ``loss`` at every logging step.

    A forward hook on the model (training forwards only: ``model.training`` with gradients on) adds each
    scalar term to a running sum on its device, without a host sync. At each training log the means over the
    window's micro-batches (gradient accumulation included) are merged into the Trainer's ``logs`` and its
    ``state.log_history`` entry, as the Trainer averages its own loss; under ``torch.distributed`` the sums and
    counts are all-reduced first, so every process logs the mean over all ranks (``on_log`` runs on every rank).
    The final summary log gets the run's means as ``train_loss_itc``, ... (so ``TrainOutput.metrics`` has them),
    and the last window's values are kept on the model as ``training_losses`` (with ``"step"``) for its model card.

    Reporters (console, TensorBoard, W&B, ...) see the terms when this callback runs before them: the Trainer puts
    reporting callbacks ahead of those passed to it, so call :func:`log_loss_terms_first` on the Trainer (the
    console printer and progress bar come after it anyway, and ``log_history`` is updated in any case).
    """

    def __init__(self) -> None:
        self._window: dict[str, list[Any]] = {}  # name -> [sum tensor, micro-batch count]
        self._run: dict[str, list[float]] = {}  # name -> [sum, count] over the whole train() call
        self._hook = None
        self._model: nn.Module | None = None

    # -------------------------------------------------------------------------------------------- capture

    def _record(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return  # evaluation forwards (Trainer.evaluate, generation) are not training terms
        for name, value in _loss_terms(outputs).items():
            value = value.detach().float().reshape(())
            entry = self._window.get(name)
            if entry is None:
                self._window[name] = [value.clone(), 1]
            else:
                entry[0] = entry[0] + value.to(entry[0].device)
                entry[1] += 1

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        self._remove_hook()
        self._window, self._run = {}, {}
        self._model = _unwrap(model, type(self).__name__)
        self._hook = self._model.register_forward_hook(self._record)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._remove_hook()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -------------------------------------------------------------------------------------------- logging

    def _reduce_window(self, device: torch.device) -> dict[str, tuple[float, int]]:
        """The window's ``{name: (sum, count)}`` over every process; the window restarts."""
        window, self._window = self._window, {}
        names = sorted(window)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:  # every rank must reduce the same names in the same order
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, names)
            names = sorted({name for rank_names in gathered for name in rank_names})
        if not names:
            return {}
        zero = torch.zeros((), device=device)
        sums = torch.stack([window[name][0].to(device) if name in window else zero for name in names])
        counts = torch.tensor([float(window[name][1]) if name in window else 0.0 for name in names], device=device)
        totals = torch.cat([sums, counts])
        if distributed:
            torch.distributed.all_reduce(totals, op=torch.distributed.ReduceOp.SUM)
        values = totals.tolist()
        return {name: (values[i], int(values[len(names) + i])) for i, name in enumerate(names)}

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if logs is None:
            return
        is_training_log = "loss" in logs
        is_summary = "train_loss" in logs
        if not (is_training_log or is_summary):
            return  # evaluation metrics
        reduced = self._reduce_window(args.device)
        for name, (total, count) in reduced.items():
            run = self._run.setdefault(name, [0.0, 0])
            run[0] += total
            run[1] += count
        if is_training_log:
            terms = {name: total / count for name, (total, count) in reduced.items() if count}
            if self._model is not None and terms:
                self._model.training_losses = {"step": state.global_step, "loss": logs["loss"], **terms}
        else:
            terms = {f"train_{name}": total / count for name, (total, count) in self._run.items() if count}
        if not terms:
            return
        logs.update(terms)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and all(
            last.get(key) is value for key, value in logs.items() if key not in terms
        ):
            last.update(terms)  # Trainer.log appended a copy of logs before the callbacks ran


def _loss_terms(outputs: Any) -> dict[str, torch.Tensor]:
    """The scalar ``loss_*`` tensors of a model output (a ``ModelOutput``, dict or dataclass)."""
    if isinstance(outputs, dict):  # ModelOutput is an OrderedDict of its non-None fields
        items = outputs.items()
    else:
        items = ((name, getattr(outputs, name)) for name in dir(outputs) if name.startswith(LOSS_TERM_PREFIX))
    return {
        name: value
        for name, value in items
        if name.startswith(LOSS_TERM_PREFIX) and isinstance(value, torch.Tensor) and value.numel() == 1
    }


def log_loss_terms_first(trainer: Any) -> None:
    """Move the Trainer's :class:`LossTermsCallback` (added when missing) ahead of every other callback, so the
    reporting integrations (TensorBoard, W&B, MLflow, ...), which the Trainer installs first, log the terms too."""
    handler = trainer.callback_handler
    ours = [callback for callback in handler.callbacks if isinstance(callback, LossTermsCallback)]
    for callback in ours:
        handler.callbacks.remove(callback)
    handler.callbacks[:0] = ours or [LossTermsCallback()]


class CollatorEpochCallback(TrainerCallback):
    """Tells a collator which epoch starts, so per-sample augmentation varies across epochs yet stays a pure
    function of (seed, epoch, sample): exact on resume (``state.epoch`` is restored from the checkpoint)."""

    def __init__(self, collator: Any) -> None:
        if not hasattr(collator, "set_epoch"):
            raise TypeError(f"{type(collator).__name__} has no set_epoch(epoch); use an hf_vlp image-text collator")
        self.collator = collator

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.collator.set_epoch(math.floor((state.epoch or 0.0) + 1e-9))
