"""What the converters of the two PyTorch Lightning releases share: dandelin/ViLT and microsoft/unilm's VLMo.

Both save a LightningModule (a ``.ckpt`` holding ``state_dict`` and ``hyper_parameters['config']``, the sacred config;
VLMo's released ``.pt`` files hold the bare state dict), read BERT-uncased text, add a modality table
``token_type_embeddings`` (text, image; a third row, NLVR2's second image, in NLVR2 models) and hold one head module
per task, which tells which hf_vlp head a checkpoint becomes (:class:`HeadCatalog`). Here: reading such a checkpoint
and its config (:func:`read_lightning_source`, :func:`lightning_config`), the head choice and the drop rules of the
heads not kept, the modality table's split, the BERT tokenizer and its special ids, the VQA answers file, the
config's construction and the provenance paragraph of the model card.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError

from conversion.common import Checkpoint, ConversionError, Drop, MappedStateDict, format_differences
from conversion.common import load_bert_tokenizer, read_original_config, read_original_source

TRUSTED_FILE_HINT = (
    "PyTorch Lightning checkpoints saved during training can pickle objects (callbacks keyed by class, sacred "
    "ReadOnlyDict configs) that torch.load(weights_only=True) refuses, and this converter never runs pickled code. If "
    "the file comes from a source you trust, extract its tensors and config once in a separate step, e.g. python -c "
    "\"import json, sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); "
    "torch.save(c['state_dict'], sys.argv[2]); json.dump(c['hyper_parameters']['config'], open(sys.argv[3], 'w'))\" "
    "FILE state_dict.pt config.json, then convert with --checkpoint state_dict.pt --original-config config.json."
)
MODALITY_ROWS = "token_type_embeddings.weight"  # the modality table: text, image (, NLVR2's second image)
BERT_VOCAB_SIZE = 30522  # bert-base-uncased, the releases' tokenizer
BERT_SPECIAL_IDS = {"pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102, "mask_token_id": 103}


def read_lightning_source(
    checkpoint: str | Path, family: str, inputs: list[Path], output: Any, overwrite: bool, allow_non_finite: bool
) -> Checkpoint:
    """:func:`read_original_source`, with the way out (:data:`TRUSTED_FILE_HINT`) when ``weights_only`` refuses the
    pickled objects of a Lightning training checkpoint."""
    try:
        return read_original_source(checkpoint, family, inputs, output, overwrite, allow_non_finite)
    except ConversionError as error:
        if isinstance(error.__cause__, pickle.UnpicklingError):
            raise ConversionError(f"{error} {TRUSTED_FILE_HINT}") from error
        raise


def lightning_config(
    source: Checkpoint, original_config: str | Path | Mapping[str, Any] | None, describes: str
) -> tuple[dict[str, Any], str]:
    """The original config: ``original_config`` (a JSON path or a mapping), else the checkpoint's
    ``hyper_parameters['config']`` (empty when absent: a bare state dict); with its description for error messages."""
    if isinstance(original_config, Mapping):
        return dict(original_config), "original_config"
    if original_config is not None:
        return read_original_config(original_config, describes), f"Original config {original_config}"
    hyper = source.extra.get("hyper_parameters")
    embedded = hyper.get("config") if isinstance(hyper, Mapping) else None
    return (dict(embedded) if isinstance(embedded, Mapping) else {}), f"The config stored in {source.path}"


def require_key(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    """``state_dict[key]``, or an error saying the checkpoint is not ``what`` (e.g. "a ViLT state dict")."""
    if key not in state_dict:
        raise ConversionError(
            f"Missing key {key!r}: the checkpoint is not {what} (it has {len(state_dict)} keys, e.g. "
            f"{sorted(state_dict)[:5]})."
        )
    return state_dict[key]


def modality_table_rows(state_dict: Mapping[str, torch.Tensor], family: str, what: str) -> int:
    """Rows of the modality table :data:`MODALITY_ROWS`: 2 (text, image), or 3 in NLVR2 checkpoints."""
    rows = require_key(state_dict, MODALITY_ROWS, what)
    if rows.dim() != 2 or rows.shape[0] not in (2, 3):
        raise ConversionError(
            f"{MODALITY_ROWS} has shape {list(rows.shape)}; {family}'s modality table has 2 rows (text, image), or 3 "
            "in NLVR2 checkpoints."
        )
    return rows.shape[0]


def first_two_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The text and image rows of the modality table (NLVR2's third row: :meth:`HeadCatalog.split_modality_rows`)."""
    return tensor[:2]


def make_config(config_class: type, settings: Mapping[str, Any]) -> Any:
    """``config_class(**settings)``, its validation errors as one :class:`ConversionError` line."""
    try:
        return config_class(**settings)
    except (StrictDataclassError, ValueError, TypeError) as error:
        raise ConversionError(f"The resulting configuration is invalid: {error}") from error


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """``pad/cls/sep/mask_token_id`` of a BERT tokenizer, read by the tokens' names."""
    return {name: getattr(tokenizer, name, None) for name in BERT_SPECIAL_IDS}


def default_special_ids(vocab_size: int) -> dict[str, int | None]:
    """Special-token ids without a tokenizer: bert-base-uncased's when the vocabulary has its size, else none (they
    are set from a tokenizer by name)."""
    return {name: value if vocab_size == BERT_VOCAB_SIZE else None for name, value in BERT_SPECIAL_IDS.items()}


def load_sized_bert_tokenizer(path: str | Path, vocab_size: int) -> Any:
    """A lower-casing BERT tokenizer (WordPiece ``vocab.txt`` or a tokenizer directory) the size of the checkpoint's
    vocabulary (the releases: bert-base-uncased)."""
    tokenizer = load_bert_tokenizer(path)
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary has {vocab_size}; pass the "
            "vocab.txt the checkpoint was trained with (bert-base-uncased for the releases)."
        )
    return tokenizer


def read_answers(path: str | Path, num_labels: int) -> dict[int, str]:
    """The VQA answer vocabulary: ``{"0": "net", ...}`` (id -> answer, ViLT's ``vqa_dict.json``), an answer -> id
    object, or a list of answers; it must name every one of the ``num_labels`` classifier outputs exactly once."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Answers file not found: {path}. Pass the VQA answers as JSON (id -> answer).")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"Answers file {path} is not valid JSON: {error}") from error
    pairs: list[tuple[Any, Any]] = []
    if isinstance(raw, list):
        pairs = list(enumerate(raw))
    elif isinstance(raw, dict) and raw and all(type(value) is int for value in raw.values()):
        pairs = [(value, key) for key, value in raw.items()]  # answer -> id
    elif isinstance(raw, dict):
        pairs = list(raw.items())  # id -> answer
    id2label: dict[int, str] = {}
    for index, answer in pairs:
        try:
            index = int(index)
        except (TypeError, ValueError):
            index = None
        if index is None or not isinstance(answer, str) or index in id2label:
            raise ConversionError(
                f"Answers file {path} must map each answer id to its answer string once (vqa_dict.json: "
                f'{{"0": "net", ...}}), an answer to its id, or list the answers; got {answer!r} at {index!r}.'
            )
        id2label[index] = answer
    if sorted(id2label) != list(range(num_labels)):
        raise ConversionError(
            f"Answers file {path} names {len(id2label)} answers (ids {min(id2label, default=None)}.."
            f"{max(id2label, default=None)}); the VQA classifier has {num_labels} outputs, ids 0..{num_labels - 1}."
        )
    return dict(sorted(id2label.items()))


@dataclass(frozen=True)
class HeadCatalog:
    """A family's target heads and the original head modules each needs (the releases differ only in them).

    ``model_classes``: head -> class (``--head`` order); ``modules``: head module -> description; ``required``:
    head -> the modules it needs; ``keys``: a module's key prefixes (``"x."``; without the dot an exact key) when not
    just ``"{module}."``."""

    model_classes: Mapping[str, type]
    modules: Mapping[str, str]
    required: Mapping[str, tuple[str, ...]]
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def heads(self) -> tuple[str, ...]:
        return ("auto", *self.model_classes)

    def _prefixes(self, module: str) -> tuple[str, ...]:
        return self.keys.get(module, (module + ".",))

    def _holds(self, module: str, key: str) -> bool:
        return any(key.startswith(p) if p.endswith(".") else key == p for p in self._prefixes(module))

    def present(self, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
        """The head modules ``state_dict`` holds, in :attr:`modules` order."""
        return [module for module in self.modules if any(self._holds(module, key) for key in state_dict)]

    def shown(self, module: str) -> str:
        """A module's keys as an error message names them (``mlm_score.*``)."""
        return " + ".join(p + "*" if p.endswith(".") else p for p in self._prefixes(module))

    def resolve(self, modules: Sequence[str], head: str, tasks: Sequence[str], modality_rows: int) -> str:
        """The head to write: ``auto`` picks the checkpoint's task (``tasks``, the heads its modules were trained for;
        none: ``model``) and refuses a checkpoint trained for several; an explicit head must find its modules."""
        if head not in self.heads:
            raise ConversionError(f"head must be one of {self.heads}, got {head!r}")
        holds = ", ".join(self.shown(module) for module in modules) or "no head module"
        if head == "auto":
            if len(tasks) > 1:
                raise ConversionError(
                    f"The checkpoint holds the heads of several tasks ({holds}); choose one with --head "
                    f"{' / '.join(tasks)} (or model): the other heads' weights are then dropped by name."
                )
            head = tasks[0] if tasks else "model"
        missing = [module for module in self.required[head] if module not in modules]
        if missing:
            possible = [name for name in self.model_classes if all(m in modules for m in self.required[name])]
            raise ConversionError(
                f"--head {head} ({self.model_classes[head].__name__}) needs "
                f"{' and '.join(self.modules[m] for m in missing)} ({', '.join(self.shown(m) for m in missing)}), "
                f"which the checkpoint lacks (it holds {holds}). Heads it converts to: {', '.join(possible)}."
            )
        if head == "nlvr2" and modality_rows != 3:
            raise ConversionError(
                f"--head nlvr2 needs the three modality rows of an NLVR2 checkpoint (text, image, second image); "
                f"{MODALITY_ROWS} has {modality_rows}."
            )
        return head

    def not_held(self, what: str, head: str) -> str:
        """The reason a tensor of the checkpoint is dropped for ``head``."""
        return f"{what}, not part of {self.model_classes[head].__name__}"

    def drop_rules(self, head: str, kept: Sequence[str]) -> list[Drop]:
        """Drop rules, with their reason, for every head module but ``kept``."""
        return [
            Drop(re.escape(prefix) + (".+" if prefix.endswith(".") else ""), self.not_held(description, head))
            for module, description in self.modules.items() if module not in kept
            for prefix in self._prefixes(module)
        ]

    def split_modality_rows(
        self, mapped: MappedStateDict, state_dict: Mapping[str, torch.Tensor], head: str, target: str
    ) -> None:
        """After :func:`first_two_rows` went to ``target``: NLVR2's third modality row becomes
        ``second_image_modality_embedding`` for the ``nlvr2`` head, and is dropped by name for the others."""
        mapped.sources[target] = [f"{MODALITY_ROWS} (rows 0-1)"]
        rows = state_dict[MODALITY_ROWS]
        if rows.shape[0] != 3:
            return
        if head == "nlvr2":
            mapped.tensors["second_image_modality_embedding"] = rows[2]
            mapped.sources["second_image_modality_embedding"] = [f"{MODALITY_ROWS} (row 2)"]
        else:
            mapped.dropped[f"{MODALITY_ROWS}[2]"] = self.not_held("the modality row of NLVR2's second image", head)


def conversion_provenance(source: str, command: str, result: Any, compared_with: str, note: str = "") -> str:
    """The provenance paragraph of a converted model's card: ``source`` (the checkpoint, described), the ``command``,
    what ``result`` dropped on purpose, ``note`` and the verification against ``compared_with`` (or its absence)."""
    reasons = sorted(set(result.dropped.values()))
    verified = (
        f"{compared_with}: max |diff| {format_differences(result.differences)}."
        if result.differences is not None
        else "Not compared with another implementation (pass `--verify`)."
    )
    lines = [
        f"Converted from {source} to `{type(result.model).__name__}` with\n\n```bash\n{command}\n```\n",
        "Tensors carried over exactly; dropped on purpose: " + "; ".join(reasons) + "." if reasons else "",
        note,
        verified,
    ]
    return "\n".join(line for line in lines if line)
