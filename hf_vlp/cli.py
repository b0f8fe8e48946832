"""``hf-vlp`` command line: ``train <arch> [--task TASK]``, ``evaluate <dir>``, ``capfilt``,
``convert <family> ...`` (the ``conversion`` package's converters), ``export <dir>`` (remote code) and
``push <dir> <repo_id>`` (the Hub).

Every ``transformers.TrainingArguments`` field is accepted as a flag (``--max-steps``, ``--bf16``,
``--per-device-train-batch-size``, ``--gradient-checkpointing``, ``--report-to``, ``--resume-from-checkpoint``, ...);
the task's recipe only fills in what is not given. Under ``torchrun`` / ``accelerate launch`` the processes train as
one DDP job (gloo on the CPU, the accelerator's backend such as nccl on GPUs, unless ``--ddp-backend`` says otherwise).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable, Sequence

from transformers import HfArgumentParser, TrainingArguments

from .training.job import JobArguments
from .training.recipes import device_defaults
from .training.runner import distributed_defaults, evaluate, task_of_saved_model, train
from .training.tasks import architectures, task_for_stage, task_names

CONVERTER_FAMILIES = ("clip", "albef", "blip", "vilt", "vlmo", "coca")
USAGE = """hf-vlp train ARCH [--task TASK] [options]   train ARCH's task with the stock Trainer ({tasks})
hf-vlp evaluate DIR [options]                the task's metrics (retrieval, zero-shot, VQA, accuracy) of a saved model
hf-vlp capfilt --captioner DIR --filter DIR --dataset SPEC --output DIR   bootstrap a dataset with BLIP's CapFilt
hf-vlp convert {families} --checkpoint PATH --output DIR [--original-config PATH] [--tokenizer PATH] [--verify]
                                             convert an original release (or transformers directory) to hf_vlp
hf-vlp export DIR                            add the code and auto_map a machine without hf_vlp needs to load DIR
                                             (AutoModel.from_pretrained(DIR, trust_remote_code=True))
hf-vlp push DIR REPO_ID [--private] [--revision REV] [--no-remote-code]
                                             upload a saved, trained or converted folder to the Hub as one commit
Add --help after a command for its options."""


def _usage() -> str:
    tasks = "; ".join(f"{arch}: {', '.join(task_names(arch))}" for arch in architectures())
    return USAGE.format(tasks=tasks, families="|".join(CONVERTER_FAMILIES))


TRAIN_USAGE = "hf-vlp train ARCH [--task TASK] [job options] [TrainingArguments options]"
TRAIN_EPILOG = """Every transformers.TrainingArguments flag is accepted as well (--max-steps, --bf16, --learning-rate,
--per-device-train-batch-size, --save-steps, --report-to, --resume-from-checkpoint last, ...); the task's recipe
fills in the ones not given. `hf-vlp train ARCH [--task TASK] --help` lists them all with that task's defaults.

Several processes train as one job: torchrun --nproc_per_node N -m hf_vlp.cli train ARCH ... (or accelerate launch
--multi_gpu --num_processes N -m hf_vlp.cli train ARCH ..., also on the CPU); gloo is used on the CPU, the
accelerator's backend (nccl) on GPUs, unless --ddp-backend is given."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's and epilog's line breaks and shows each option's default."""


def _tasks_listing() -> str:
    return "\n".join(
        f"  {arch}: {', '.join(task_names(arch))}  (default: {task_names(arch)[0]})" for arch in architectures()
    )


def _describe_task_option(parser: argparse.ArgumentParser, architecture: str | None) -> None:
    """Give ``--task`` the tasks it accepts: ARCH's, or every architecture's."""
    if architecture is None:
        text = "the task to train; each architecture's tasks are listed above (default: the first)"
    else:
        names = task_names(architecture)
        text = f"{architecture}'s task, one of: {', '.join(names)} (default: {names[0]})"
    for action in parser._actions:  # argparse keeps no public accessor for an option's help
        if action.dest == "task":
            action.help = text


def _train_help() -> str:
    """``hf-vlp train --help``: the architectures with all their tasks and the job options."""
    parser = HfArgumentParser(
        JobArguments,
        prog="hf-vlp train",
        usage=TRAIN_USAGE,
        description="Train an architecture's task with the stock transformers.Trainer, evaluating before and after.\n"
        f"Architectures and their tasks:\n{_tasks_listing()}",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _describe_task_option(parser, None)
    return parser.format_help()


def _peek_option(arguments: Sequence[str], option: str) -> str | None:
    """The value of ``option`` (``--task X`` or ``--task=X``, ``--stage``) before the full parse, which needs the
    task's defaults."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument(option, dest="value", default=None)
    known, _ = peek.parse_known_args(list(arguments))
    return known.value


def _train(arguments: Sequence[str]) -> int:
    if arguments and arguments[0] in ("-h", "--help"):
        print(_train_help())
        return 0
    if not arguments or arguments[0].startswith("-"):
        print(
            f"hf-vlp train: name an architecture, one of {architectures()} (hf-vlp train --help lists their tasks)",
            file=sys.stderr,
        )
        return 2
    architecture, rest = arguments[0], list(arguments[1:])
    try:
        task = task_for_stage(architecture, _peek_option(rest, "--task"), _peek_option(rest, "--stage"))
    except ValueError as error:
        print(f"hf-vlp train: {error}", file=sys.stderr)
        return 2
    recipe = task.recipe
    parser = HfArgumentParser(
        (JobArguments, TrainingArguments),
        prog=f"hf-vlp train {architecture}",
        epilog=TRAIN_EPILOG.split("\n\n", 1)[1],
        formatter_class=_HelpFormatter,
    )
    _describe_task_option(parser, architecture)
    parser.set_defaults(
        output_dir=f"hf_vlp_output/{architecture}" + ("" if len(task_names(architecture)) == 1 else f"-{task.name}"),
        task=task.name,
        **recipe.training_defaults,
        **device_defaults(),
        **distributed_defaults(),
        **recipe.job_defaults,
    )
    try:
        job, training_args = parser.parse_args_into_dataclasses(args=rest)
    except ValueError as error:
        print(f"hf-vlp train {architecture}: {error}", file=sys.stderr)
        return 2
    job.task = task.name  # --stage may have picked another task of --task's family
    run_job = getattr(task, "run_job", None)  # a task that trains nothing (VLMo's image stage) runs itself
    if run_job is not None:
        return _run(lambda: run_job(job, training_args))
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


def _export(arguments: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-vlp export", description="Write into DIR (a saved hf_vlp model, with its processor) a flat, "
        "self-contained copy of the code it needs and the auto_map entries, so that AutoConfig / AutoModel / "
        "AutoProcessor.from_pretrained(DIR, trust_remote_code=True) load it on a machine without hf_vlp.",
    )
    parser.add_argument("directory", metavar="DIR", help="a folder written by save_pretrained / hf-vlp train / convert")
    options = parser.parse_args(list(arguments))
    from .integrations.remote_code import export_remote_code

    def export() -> None:
        written = export_remote_code(options.directory)
        print(f"wrote {len(written)} file(s) to {options.directory}: {', '.join(written)}")

    return _run(export)


def _push(arguments: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-vlp push", description="Upload DIR (a saved, trained or converted hf_vlp folder) to the Hub repo "
        "REPO_ID as one commit: weights, configs, processor files, remote code and the model card with its measured "
        "metrics (checkpoints are left out).",
    )
    parser.add_argument("directory", metavar="DIR", help="the folder to upload")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, e.g. your-name/albef-finetuned")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="the branch to push to (default: main)")
    parser.add_argument("--no-remote-code", action="store_true",
                        help="upload without the code for trust_remote_code loading (users then need hf_vlp)")
    parser.add_argument("--commit-message", default=None, help="the commit message")
    options = parser.parse_args(list(arguments))
    from .integrations.hub import push_folder

    def push() -> None:
        result = push_folder(
            options.directory, options.repo_id, private=options.private or None, revision=options.revision,
            commit_message=options.commit_message, remote_code=not options.no_remote_code,
        )
        print(f"pushed {options.directory} to {options.repo_id}: {result}")

    return _run(push)


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
    commands = {
        "train": _train, "evaluate": _evaluate, "capfilt": _capfilt, "convert": _convert, "export": _export,
        "push": _push,
    }
    if not arguments or arguments[0] in ("-h", "--help") or arguments[0] not in commands:
        stream = sys.stdout if arguments and arguments[0] in ("-h", "--help") else sys.stderr
        if arguments and arguments[0] not in ("-h", "--help"):
            print(f"hf-vlp: unknown command {arguments[0]!r}", file=stream)
        print(_usage(), file=stream)
        return 0 if stream is sys.stdout else 2
    return commands[arguments[0]](arguments[1:])


if __name__ == "__main__":
    sys.exit(main())
