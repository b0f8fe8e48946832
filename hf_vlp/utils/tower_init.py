"""Initialise hf_vlp's shared towers from pre-trained unimodal transformers checkpoints.

ALBEF and BLIP start pre-training from an ImageNet ViT/DeiT and from ``bert-base-uncased``: the ViT weights go into the
image tower (DeiT's distillation token dropped, positions bicubically interpolated when the resolution differs) and
BERT's weights into every text layer, the fusion layers included (self-attention and FFN of the same layer index),
while the cross-attention blocks stay freshly initialised; BLIP's decoder self-attention starts as a copy of BERT's too.
These loaders do that for :class:`~hf_vlp.modules.vision.VisionTransformer`,
:class:`~hf_vlp.modules.text.BertStyleTextTransformer` and :class:`~hf_vlp.models.blip.modeling_blip_text.MedTextTransformer`, reusing
the strict key rules of :mod:`hf_vlp.utils.checkpoints`, and return a :class:`LoadReport` of what was copied, interpolated,
dropped and left as initialised.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from ..modules.heads import MaskedLMHead
from ..modules.text import BertStyleTextTransformer

if TYPE_CHECKING:
    from ..models.blip.modeling_blip_text import MedTextTransformer
from ..modules.vision import VisionTransformer, interpolate_grid_embeddings

from .checkpoints import (
    ConversionError,
    Drop,
    MappingRule,
    Rename,
    fused_projection,
    map_state_dict,
    read_transformers_weights,
)
from .key_rules import bert_embedding_rules, bert_layer_rules

TowerSource = Union[str, os.PathLike, PreTrainedModel]

VISION_MODEL_TYPES = ("vit", "deit")
TEXT_MODEL_TYPES = ("bert",)
HEAD_PREFIX = "mlm_head."
# target keys whose rows index the vocabulary: a larger tower vocabulary (BLIP's [DEC]/[ENC]) keeps its extra rows
VOCABULARY_KEYS = ("embeddings.word_embeddings.weight", "mlm_head.decoder.weight", "mlm_head.decoder.bias")
MAX_LISTED = 12


class TowerInitError(ValueError):
    """The source checkpoint cannot initialise the tower; the message names the mismatch and the fix."""


@dataclass
class LoadReport:
    """What a tower loader did, keyed by the tower's own parameter names (head keys prefixed ``mlm_head.``).

    ``copied``: target key -> the source keys it was built from. ``interpolated``: target key -> how it was resized
    (position grids). ``resized``: target key -> rows copied when the target vocabulary is larger. ``dropped``: source
    key -> why it was not used. ``not_initialised``: target keys left as the tower initialised them (e.g. the fusion
    layers' cross-attention). ``notes``: harmless differences worth knowing (e.g. LayerNorm eps).
    """

    source: str
    copied: dict[str, list[str]] = field(default_factory=dict)
    interpolated: dict[str, str] = field(default_factory=dict)
    resized: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    not_initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines (layer indices grouped) for logs."""
        lines = [
            f"Initialised from {self.source}: {len(self.copied)} tensors copied, "
            f"{len(self.interpolated)} interpolated, "
            f"{len(self.resized)} resized, {len(self.dropped)} source tensors dropped, "
            f"{len(self.not_initialised)} left as initialised."
        ]
        for key, how in self.interpolated.items():
            lines.append(f"  interpolated {key}: {how}")
        for key, how in self.resized.items():
            lines.append(f"  resized {key}: {how}")
        for reason, keys in _group_by_reason(self.dropped).items():
            lines.append(f"  dropped {_format_keys(_group_layer_keys(keys))}: {reason}")
        if self.not_initialised:
            lines.append(f"  left as initialised: {_format_keys(_group_layer_keys(self.not_initialised))}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _group_by_reason(dropped: Mapping[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, reason in dropped.items():
        grouped.setdefault(reason, []).append(key)
    return grouped


def _group_layer_keys(keys: Sequence[str]) -> list[str]:
    """``layers.6.x``, ``layers.7.x`` -> ``layers.{6-7}.x`` (keeps first-seen order)."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        match = re.search(r"(layers?)\.(\d+)\.", key)
        if match is None:
            groups.setdefault(key, [])
            continue
        pattern = key[: match.start(2)] + "{}" + key[match.end(2) :]
        groups.setdefault(pattern, []).append(int(match.group(2)))
    out = []
    for pattern, indices in groups.items():
        if not indices:
            out.append(pattern)
        elif len(indices) == 1:
            out.append(pattern.format(indices[0]))
        else:
            contiguous = indices == list(range(min(indices), max(indices) + 1))
            span = f"{min(indices)}-{max(indices)}" if contiguous else ",".join(map(str, indices))
            out.append(pattern.format("{" + span + "}"))
    return out


def _format_keys(keys: Sequence[str]) -> str:
    listed = ", ".join(keys[:MAX_LISTED])
    return listed + (f", ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


# --------------------------------------------------------------------------------------------------- reading


@dataclass
class _Source:
    name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def _read_source(source: TowerSource, accepted_types: Sequence[str]) -> _Source:
    """Config and tensors of a transformers model instance, a local directory, or a cached/downloadable hub id."""
    if isinstance(source, PreTrainedModel):
        name = type(source).__name__
        config = source.config.to_dict()
        state_dict = {key: tensor.detach() for key, tensor in source.state_dict().items()}
    elif isinstance(source, (str, os.PathLike)):
        directory = _resolve_directory(source)
        name = str(source)
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise TowerInitError(f"{directory} has no config.json; pass a directory written by save_pretrained.")
        config = json.loads(config_file.read_text())
        try:
            state_dict = read_transformers_weights(directory)
        except ConversionError as error:
            raise TowerInitError(str(error)) from error
    else:
        raise TypeError(
            f"source must be a directory, a hub id or a transformers PreTrainedModel, got {type(source).__name__}"
        )
    model_type = config.get("model_type")
    if model_type not in accepted_types:
        raise TowerInitError(
            f"{name} is a {model_type!r} model; this tower loads {', '.join(repr(t) for t in accepted_types)} "
            "checkpoints (e.g. ViTModel/DeiTModel for the image tower, BertModel/BertForMaskedLM for the text tower)."
        )
    return _Source(name, config, state_dict)


def _resolve_directory(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        # only what a model needs; respects HF_HUB_OFFLINE (then only the local cache is used)
        return Path(snapshot_download(str(source), allow_patterns=["config.json", "*.safetensors", "*.json"]))
    except Exception as error:  # hub errors come in many types (validation, offline, not found)
        raise TowerInitError(
            f"{source} is neither a local model directory nor a hub model that can be fetched "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}). Pass a "
            "directory written by save_pretrained, a model instance, or a hub id available online or in the cache."
        ) from error


# --------------------------------------------------------------------------------------------------- checks


def _check_architecture(name: str, expected: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Raise one error listing every field where the tower (expected) and the source config (found) differ."""
    mismatches = [
        f"{key}: tower has {value}, source has {found.get(key)}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    if mismatches:
        raise TowerInitError(
            f"Architecture mismatch between the tower and {name}:\n  - " + "\n  - ".join(mismatches)
            + "\nBuild the tower with the source's sizes (hidden size, layer count, head count, ...) or pick a "
            "checkpoint of the tower's size."
        )


def _check_activation(name: str, mlp_act: nn.Module, source_act: str | None, notes: list[str]) -> None:
    if source_act is None:
        return
    if source_act not in ACT2FN:
        notes.append(f"source activation {source_act!r} is unknown to transformers; not compared")
        return
    if type(ACT2FN[source_act]) is not type(mlp_act):
        raise TowerInitError(
            f"Activation mismatch: the tower's MLP uses {type(mlp_act).__name__}, {name} uses hidden_act "
            f"{source_act!r}. Build the tower with activation={source_act!r}."
        )


def _note_eps(norm: nn.Module, source_eps: float | None, notes: list[str]) -> None:
    if isinstance(norm, nn.LayerNorm) and source_eps is not None and not math.isclose(norm.eps, source_eps):
        notes.append(f"LayerNorm eps differs: tower {norm.eps:g}, source {source_eps:g} (outputs differ slightly)")


def _map(
    source: _Source, rules: Sequence[MappingRule]
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]], dict[str, str]]:
    """Apply ``rules`` strictly: tensors and their source keys by target key, and the dropped source keys."""
    try:
        mapped = map_state_dict(source.state_dict, rules)
    except ConversionError as error:
        raise TowerInitError(f"{source.name} does not have the expected layout: {error}") from error
    return mapped.tensors, mapped.sources, mapped.dropped


def _load(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    sources: Mapping[str, list[str]],
    report: LoadReport,
    prefix: str = "",
) -> None:
    """Copy ``tensors`` into ``module`` after checking names and shapes; unfilled targets go to ``not_initialised``.

    A vocabulary-indexed tensor (:data:`VOCABULARY_KEYS`) may be larger in the target: its leading rows are copied.
    """
    expected = module.state_dict()
    unknown = [f"{prefix}{key} (from {', '.join(sources[key])})" for key in tensors if key not in expected]
    if unknown:
        raise TowerInitError(
            f"{report.source} has tensors the tower lacks: {_format_keys(unknown)}. The tower was built without them "
            "(e.g. patch_bias=False, final_norm='none', qkv_bias='none'); build it to match the source."
        )
    to_load: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, tensor in tensors.items():
        target = expected[key]
        full_key = prefix + key
        origin = sources[key]
        if tensor.shape == target.shape:
            to_load[key] = tensor.to(target.dtype)
            report.copied.setdefault(full_key, list(origin))
        elif full_key in VOCABULARY_KEYS and tensor.shape[1:] == target.shape[1:] and tensor.shape[0] < target.shape[0]:
            grown = target.detach().clone()
            grown[: tensor.shape[0]] = tensor.to(target.dtype)
            to_load[key] = grown
            report.resized[full_key] = (
                f"first {tensor.shape[0]} of {target.shape[0]} rows from {', '.join(origin)}; "
                "the rest left as initialised"
            )
        else:
            mismatched.append(
                f"{full_key} (from {', '.join(origin)}): tower {list(target.shape)}, source {list(tensor.shape)}"
            )
    if mismatched:
        raise TowerInitError(
            f"Shape mismatch between the tower and {report.source}: {_format_keys(mismatched)}. Build the tower with "
            "the source's sizes."
        )
    with torch.no_grad():
        module.load_state_dict(to_load, strict=False)
    report.not_initialised.extend(prefix + key for key in expected if key not in tensors)


# --------------------------------------------------------------------------------------------------- vision

_VIT = r"(?:vit\.|deit\.)?"  # ViTForImageClassification / DeiTFor* nest the backbone under the model type
_VIT_LAYER = _VIT + r"encoder\.layer\.(?P<layer>\d+)\."  # serialized (save_pretrained) names
_VIT_LAYER_NEW = _VIT + r"layers\.(?P<layer>\d+)\."  # transformers 5 in-memory names
_OUT = r"encoder.layers.\g<layer>."


def _vision_rules() -> list[MappingRule]:
    return [
        Rename(_VIT + r"embeddings\.cls_token", "class_embedding", lambda t: t.reshape(-1)),
        Rename(_VIT + r"embeddings\.position_embeddings", "position_embedding", lambda t: t.reshape(-1, t.shape[-1])),
        Rename(_VIT + r"embeddings\.patch_embeddings\.projection\.(?P<p>weight|bias)", r"patch_embed.\g<p>"),
        Drop(_VIT + r"embeddings\.distillation_token", "DeiT distillation token (the tower has only the class token)"),
        Drop(_VIT + r"embeddings\.mask_token", "masked-image-modelling token, unused by the tower"),
        fused_projection(_VIT_LAYER + r"attention\.attention\.", ("query", "key", "value"), _OUT + "attn.qkv"),
        fused_projection(_VIT_LAYER_NEW + r"attention\.", ("q_proj", "k_proj", "v_proj"), _OUT + "attn.qkv"),
        Rename(_VIT_LAYER + r"attention\.output\.dense\.(?P<p>weight|bias)", _OUT + r"attn.out_proj.\g<p>"),
        Rename(_VIT_LAYER_NEW + r"attention\.o_proj\.(?P<p>weight|bias)", _OUT + r"attn.out_proj.\g<p>"),
        Rename(_VIT_LAYER + r"intermediate\.dense\.(?P<p>weight|bias)", _OUT + r"mlp.fc1.\g<p>"),
        Rename(_VIT_LAYER + r"output\.dense\.(?P<p>weight|bias)", _OUT + r"mlp.fc2.\g<p>"),
        Rename(_VIT_LAYER_NEW + r"mlp\.(?P<fc>fc1|fc2)\.(?P<p>weight|bias)", _OUT + r"mlp.\g<fc>.\g<p>"),
        *(
            Rename(layer + rf"layernorm_{where}\.(?P<p>weight|bias)", _OUT + rf"{norm}.\g<p>")
            for layer in (_VIT_LAYER, _VIT_LAYER_NEW)
            for where, norm in (("before", "norm1"), ("after", "norm2"))
        ),
        Rename(_VIT + r"layernorm\.(?P<p>weight|bias)", r"norm_post.\g<p>"),
        Drop(_VIT + r"pooler\..*", "transformers' tanh pooler (ALBEF/BLIP use the final-norm [CLS] token)"),
        Drop(r"(?:classifier|cls_classifier|distillation_classifier)\..*", "ImageNet classification head"),
    ]


def load_vision_tower_from_transformers(tower: VisionTransformer, source: TowerSource) -> LoadReport:
    """Initialise ``tower`` from a transformers ViT or DeiT (``ViTModel``, ``ViTForImageClassification``, ``DeiTModel``,
    ``DeiT*ForImageClassification*``): a ``save_pretrained`` directory, a hub id, or a model instance.

    query/key/value are fused into ``qkv``; ``layernorm_before``/``after`` become ``norm1``/``norm2``; the final
    ``layernorm`` becomes ``norm_post``. Position embeddings are bicubically interpolated when the source grid differs
    from the tower's (ALBEF's ``interpolate_pos_embed``); DeiT's distillation token and its position are dropped.
    Pooler and classifier weights are dropped. Returns what was done; raises :class:`TowerInitError` on a mismatch.
    """
    if not isinstance(tower, VisionTransformer):
        raise TypeError(f"tower must be a hf_vlp VisionTransformer, got {type(tower).__name__}")
    src = _read_source(source, VISION_MODEL_TYPES)
    config = src.config
    first = tower.encoder.layers[0]
    _check_architecture(
        src.name,
        {
            "hidden_size": tower.patch_embed.out_channels,
            "num_hidden_layers": len(tower.encoder.layers),
            "num_attention_heads": first.attn.num_heads,
            "intermediate_size": first.mlp.fc1.out_features,
            "patch_size": tower.patch_size,
            "num_channels": tower.patch_embed.in_channels,
        },
        config,
    )
    report = LoadReport(src.name)
    _check_activation(src.name, first.mlp.act, config.get("hidden_act"), report.notes)
    _note_eps(first.norm1, config.get("layer_norm_eps"), report.notes)

    tensors, sources, dropped = _map(src, _vision_rules())
    report.dropped.update(dropped)
    if "position_embedding" not in tensors:
        raise TowerInitError(f"{src.name} has no embeddings.position_embeddings; it is not a ViT/DeiT checkpoint.")
    positions = tensors.pop("position_embedding")
    position_sources = sources.pop("position_embedding")
    num_prefix = 2 if any("distillation_token" in key for key in src.state_dict) else 1
    if num_prefix == 2:
        positions = torch.cat([positions[:1], positions[2:]])
        report.dropped[f"{position_sources[0]}[1]"] = "position of the DeiT distillation token"
    source_grid = math.isqrt(positions.shape[0] - 1)
    if source_grid * source_grid != positions.shape[0] - 1:
        raise TowerInitError(f"{src.name}: {positions.shape[0] - 1} patch positions do not form a square grid.")
    if source_grid != tower.grid_size:
        positions = interpolate_grid_embeddings(positions, 1, source_grid, (tower.grid_size, tower.grid_size))
        report.interpolated["position_embedding"] = (
            f"{source_grid}x{source_grid} -> {tower.grid_size}x{tower.grid_size} patch grid (bicubic) from "
            f"{position_sources[0]}"
        )
    tensors["position_embedding"] = positions
    sources["position_embedding"] = position_sources
    _load(tower, tensors, sources, report)
    if "position_embedding" in report.interpolated:
        report.copied.pop("position_embedding", None)
    return report


# --------------------------------------------------------------------------------------------------- text

_BERT = r"(?:bert\.)?"


def _text_rules(has_token_types: bool, head: bool) -> list[MappingRule]:
    rules: list[MappingRule] = [
        *bert_embedding_rules(_BERT, "", token_types=has_token_types),
        *bert_layer_rules(_BERT, "", cross_attention=False),
        Drop(_BERT + r"pooler\..*", "BERT's pooler (ALBEF/BLIP use no pooler)"),
        Drop(r"cls\.seq_relationship\..*", "BERT's next-sentence head"),
        Drop(r"cls\.predictions\.decoder\.bias", "same tensor as cls.predictions.bias"),
    ]
    if not has_token_types:
        rules.append(Drop(_BERT + r"embeddings\.token_type_embeddings\.weight", "the tower has no token-type embeddings"))
    if head:
        rules += [
            Rename(r"cls\.predictions\.transform\.dense\.(?P<p>weight|bias)", HEAD_PREFIX + r"dense.\g<p>"),
            Rename(r"cls\.predictions\.transform\.LayerNorm\.(?P<p>weight|bias)", HEAD_PREFIX + r"norm.\g<p>"),
            Rename(r"cls\.predictions\.bias", HEAD_PREFIX + "decoder.bias"),
            Rename(r"cls\.predictions\.decoder\.weight", HEAD_PREFIX + "decoder.weight"),
        ]
    else:
        rules.append(Drop(r"cls\.predictions\..*", "MLM head (no target head passed)"))
    return rules


_SELF_ATTENTION_KEY = re.compile(r"encoder\.layers\.(?P<layer>\d+)\.(?P<module>attn|norm1)\.(?P<p>.+)")
_DECODER_NAMES = {"attn": "causal_attn", "norm1": "norm_causal"}


def _route_self_attention(
    tower: BertStyleTextTransformer | MedTextTransformer,
    tensors: dict[str, torch.Tensor],
    sources: dict[str, list[str]],
) -> None:
    """Give BERT's self-attention (mapped to ``attn``/``norm1``) to the decoder-role ``causal_attn``/``norm_causal``
    of every layer that has one: a copy when the layer also has the bidirectional one, else a move."""
    for key in [key for key in tensors if _SELF_ATTENTION_KEY.fullmatch(key)]:
        match = _SELF_ATTENTION_KEY.fullmatch(key)
        layer = tower.encoder.layers[int(match["layer"])]
        if not layer.has_causal_self_attention:
            continue
        target = f"encoder.layers.{match['layer']}.{_DECODER_NAMES[match['module']]}.{match['p']}"
        if layer.has_self_attention:
            tensors[target] = tensors[key].clone()
            sources[target] = [f"{origin} (copied into the decoder self-attention)" for origin in sources[key]]
        else:
            tensors[target] = tensors.pop(key)
            sources[target] = sources.pop(key)


def load_text_tower_from_transformers(
    tower: BertStyleTextTransformer | MedTextTransformer, source: TowerSource, *, mlm_head: MaskedLMHead | None = None
) -> LoadReport:
    """Initialise ``tower`` (and optionally its ``mlm_head``) from a transformers BERT (``BertModel``,
    ``BertForMaskedLM``, ``BertForPreTraining``): a ``save_pretrained`` directory, a hub id, or a model instance.

    Every layer, the fusion layers included, gets BERT's self-attention, output and FFN of the same index (post-norm:
    ``attention.output.LayerNorm`` -> ``norm1``, ``output.LayerNorm`` -> ``norm2``); the fusion layers' cross-attention
    is left as initialised and listed in ``not_initialised``, as in ALBEF/BLIP. A larger tower vocabulary (BLIP's added
    tokens) keeps its extra rows. With ``mlm_head``, ``cls.predictions`` fills it; its decoder weight comes from
    ``cls.predictions.decoder.weight`` or, when the source ties it (BERT's default), from the word embeddings.
    A :class:`~hf_vlp.models.blip.modeling_blip_text.MedTextTransformer` gets BERT's self-attention in every self-attention it holds: the
    bidirectional one and a copy in the causal (decoder) one, as BLIP loads bert-base into both encoder and decoder.
    """
    from ..models.blip.modeling_blip_text import MedTextTransformer  # BLIP's stack; imported late (BLIP imports this module)

    if not isinstance(tower, (BertStyleTextTransformer, MedTextTransformer)):
        raise TypeError(
            f"tower must be a hf_vlp BertStyleTextTransformer or MedTextTransformer, got {type(tower).__name__}"
        )
    if mlm_head is not None and not isinstance(mlm_head, MaskedLMHead):
        raise TypeError(f"mlm_head must be a hf_vlp MaskedLMHead, got {type(mlm_head).__name__}")
    src = _read_source(source, TEXT_MODEL_TYPES)
    config = src.config
    first = tower.encoder.layers[0]
    first_attention = first.attn if first.has_self_attention else first.causal_attn
    _check_architecture(
        src.name,
        {
            "hidden_size": tower.embeddings.word_embeddings.embedding_dim,
            "num_hidden_layers": len(tower.encoder.layers),
            "num_attention_heads": first_attention.num_heads,
            "intermediate_size": first.mlp.fc1.out_features,
            "max_position_embeddings": tower.embeddings.max_position_embeddings,
        },
        config,
    )
    report = LoadReport(src.name)
    vocab_size = tower.embeddings.word_embeddings.num_embeddings
    if config.get("vocab_size", 0) > vocab_size:
        raise TowerInitError(
            f"Vocabulary mismatch: the tower has {vocab_size} tokens, {src.name} has {config['vocab_size']}. Build the "
            "tower with at least the source's vocab_size."
        )
    _check_activation(src.name, first.mlp.act, config.get("hidden_act"), report.notes)
    _note_eps(first.norm2, config.get("layer_norm_eps"), report.notes)

    has_token_types = tower.embeddings.token_type_embeddings is not None
    tensors, sources, dropped = _map(src, _text_rules(has_token_types, mlm_head is not None))
    report.dropped.update(dropped)
    head_tensors = {key[len(HEAD_PREFIX) :]: tensors.pop(key) for key in list(tensors) if key.startswith(HEAD_PREFIX)}
    head_sources = {key[len(HEAD_PREFIX) :]: sources.pop(key) for key in list(sources) if key.startswith(HEAD_PREFIX)}
    _route_self_attention(tower, tensors, sources)
    _load(tower, tensors, sources, report)
    if mlm_head is not None:
        if "decoder.weight" not in head_tensors and config.get("tie_word_embeddings", True):
            word_key = "embeddings.word_embeddings.weight"
            head_tensors["decoder.weight"] = tensors[word_key]
            head_sources["decoder.weight"] = [f"{sources[word_key][0]} (tied decoder)"]
        _load(mlm_head, head_tensors, head_sources, report, prefix=HEAD_PREFIX)
    return report
