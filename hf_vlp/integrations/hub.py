"""Push saved hf_vlp folders to the Hugging Face Hub as one commit, keeping everything that makes them usable.

:func:`push_folder` uploads a folder written by ``save_pretrained``, ``hf-vlp train`` or a converter: weights,
config, generation config, processor files, the training record the card cites (``metrics.json``, the plots), a
self-contained copy of the model code (``trust_remote_code=True`` loads it without hf_vlp) and the model card - the
card only retargeted to the repository (the "How to use" snippets name it), never re-rendered, so measured metrics,
license and provenance stay as they were. Left out: what only resumes or marks a local run -
``checkpoint-*/`` (optimizer state), ``training_args.bin`` (a pickle that may hold the Hub token), the resume files,
``conversion.json`` (the converters' local marker, with absolute local paths; its provenance is in the card) and
hidden or ``_``-prefixed entries (the Trainer's convention). The folder itself is never changed: the card and code are
prepared in a staging folder whose weights are links to the originals.

:func:`push_model` is ``VlpPreTrainedModel.push_to_hub``: save to a temporary folder (with the processor, and the
card and training record of the folder the model was loaded from), then :func:`push_folder`.
:func:`protect_model_card` keeps the stock ``Trainer.push_to_hub`` from replacing hf_vlp's card with its generic one.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .model_card import EvaluationData, is_hf_vlp_card, render_model_card, retarget_card
from .provenance import CARD_NAME, CONVERSION_MARKER, ModelSource, folder_source, model_source

logger = logging.getLogger(__name__)

# top-level entries of a saved folder that are never uploaded (see the module docstring)
EXCLUDED_PATTERNS = (
    "checkpoint-*",
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    CONVERSION_MARKER,
    "_*",
    ".*",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".onnx")
# files a model's own save_pretrained does not write that push_model carries over from the folder it was loaded from
PROCESSOR_FILES = (
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json",
)
TRAINING_RECORD = ("metrics.json", "loss_curve.png", "metrics.png")


def is_excluded(relative: str) -> bool:
    """Whether the top-level entry of a relative path is left out of a push (:data:`EXCLUDED_PATTERNS`)."""
    top = relative.split("/", 1)[0]
    return any(fnmatch.fnmatchcase(top, pattern) for pattern in EXCLUDED_PATTERNS)


def pushed_files(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that :func:`push_folder` uploads as they are (relative POSIX paths, sorted); the
    pushed commit adds the exported code and may rewrite ``README.md`` and the configs' ``auto_map``."""
    folder = Path(folder)
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not is_excluded(path.relative_to(folder).as_posix())
    )


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: pass a folder written by save_pretrained, hf-vlp train or "
                                "a converter.")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: it is not a saved model. Save it with save_pretrained first.")
    if not any(name.endswith((".safetensors", ".bin")) and not is_excluded(name) for name in os.listdir(folder)):
        raise ValueError(f"{folder} holds no weights (*.safetensors): save the model there with save_pretrained first.")


@contextmanager
def _staging_copy(folder: Path) -> Iterator[Path]:
    """A temporary folder with the files to push: weights linked (never copied, never written), the rest copied so
    that the card and configs can change without touching ``folder``."""
    with tempfile.TemporaryDirectory(prefix="hf_vlp-push-") as staging:
        root = Path(staging)
        for relative in pushed_files(folder):
            source, target = folder / relative, root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix in WEIGHT_SUFFIXES:
                try:
                    target.symlink_to(source.resolve())
                    continue
                except OSError:  # no symlinks (e.g. Windows without privileges): copy
                    pass
            shutil.copy2(source, target)
        yield root


def _export_remote_code(folder: Path) -> list[str]:
    """Add the flat model code and ``auto_map`` to ``folder`` (:mod:`hf_vlp.integrations.remote_code`)."""
    exporter = importlib.import_module("hf_vlp.integrations.remote_code")
    return [str(path) for path in exporter.export_remote_code(folder)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remote_loader(folder: Path) -> str | None:
    """How the exported code in ``folder`` loads the saved head (``architectures[0]``): the Auto class whose
    ``auto_map`` entry names it (``AutoModel`` first when several do), else the head's class in the export's entry
    module (``hf_vlp_classes.<class>``), else ``None``."""
    config = _read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    auto_map = config.get("auto_map") or {}
    if not architectures or not isinstance(auto_map, dict):
        return None
    head = architectures[0]
    matches = [name for name, reference in auto_map.items()
               if name != "AutoConfig" and str(reference).rsplit(".", 1)[-1] == head]
    if matches:
        return sorted(matches, key=lambda name: (name != "AutoModel", name))[0]
    entry = importlib.import_module("hf_vlp.integrations.remote_code").ENTRY_MODULE
    try:
        exported = (folder / f"{entry}.py").read_text(encoding="utf-8")
    except OSError:
        return None
    return f"{entry}.{head}" if f'"{head}"' in exported else None


def _processor_has_remote_code(folder: Path) -> bool:
    names = ("processor_config.json", "preprocessor_config.json")
    return any("auto_map" in _read_json(folder / name) for name in names)


def _render_missing_card(folder: Path, repo_id: str) -> ModelCard | None:
    """A card for a folder that has none: the model's template with its conversion source and, for an ``hf-vlp
    train`` folder, the metrics in ``metrics.json``; ``None`` for a model hf_vlp has no template for."""
    from transformers import AutoConfig

    hf_vlp = importlib.import_module("hf_vlp")  # registers the classes the folder's config names
    config = AutoConfig.from_pretrained(folder)
    name = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(hf_vlp, name, None) if name else None
    if model_class is None or not getattr(model_class, "model_card_template", None):
        return None
    model = model_class.from_pretrained(folder)
    record = _read_json(folder / TRAINING_RECORD[0])
    metrics = record.get("after") if isinstance(record.get("after"), dict) else None
    sources = [source for source in [_marker_source(folder)] if source is not None]
    return render_model_card(
        model, repo_id=repo_id, metrics=metrics, sources=sources,
        dataset=EvaluationData(record["eval_dataset"]) if metrics and record.get("eval_dataset") else None,
        datasets=[record["dataset"]] if isinstance(record.get("dataset"), str) else (),
    )


def _marker_source(folder: Path) -> ModelSource | None:
    return ModelSource.from_json(_read_json(folder / CONVERSION_MARKER).get("source"))


def prepare_card(
    folder: Path, repo_id: str, *, remote_code: bool, tags: Sequence[str] = (), original: Path | None = None
) -> str:
    """Write the card to push into the staged ``folder`` and say what was done: an hf_vlp card retargeted to
    ``repo_id`` (metrics and metadata kept; its remote-code section says what ``remote_code`` the folder now holds),
    another card kept as it is, or a card rendered for a folder without one (``original``: where to read
    ``conversion.json`` and ``metrics.json``)."""
    path = folder / CARD_NAME
    loader = remote_loader(folder) if remote_code else None
    existed = path.is_file()
    if existed:
        try:
            card = ModelCard.load(path)
        except Exception as error:  # the Hub would refuse it too: say so before uploading anything
            raise ValueError(f"{original or folder}/{CARD_NAME} is not a valid model card ({error}); fix its YAML "
                             "header or delete it (hf_vlp then renders one).") from None
        if not is_hf_vlp_card(card):
            logger.info("%s is not a card hf_vlp rendered: pushed as it is.", path.name)
            return "kept"
    else:
        card = _render_missing_card(original or folder, repo_id)
        if card is None:
            logger.warning("No model card in the folder and no hf_vlp template for its model: pushed without one.")
            return "none"
    processor = _processor_has_remote_code(folder)
    retarget_card(card, repo_id, remote_loader=loader, processor=processor, tags=tags).save(path)
    return "retargeted" if existed else "rendered"


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    create_pr: bool = False,
    remote_code: bool = True,
    tags: Sequence[str] = (),
) -> Any:
    """Upload a saved hf_vlp model folder to ``repo_id`` as one commit and return its ``CommitInfo``.

    The repository is created if needed (``private`` applies then), and the branch ``revision`` too. What is uploaded
    and left out is in the module docstring; ``remote_code`` (default) adds the code that loads the model without
    hf_vlp. The folder is not modified."""
    folder = Path(folder)
    _check_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a Hub repository id ({error}); use 'owner/name'.") from None
    api = HfApi(token=token)
    with _staging_copy(folder) as staging:  # code and card first: a failure leaves the Hub untouched
        exported = _export_remote_code(staging) if remote_code else []
        prepare_card(staging, repo_id, remote_code=bool(exported), tags=tags, original=folder)
        created = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if created != repo_id:  # the Hub put a bare name in the caller's namespace: name that in the card
            repo_id = created
            prepare_card(staging, repo_id, remote_code=bool(exported), tags=tags, original=folder)
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=commit_message or f"Upload {folder.name} with hf_vlp",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )


# --------------------------------------------------------------------------------------------------- models


def loaded_from_folder(model: Any) -> Path | None:
    """The local folder ``model`` was loaded from (``name_or_path``), if it was loaded from one."""
    name = getattr(model, "name_or_path", "") or ""
    path = Path(name).expanduser() if name else None
    return path if path is not None and path.is_dir() else None


def _carry_over(source: Path, target: Path, model: Any, processor_given: bool) -> list[str]:
    """Copy into ``target`` (a fresh ``save_pretrained`` of ``model``) what it lacks from the folder the model was
    loaded from: the processor files (unless a processor is given) and, when that folder holds an hf_vlp card for
    this very class, the card and the training record it cites."""
    carried = []
    if not processor_given:
        carried += [name for name in PROCESSOR_FILES if (source / name).is_file()]
    architectures = _read_json(source / "config.json").get("architectures") or []
    card_path = source / CARD_NAME
    if architectures[:1] == [type(model).__name__] and card_path.is_file():
        try:
            own_card = is_hf_vlp_card(ModelCard.load(card_path))
        except Exception:  # an unreadable card is not carried
            own_card = False
        if own_card:
            carried += [CARD_NAME, *(name for name in TRAINING_RECORD if (source / name).is_file())]
    for name in carried:
        shutil.copy2(source / name, target / name)
    return carried


def push_model(
    model: Any,
    repo_id: str,
    *,
    processor: Any = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: Sequence[str] | None = None,
    model_card: ModelCard | None = None,
    remote_code: bool = True,
) -> Any:
    """Save ``model`` (and ``processor``) to a temporary folder and :func:`push_folder` it.

    A model loaded from a local folder brings along that folder's processor files (unless ``processor`` is given)
    and, when it holds an hf_vlp card for the same class, that card with its metrics and the training record it
    cites - push a model you changed after evaluating it with a fresh ``model_card`` instead. Otherwise the card is
    rendered for the model, with the license and base model of what it was loaded from. ``model_card`` replaces
    the card."""
    source = loaded_from_folder(model)
    with tempfile.TemporaryDirectory(prefix="hf_vlp-model-") as folder_name:
        folder = Path(folder_name)
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(folder)
        carried = _carry_over(source, folder, model, processor is not None) if source is not None else []
        if model_card is not None:
            model_card.save(folder / CARD_NAME)
        elif CARD_NAME not in carried and getattr(model, "model_card_template", None):
            reference = source or getattr(model, "name_or_path", "") or None
            sources = [folder_source(source) if source else model_source(reference)] if reference else []
            render_model_card(model, model_name=repo_id.rsplit("/", 1)[-1], sources=sources).save(folder / CARD_NAME)
        return push_folder(
            folder, repo_id, private=private, revision=revision, token=token,
            commit_message=commit_message or f"Upload {type(model).__name__}", commit_description=commit_description,
            create_pr=create_pr, remote_code=remote_code, tags=list(tags or ()),
        )


# --------------------------------------------------------------------------------------------------- Trainer


def protect_model_card(trainer: Any) -> None:
    """Keep hf_vlp's model card through the stock ``Trainer`` path.

    ``Trainer.push_to_hub`` calls ``Trainer.create_model_card``, which in transformers 5 writes its generic training
    summary to ``output_dir/README.md`` unconditionally - replacing hf_vlp's card, measured metrics included - and
    then uploads ``output_dir``. Called once on a Trainer, this makes its ``create_model_card`` keep an hf_vlp card
    already in ``output_dir`` (retargeted to ``hub_model_id``, with the tags asked for), render one for an hf_vlp
    model that has none, and leave other models to the stock card."""
    stock = trainer.create_model_card
    if getattr(stock, "keeps_hf_vlp_card", False):
        return

    @functools.wraps(stock)
    def create_model_card(*args: Any, **kwargs: Any) -> None:
        if not trainer.is_world_process_zero():
            return None
        path = Path(trainer.args.output_dir) / CARD_NAME
        card = ModelCard.load(path) if path.is_file() else None
        if card is None or not is_hf_vlp_card(card):
            accelerator = getattr(trainer, "accelerator", None)
            model = accelerator.unwrap_model(trainer.model) if accelerator is not None else trainer.model
            if not getattr(model, "model_card_template", None):
                return stock(*args, **kwargs)
            card = render_model_card(model, model_name=Path(trainer.args.output_dir).name)
        tags = kwargs.get("tags") or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        repo_id = getattr(trainer, "hub_model_id", None)
        if repo_id:  # the stock push uploads output_dir as it is: no remote code
            card = retarget_card(card, repo_id, remote_loader=None, tags=tags)
        elif tags:
            card.data.tags = sorted({*(card.data.tags or []), *tags})
        card.save(path)
        return None

    create_model_card.keeps_hf_vlp_card = True  # type: ignore[attr-defined]
    trainer.create_model_card = create_model_card


__all__ = [
    "EXCLUDED_PATTERNS",
    "is_excluded",
    "loaded_from_folder",
    "protect_model_card",
    "push_folder",
    "push_model",
    "pushed_files",
    "remote_loader",
]
