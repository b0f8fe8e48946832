"""One rule for a run's batch sizes: per forward across processes, and per optimizer step."""

from types import SimpleNamespace

from hf_vlp.training.batch_size import forward_batch, global_batch, process_count


def _args(per_device: int, world_size: int, accumulation: int) -> SimpleNamespace:
    # the three TrainingArguments fields the rule reads (world_size is a read-only property there)
    return SimpleNamespace(
        per_device_train_batch_size=per_device, world_size=world_size, gradient_accumulation_steps=accumulation
    )


def test_batch_sizes_of_one_and_several_processes():
    one = _args(per_device=8, world_size=1, accumulation=1)
    assert (process_count(one), forward_batch(one), global_batch(one)) == (1, 8, 8)
    several = _args(per_device=8, world_size=4, accumulation=3)
    assert (process_count(several), forward_batch(several), global_batch(several)) == (4, 32, 96)
    assert forward_batch(several, per_device=5) == 20  # the Trainer's own batch size may differ from the flag
    assert process_count(_args(per_device=8, world_size=0, accumulation=1)) == 1
