"""``hf-vlp`` command line: ``train <arch> [--task TASK]``, ``evaluate <dir>``, ``capfilt`` and
``convert <family> ...`` (the ``conversion`` package's converters).

Every ``transformers.TrainingArguments`` field is accepted as a flag (``--max-steps``, ``--bf16``,
``--per-device-train-batch-size``, ``--gradient-checkpointing``, ``--report-to``, ``--resume-from-checkpoint``, ...);
the task's recipe only fills in what is not given. Works under ``torchrun`` (DDP through accelerate).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable, Sequence

from transformers import HfArgumentParser, TrainingArguments

from .training.job import JobArguments
from .training.runner import evaluate, task_of_saved_model, train
from .training.tasks import architectures, get_task, task_names

CONVERTER_FAMILIES = ("clip", "albef", "blip")
USAGE = """hf-vlp train ARCH [--task TASK] [options]   train ARCH's task with the stock Trainer ({tasks})
hf-vlp evaluate DIR [options]                the task's metrics (retrieval, zero-shot, VQA, accuracy) of a saved model
hf-vlp capfilt --captioner DIR --filter DIR --dataset SPEC --output DIR   bootstrap a dataset with BLIP's CapFilt
hf-vlp convert {families} --checkpoint PATH --output DIR [--original-config PATH] [--tokenizer PATH] [--verify]
                                             convert an original release (or transformers directory) to hf_vlp
Add --help after a command for its options."""


def _usage() -> str:
    tasks = "; ".join(f"{arch}: {', '.join(task_names(arch))}" for arch in architectures())
    return USAGE.format(tasks=tasks, families="|".join(CONVERTER_FAMILIES))


def _task_argument(arguments: Sequence[str]) -> str | None:
    """The value of ``--task`` (``--task X`` or ``--task=X``) before the full parse, which needs the task's defaults."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--task", default=None)
    known, _ = peek.parse_known_args(list(arguments))
    return known.task


def _train(arguments: Sequence[str]) -> int:
    if not arguments or arguments[0].startswith("-"):
        print(f"hf-vlp train: name an architecture, one of {architectures()}", file=sys.stderr)
        return 2
    architecture, rest = arguments[0], list(arguments[1:])
    try:
        task = get_task(architecture, _task_argument(rest))
    except ValueError as error:
        print(f"hf-vlp train: {error}", file=sys.stderr)
        return 2
    recipe = task.recipe
    parser = HfArgumentParser((JobArguments, TrainingArguments), prog=f"hf-vlp train {architecture}")
    parser.set_defaults(
        output_dir=f"hf_vlp_output/{architecture}" + ("" if len(task_names(architecture)) == 1 else f"-{task.name}"),
        task=task.name,
        **recipe.training_defaults,
        **recipe.job_defaults,
    )
    try:
        job, training_args = parser.parse_args_into_dataclasses(args=rest)
    except ValueError as error:
        print(f"hf-vlp train {architecture}: {error}", file=sys.stderr)
        return 2
    return _run(lambda: train(architecture, job, training_args))


def _evaluate(arguments: Sequence[str]) -> int:
    if not arguments or arguments[0].startswith("-"):
        print("hf-vlp evaluate: give the directory of a saved model", file=sys.stderr)
        return 2
    model_dir = arguments[0]
    parser = HfArgumentParser(JobArguments, prog="hf-vlp evaluate DIR", epilog="also: --batch-size N (default 128)")
    try:
        task = task_of_saved_model(model_dir)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-vlp evaluate: {error}", file=sys.stderr)
        return 1
    parser.set_defaults(task=task.name, **task.recipe.job_defaults)
    job, extra = parser.parse_args_into_dataclasses(args=list(arguments[1:]), return_remaining_strings=True)
    batch = argparse.ArgumentParser(add_help=False)
    batch.add_argument("--batch-size", type=int, default=128)
    known, unknown = batch.parse_known_args(extra)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return _run(lambda: evaluate(model_dir, job, batch_size=known.batch_size))


def _capfilt(arguments: Sequence[str]) -> int:
    from .workflows.capfilt import main as capfilt_main  # loads BLIP generation only when used

    return capfilt_main(list(arguments), prog="hf-vlp capfilt")


def _convert(arguments: Sequence[str]) -> int:
    """``hf-vlp convert FAMILY ARGS...``: the family's ``conversion/convert_<family>.py`` ``main`` on ARGS."""
    if not arguments or arguments[0] not in CONVERTER_FAMILIES:
        given = f" (got {arguments[0]!r})" if arguments else ""
        print(f"hf-vlp convert: name a family, one of {list(CONVERTER_FAMILIES)}{given}", file=sys.stderr)
        return 2
    family = arguments[0]
    from conversion.common import run_cli  # loads the converters only when used

    converter = importlib.import_module(f"conversion.convert_{family}")
    return run_cli(functools.partial(converter.main, program=f"hf-vlp convert {family}"), list(arguments[1:]))


def _run(job: Callable[[], object]) -> int:
    """Run a job; problems with the user's input become one clear line and exit status 1, not a traceback."""
    try:
        job()
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as error:
        print(f"hf-vlp: error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": _train, "evaluate": _evaluate, "capfilt": _capfilt, "convert": _convert}
    if not arguments or arguments[0] in ("-h", "--help") or arguments[0] not in commands:
        stream = sys.stdout if arguments and arguments[0] in ("-h", "--help") else sys.stderr
        if arguments and arguments[0] not in ("-h", "--help"):
            print(f"hf-vlp: unknown command {arguments[0]!r}", file=stream)
        print(_usage(), file=stream)
        return 0 if stream is sys.stdout else 2
    return commands[arguments[0]](arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
