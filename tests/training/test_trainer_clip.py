"""VlpClipModel under the stock transformers.Trainer (no subclass)."""

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments, default_data_collator

from hf_vlp import VlpClipConfig, VlpClipModel
from hf_vlp.training.callbacks import LogitScaleClampCallback


def _model() -> VlpClipModel:
    torch.manual_seed(0)
    return VlpClipModel(VlpClipConfig(
        projection_dim=16,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8),
        text_config=dict(vocab_size=40, eos_token_id=39, bos_token_id=38, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8),
    ))


def _dataset(n: int = 8) -> Dataset:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 38, (n, 8), generator=generator)
    ids[:, -1] = 39
    pixels = torch.randn(n, 3, 16, 16, generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist(), "pixel_values": pixels.tolist()}).with_format("torch")


def _collate(rows):
    """What hf_vlp's collators do: stack the tensors and ask the model for its loss."""
    return {**default_data_collator(rows), "return_loss": True}


def _logged_losses(tmp_path, name: str, **overrides) -> list[float]:
    args = TrainingArguments(
        output_dir=str(tmp_path / name), learning_rate=0.0, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, seed=0, dataloader_drop_last=True, **overrides,
    )
    trainer = Trainer(model=_model(), args=args, train_dataset=_dataset(), data_collator=_collate)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_gradient_accumulation_does_not_inflate_the_logged_loss(tmp_path):
    single = _logged_losses(tmp_path, "ga1", per_device_train_batch_size=4, max_steps=2)
    accumulated = _logged_losses(tmp_path, "ga2", per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1)
    assert len(single) == 2 and len(accumulated) == 1
    assert abs(accumulated[0] - sum(single) / 2) < 1e-4, (single, accumulated)


def test_eval_loss_and_logit_scale_clamp_under_trainer(tmp_path):
    model = _model()
    with torch.no_grad():
        model.logit_scale.fill_(4.5)
    args = TrainingArguments(
        output_dir=str(tmp_path / "clamp"), learning_rate=0.5, max_steps=2, report_to="none", save_strategy="no",
        use_cpu=True, per_device_train_batch_size=4, per_device_eval_batch_size=4,
    )
    dataset = _dataset()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, data_collator=_collate,
                      callbacks=[LogitScaleClampCallback(max_value=model.config.logit_scale_max)])
    trainer.train()
    assert model.logit_scale.item() <= model.config.logit_scale_max + 1e-6
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0  # the batch's return_loss flag
