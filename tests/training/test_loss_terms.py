"""Every loss visible: each objective's term is logged by the Trainer at every logging step (averaged over
micro-batches and processes like the total), plotted next to the total and written into metrics.json and the card."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
from huggingface_hub import ModelCard
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import ModelOutput

from hf_vlp.integrations.model_card import render_model_card
from hf_vlp.training.callbacks import LossTermsCallback, log_loss_terms_first
from hf_vlp.training.plots import final_training_losses, loss_series, plot_loss_curve
from hf_vlp.training.runner import train
from tests.training.task_runs import recipe_job, recipe_training_args

PRETRAINING_TERMS = {"albef": ("loss_itc", "loss_itm", "loss_mlm"), "blip": ("loss_itc", "loss_itm", "loss_lm")}


@pytest.mark.parametrize("architecture", sorted(PRETRAINING_TERMS))
def test_pretraining_logs_plots_and_cards_every_loss_term(architecture, tmp_path):
    terms = PRETRAINING_TERMS[architecture]
    job = recipe_job(architecture, "pretrain", dataset="synthetic-shapes:n=64", skip_eval=True)
    args = recipe_training_args(
        architecture, "pretrain", tmp_path, max_steps=3, logging_steps=1, per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
    )
    metrics = train(architecture, job, args)

    history = json.loads((tmp_path / "metrics.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3]
    for entry in steps:
        for term in terms:
            assert term in entry and math.isfinite(entry[term]), (term, entry)
        # the objectives' weights are 1 in pre-training: the terms add up to the total
        assert sum(entry[term] for term in terms) == pytest.approx(entry["loss"], rel=1e-4)
    for term in terms:  # the run's means reach the Trainer's summary metrics
        assert math.isfinite(metrics["train"][f"train_{term}"])

    assert (tmp_path / "loss_curve.png").is_file()
    labels = plot_loss_curve(history, tmp_path / "again.png")
    assert labels == ["loss (total)", *sorted(terms)]

    card = ModelCard.load(tmp_path / "README.md").text
    assert "Training losses at step 3" in card
    for term in terms:
        assert f"| {term} | {steps[-1][term]:.4f} |" in card


class _TermsModel(nn.Module):
    """Loss = loss_a + loss_b with loss_a the batch's input mean: every micro-batch gives a different term."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x, labels=None):
        loss_a = (self.weight * x).mean()
        loss_b = 0.0 * loss_a + 2.0
        return ModelOutput(loss=loss_a + loss_b, loss_a=loss_a, loss_b=loss_b)


class _Spy(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


def _toy_trainer(tmp_path, callbacks, **overrides):
    rows = [{"x": torch.full((2,), float(index))} for index in range(16)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, logging_steps=2, learning_rate=0.0,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, **overrides,
    )
    collate = lambda batch: {"x": torch.stack([row["x"] for row in batch])}  # noqa: E731
    return Trainer(model=_TermsModel(), args=args, train_dataset=rows, data_collator=collate, callbacks=callbacks)


def test_terms_average_over_micro_batches_like_the_loss_and_reach_reporters_first(tmp_path):
    spy = _Spy()  # stands for a reporting integration, which the Trainer puts before the callbacks it is given
    trainer = _toy_trainer(tmp_path, [spy, LossTermsCallback()], gradient_accumulation_steps=2)
    log_loss_terms_first(trainer)
    assert isinstance(trainer.callback_handler.callbacks[0], LossTermsCallback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    for entry in logged:  # loss_a + loss_b is the loss, so the micro-batch means must add up to the Trainer's
        assert entry["loss_a"] + entry["loss_b"] == pytest.approx(entry["loss"], rel=1e-5)
        assert entry["loss_b"] == pytest.approx(2.0)
    spied = [entry for entry in spy.seen if "loss" in entry]
    assert all("loss_a" in entry and "loss_b" in entry for entry in spied)
    summary = trainer.state.log_history[-1]
    assert summary["train_loss_a"] == pytest.approx(sum(entry["loss_a"] for entry in logged) / 2)
    assert final_training_losses(trainer.state.log_history) == {
        "step": 4, "loss": logged[-1]["loss"], "loss_a": logged[-1]["loss_a"], "loss_b": logged[-1]["loss_b"]
    }


def test_evaluation_forwards_are_not_counted(tmp_path):
    callback = LossTermsCallback()
    trainer = _toy_trainer(tmp_path, [callback])
    trainer.train()
    model = trainer.model.eval()
    callback.on_train_begin(trainer.args, trainer.state, trainer.control, model=model)
    with torch.no_grad():
        model(torch.ones(2, 2))
    assert callback._window == {}
    callback.on_train_end(trainer.args, trainer.state, trainer.control)


def test_loss_series_and_card_section_from_a_log_history():
    history = [
        {"loss": 3.0, "loss_itc": 2.0, "loss_itm": 1.0, "step": 10},
        {"eval_loss": 9.0, "step": 10},
        {"loss": 2.0, "loss_itc": 1.5, "loss_itm": 0.5, "step": 20},
        {"train_loss": 2.5, "train_loss_itc": 1.75, "step": 20},
    ]
    series = loss_series(history)
    assert list(series) == ["loss", "loss_itc", "loss_itm"] and series["loss_itm"] == ([10, 20], [1.0, 0.5])

    class _Model(nn.Linear):
        model_card_template, model_card_pipeline_tag, model_card_task = "clip", None, None

        def model_card_fields(self):
            return {"vision_description": "v", "text_description": "t", "embed_dim": 4}

    card = render_model_card(_Model(2, 2), repo_id="me/x", training_losses=final_training_losses(history))
    assert "Training losses at step 20" in card.text and "| loss_itc | 1.5000 |" in card.text
    assert "{{" not in card.content and "{%" not in card.content
    assert "Training losses" not in render_model_card(_Model(2, 2), repo_id="me/x").text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reduce_on_rank(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        callback = LossTermsCallback()
        # rank 0 saw two micro-batches of loss_x (1, 3), rank 1 one (5) and a term rank 0 never had
        callback._window = {"loss_x": [torch.tensor(4.0), 2]} if rank == 0 else {
            "loss_x": [torch.tensor(5.0), 1], "loss_y": [torch.tensor(7.0), 1]
        }
        queue.put((rank, callback._reduce_window(torch.device("cpu"))))
    finally:
        torch.distributed.destroy_process_group()


def test_terms_are_reduced_over_processes():
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_reduce_on_rank, args=(rank, 2, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert results[0] == results[1] == {"loss_x": (9.0, 3), "loss_y": (7.0, 1)}


def test_the_metrics_chart_orders_recall_by_k_and_leaves_out_chance_and_cider(tmp_path):
    from hf_vlp.training.plots import plot_metrics

    before = {"itc_i2t_r10": 0.3, "itc_i2t_r5": 0.2, "itc_i2t_r1": 0.1, "retrieval_chance_r1": 0.03, "CIDEr": 3.4}
    names = plot_metrics({"before": before, "after": before}, tmp_path / "metrics.png")
    assert names == ["itc_i2t_r1", "itc_i2t_r5", "itc_i2t_r10"]
    assert (tmp_path / "metrics.png").stat().st_size > 0
