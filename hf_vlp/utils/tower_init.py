"""Initialise hf_vlp's shared towers from pre-trained unimodal transformers checkpoints.

ALBEF and BLIP start pre-training from an ImageNet ViT/DeiT and from ``bert-base-uncased``: the ViT weights go into the
image tower (DeiT's distillation token dropped, positions bicubically interpolated when the resolution differs) and
BERT's weights into every text layer, the fusion layers included (self-attention and FFN of the same layer index),
while the cross-attention blocks stay freshly initialised; BLIP's decoder self-attention starts as a copy of BERT's too.
These loaders do that for :class:`~hf_vlp.modules.vision.VisionTransformer`,
:class:`~hf_vlp.modules.text.BertStyleTextTransformer` and :class:`~hf_vlp.models.blip.modeling_blip_text.MedTextTransformer`, reusing
the strict key rules of :mod:`hf_vlp.utils.checkpoints`, and return a :class:`LoadReport` of what was copied, interpolated,
dropped and left as initialised.

VLMo's first pre-training stage is a BEiT: :func:`load_vlmo_from_beit` puts a transformers BEiT's patch embedding,
attention, layer scale, FFN (as the V-FFN expert) and relative-position tables into a
:class:`~hf_vlp.models.vlmo.modeling_vlmo.VlpVlmoModel`, as the original's ``convert_to_textpt_ckpt`` does.
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
from ..modules.relative_position import num_relative_distances, resized_image_rows
from ..modules.text import BertStyleTextTransformer
from ..modules.vision import VisionTransformer, interpolate_grid_embeddings

if TYPE_CHECKING:
    from ..models.blip.modeling_blip_text import MedTextTransformer
    from ..models.vlmo.modeling_vlmo import VlpVlmoModel

from .checkpoints import (
    ConversionError,
    Drop,
    Fuse,
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
BEIT_MODEL_TYPES = ("beit", "data2vec-vision")  # Data2VecVision is BEiT's architecture under another name
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
    layers' cross-attention). ``notes``: harmless differences worth knowing (e.g. LayerNorm eps). ``overview``: lines a
    loader of a composite model writes to say what was copied and what was left per part (VLMo's shared attention and
    experts); when given, they replace the flat ``left as initialised`` line of :meth:`summary`.
    Entries of ``not_initialised`` with a ``[rows]`` suffix name part of a tensor (VLMo's text rows of the
    relative-position table): the rest of it was copied.
    """

    source: str
    copied: dict[str, list[str]] = field(default_factory=dict)
    interpolated: dict[str, str] = field(default_factory=dict)
    resized: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    not_initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    overview: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines (layer indices grouped) for logs."""
        lines = [
            f"Initialised from {self.source}: {len(self.copied)} tensors copied, "
            f"{len(self.interpolated)} interpolated, "
            f"{len(self.resized)} resized, {len(self.dropped)} source tensors dropped, "
            f"{len(self.not_initialised)} left as initialised."
        ]
        lines.extend(f"  {line}" for line in self.overview)
        for key, how in self.interpolated.items():
            lines.append(f"  interpolated {key}: {how}")
        for key, how in self.resized.items():
            lines.append(f"  resized {key}: {how}")
        for reason, keys in _group_by_reason(self.dropped).items():
            lines.append(f"  dropped {_format_keys(_group_layer_keys(keys))}: {reason}")
        if self.not_initialised and not self.overview:
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


def _read_source(
    source: TowerSource,
    accepted_types: Sequence[str],
    examples: str = "ViTModel/DeiTModel for the image tower, BertModel/BertForMaskedLM for the text tower",
) -> _Source:
    """Config and tensors of a transformers model instance, a local directory, or a cached/downloadable hub id;
    ``examples`` names the accepted model classes in the wrong-model-type error."""
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
            f"checkpoints (e.g. {examples})."
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


def _check_architecture(
    name: str,
    expected: Mapping[str, Any],
    found: Mapping[str, Any],
    target: str = "tower",
    fix: str = "Build the tower with the source's sizes (hidden size, layer count, head count, ...) or pick a "
    "checkpoint of the tower's size.",
) -> None:
    """Raise one error listing every field where the ``target`` (expected) and the source config (found) differ,
    ending with ``fix``."""
    mismatches = [
        f"{key}: {target} has {value}, source has {found.get(key)}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    if mismatches:
        raise TowerInitError(
            f"Architecture mismatch between the {target} and {name}:\n  - " + "\n  - ".join(mismatches) + "\n" + fix
        )


def _check_activation(
    name: str, mlp_act: nn.Module, source_act: str | None, notes: list[str], option: str = "activation"
) -> None:
    if source_act is None:
        return
    if source_act not in ACT2FN:
        notes.append(f"source activation {source_act!r} is unknown to transformers; not compared")
        return
    if type(ACT2FN[source_act]) is not type(mlp_act):
        raise TowerInitError(
            f"Activation mismatch: the tower's MLP uses {type(mlp_act).__name__}, {name} uses hidden_act "
            f"{source_act!r}. Build the tower with {option}={source_act!r}."
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


# --------------------------------------------------------------------------------------------------- VLMo from BEiT

_BEIT = r"(?:beit\.|data2vec_vision\.)?"  # BeitFor* / Data2VecVisionFor* nest the backbone under the model type
_BEIT_LAYER = _BEIT + r"encoder\.layer\.(?P<layer>\d+)\."  # serialized names (and Data2VecVision's in-memory ones)
_BEIT_LAYER_NEW = _BEIT + r"layers\.(?P<layer>\d+)\."  # transformers 5 in-memory BeitModel names
_BLOCK = r"encoder.layers.\g<layer>."
# staging names of BEiT's bias tables; merged into VLMo's one table by _merged_image_rows
_TABLE_STAGE = "beit_relative_position_table."
_LAYER_TABLE = re.compile(re.escape(_TABLE_STAGE) + r"layer\.(?P<layer>\d+)")
_SHARED_TABLE = _TABLE_STAGE + "shared"
_TABLE = "relative_position_bias.table"
_FC_NORM_REASON = (
    "BEiT's fc_norm (use_mean_pooling=True): it normalises the mean of the patch tokens, VLMo's final norm every "
    "token, so VLMo's norm stays as initialised (as the original's convert_to_textpt_ckpt leaves transformer.norm)"
)


def _beit_layer_rules(layer: str, new_names: bool) -> list[MappingRule]:
    """One BEiT layer family (serialized or transformers 5 in-memory names) onto a multiway block: separate
    query/key/value weights fused into ``attn.qkv.weight`` (BEiT's key has no bias), the query and value biases into
    ``attn.q_bias``/``attn.v_bias``, the FFN into the image expert (V-FFN) ``norm2.image``/``mlp.image``."""
    if new_names:
        attention, parts, out = r"attention\.", ("q_proj", "k_proj", "v_proj"), r"attention\.o_proj\."
        fc1, fc2, table = r"mlp\.fc1\.", r"mlp\.fc2\.", r"relative_position_bias\."
    else:
        attention, parts, out = r"attention\.attention\.", ("query", "key", "value"), r"attention\.output\.dense\."
        fc1, fc2 = r"intermediate\.dense\.", r"output\.dense\."
        table = r"attention\.attention\.relative_position_bias\."
    group = "|".join(parts)
    return [
        Fuse(layer + attention + rf"(?P<part>{group})\.weight", _BLOCK + "attn.qkv.weight", parts=parts),
        Rename(layer + attention + rf"{parts[0]}\.bias", _BLOCK + "attn.q_bias"),
        Rename(layer + attention + rf"{parts[2]}\.bias", _BLOCK + "attn.v_bias"),
        Rename(layer + out + r"(?P<p>weight|bias)", _BLOCK + r"attn.out_proj.\g<p>"),
        Rename(layer + table + "relative_position_bias_table", _TABLE_STAGE + r"layer.\g<layer>"),
        Rename(layer + fc1 + r"(?P<p>weight|bias)", _BLOCK + r"mlp.image.fc1.\g<p>"),
        Rename(layer + fc2 + r"(?P<p>weight|bias)", _BLOCK + r"mlp.image.fc2.\g<p>"),
        Rename(layer + r"layernorm_before\.(?P<p>weight|bias)", _BLOCK + r"norm1.\g<p>"),
        Rename(layer + r"layernorm_after\.(?P<p>weight|bias)", _BLOCK + r"norm2.image.\g<p>"),
        Rename(layer + r"lambda_(?P<i>[12])", _BLOCK + r"layer_scale\g<i>"),
    ]


def _beit_rules() -> list[MappingRule]:
    return [
        Rename(_BEIT + r"embeddings\.cls_token", "image_embeddings.class_embedding", lambda t: t.reshape(-1)),
        Rename(
            _BEIT + r"embeddings\.patch_embeddings\.projection\.(?P<p>weight|bias)",
            r"image_embeddings.patch_embed.\g<p>",
        ),
        Rename(
            _BEIT + r"embeddings\.position_embeddings",
            "image_embeddings.position_embedding",
            lambda t: t.reshape(-1, t.shape[-1]),
        ),
        Drop(_BEIT + r"embeddings\.mask_token", "masked-image-modelling [MASK] token, unused by VLMo's passes"),
        Drop(r".*relative_position_index", "index buffer; VLMo computes its own"),
        *_beit_layer_rules(_BEIT_LAYER, new_names=False),
        *_beit_layer_rules(_BEIT_LAYER_NEW, new_names=True),
        Rename(
            _BEIT + r"(?:encoder\.relative_position_bias|shared_position_bias)\.relative_position_bias_table",
            _SHARED_TABLE,
        ),
        # BeitModel's final norm (use_mean_pooling=False), or BeitForMaskedImageModeling's: the original BEiT's `norm`
        Rename(_BEIT + r"layernorm\.(?P<p>weight|bias)", r"norm.\g<p>"),
        Drop(_BEIT + r"pooler\.layernorm\..*", _FC_NORM_REASON),
        Drop(r"classifier\..*", "ImageNet classification head"),
        Drop(r"lm_head\..*", "masked-image-modelling head (visual-token logits)"),
    ]


def _beit_grid(config: Mapping[str, Any]) -> tuple[int, int]:
    size, patch = config.get("image_size", 224), config.get("patch_size", 16)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return height // patch, width // patch


def _merged_image_rows(
    name: str,
    tensors: dict[str, torch.Tensor],
    sources: dict[str, list[str]],
    grid: tuple[int, int],
    num_layers: int,
    num_heads: int,
) -> tuple[torch.Tensor, list[str], str] | None:
    """BEiT's bias tables ``[(2h-1)(2w-1)+3, heads]`` (popped from ``tensors``) as the image rows of VLMo's table
    ``[rows, heads * layers]``: layer ``i``'s table in columns ``[i * heads, (i + 1) * heads)`` (the original's
    concatenation along the head axis), a shared table in every layer's columns, both summed where BEiT has both (it
    adds them). Returns the rows, their source keys and how they were merged; ``None`` when BEiT has no relative
    positions."""
    layer_keys = {int(match["layer"]): key for key in tensors if (match := _LAYER_TABLE.fullmatch(key))}
    shared = tensors.pop(_SHARED_TABLE, None)
    shared_sources = sources.pop(_SHARED_TABLE, [])
    if not layer_keys and shared is None:
        return None
    if layer_keys and sorted(layer_keys) != list(range(num_layers)):
        raise TowerInitError(
            f"{name} has per-layer relative-position tables for layers {sorted(layer_keys)}, not for every one of its "
            f"{num_layers} layers; the checkpoint is incomplete or damaged."
        )
    per_layer = [tensors.pop(layer_keys[index]) for index in sorted(layer_keys)]
    origins = [origin for index in sorted(layer_keys) for origin in sources.pop(layer_keys[index])]
    expected = (num_relative_distances(grid), num_heads)
    for table, origin in zip([*per_layer, *([shared] if shared is not None else [])], [*origins, *shared_sources]):
        if tuple(table.shape) != expected:
            raise TowerInitError(
                f"{origin} in {name} has shape {list(table.shape)}; a {grid[0]}x{grid[1]} patch grid (image_size / "
                f"patch_size of its config) with {num_heads} heads needs {list(expected)}. Its config does not "
                "describe its weights."
            )
    columns = [
        (per_layer[index] + shared if shared is not None else per_layer[index]) if per_layer else shared
        for index in range(num_layers)
    ]
    if per_layer and shared is not None:
        how = "per-layer tables concatenated along the head axis, plus the shared table (BEiT adds both)"
    elif per_layer:
        how = "per-layer tables concatenated along the head axis"
    else:
        how = "shared table in every layer's columns"
    return torch.cat(columns, dim=1), origins + shared_sources, how


_VLMO_BLOCK_KEY = re.compile(
    r"encoder\.layers\.(?P<layer>\d+)\.(?P<module>[^.\[]+)(?:\.(?P<expert>text|image|vl)\b)?.*"
)
_VLMO_EXPERTS = {"image": "V-FFN (image expert)", "text": "L-FFN (text expert)", "vl": "VL-FFN (fusion expert)"}
_VLMO_PARTS = {
    "image_embeddings": "image embeddings", "relative_position_bias": "relative-position table", "norm": "final norm"
}
_VLMO_PART_ORDER = (
    "image embeddings", "shared attention", *_VLMO_EXPERTS.values(), "relative-position table", "final norm", "other"
)
_BLOCK_MODULE_ORDER = ("norm1", "attn", "layer_scale1", "layer_scale2", "norm2", "mlp")


def _span(indices: Sequence[int]) -> str:
    indices = sorted(set(indices))
    if len(indices) > 1 and indices == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(map(str, indices))


def _vlmo_parts(keys: Sequence[str], display: Mapping[str, str]) -> list[str]:
    """``part[, layers a-b]: modules`` lines of VLMo keys: the blocks' shared attention and each expert with their
    layer range, the image embeddings, the relative-position table, the final norm, and the other modules by name
    (``display`` overrides how a key is shown)."""
    parts: dict[str, tuple[list[int], dict[str, None]]] = {}
    for key in keys:
        match = _VLMO_BLOCK_KEY.fullmatch(key)
        if match is not None:
            expert = match["expert"]
            part = _VLMO_EXPERTS[expert] if expert else "shared attention"
            module = f"{match['module']}.{expert}" if expert else match["module"]
            layers, modules = parts.setdefault(part, ([], {}))
            layers.append(int(match["layer"]))
        else:
            top = key.split(".")[0].split("[")[0]
            part = _VLMO_PARTS.get(top, "other")
            module = display.get(key, re.sub(r"\.(weight|bias)$", "", key))
            if part == "other" and key not in display and "[" not in key:
                module = top
            modules = parts.setdefault(part, ([], {}))[1]
        modules[module] = None
    lines = []
    for part in sorted(parts, key=_VLMO_PART_ORDER.index):
        layers, modules = parts[part]
        if layers:  # block modules in their order of use
            modules = sorted(modules, key=lambda module: _BLOCK_MODULE_ORDER.index(module.split(".")[0]))
        lines.append(f"{part}{', layers ' + _span(layers) if layers else ''}: {', '.join(modules)}")
    return lines


def load_vlmo_from_beit(model: VlpVlmoModel, source: TowerSource, *, zero_image_modality: bool = True) -> LoadReport:
    """Initialise a :class:`~hf_vlp.models.vlmo.modeling_vlmo.VlpVlmoModel` from a transformers BEiT (``BeitModel``,
    ``BeitForMaskedImageModeling``, ``BeitForImageClassification``; ``Data2VecVision*`` alike): a ``save_pretrained``
    directory, a hub id, or a model instance. VLMo's stage 1 is a BEiT, loaded as the original's
    ``convert_to_textpt_ckpt`` does:

    * patch embedding and class token -> ``image_embeddings``; every block's ``layernorm_before`` -> ``norm1``,
      query/key/value -> the shared ``attn.qkv.weight`` (fused) with ``attn.q_bias``/``attn.v_bias`` (BEiT's key has
      no bias, as VLMo's), output -> ``attn.out_proj``, ``lambda_1``/``lambda_2`` -> ``layer_scale1``/``layer_scale2``,
      ``layernorm_after`` and the FFN -> the image expert ``norm2.image``/``mlp.image`` (V-FFN);
    * the relative-position tables -> the image rows of VLMo's one table: layer ``i``'s table into its columns
      (BEiT's per-layer tables concatenated along the head axis), a shared table
      (``use_shared_relative_position_bias``) into every layer's columns; when BEiT's image size differs from the
      config's, the patch-offset rows are resized bilinearly (as transformers' BEiT does at another resolution) and
      listed in ``interpolated`` (the original copies them unresized, which misplaces them);
    * BEiT's final ``layernorm`` (``use_mean_pooling=False``; ``BeitForMaskedImageModeling``'s head norm) -> ``norm``.
      A checkpoint with ``fc_norm`` instead (``use_mean_pooling=True``, BEiT's fine-tuned models) leaves ``norm`` as
      initialised, as the original does; the report says so.

    The L-FFN, VL-FFN, text embeddings, the table's cross-modal and text rows, the pooler, projections and
    temperature stay as initialised and are listed in ``not_initialised``; the overview lines of
    :meth:`LoadReport.summary` say per part (shared attention, each expert) what was copied and what was left.
    ``zero_image_modality`` (default) sets the image row of ``modality_embeddings`` to zero, so that
    ``model.encode_image`` computes BEiT's function exactly; the original leaves that row random (std 0.02).

    Raises :class:`TowerInitError` on a size mismatch (hidden size, layers, heads, FFN, patch size, channels), another
    activation, or positions VLMo cannot hold: absolute position embeddings (``use_absolute_position_embeddings``)
    into a relative-position VLMo, or relative tables into an absolute-position one. Dropping them instead would
    start VLMo from a function BEiT never computed (every attention layer without the positions it learned with).
    """
    from ..models.vlmo.modeling_vlmo import VlpVlmoModel  # imported late: VLMo's modules import this module

    if not isinstance(model, VlpVlmoModel):
        wrapped = isinstance(getattr(model, "vlmo", None), VlpVlmoModel)
        hint = " (pass model.vlmo of a VLMo head model)" if wrapped else ""
        raise TypeError(f"model must be a hf_vlp VlpVlmoModel{hint}, got {type(model).__name__}")
    src = _read_source(
        source, BEIT_MODEL_TYPES, examples="BeitModel, BeitForMaskedImageModeling, BeitForImageClassification"
    )
    config, vlmo = src.config, model.config
    _check_architecture(
        src.name,
        {
            "hidden_size": vlmo.hidden_size,
            "num_hidden_layers": vlmo.num_hidden_layers,
            "num_attention_heads": vlmo.num_attention_heads,
            "intermediate_size": vlmo.intermediate_size,
            "patch_size": vlmo.patch_size,
            "num_channels": vlmo.num_channels,
        },
        config,
        target="VLMo config",
        fix="Build the VlpVlmoConfig with the BEiT's sizes (e.g. VlpVlmoConfig.from_preset('base') for a BEiT-base: "
        "hidden 768, 12 layers, 12 heads, FFN 3072, patch 16; 'large' for a BEiT-large) or pick a BEiT of the "
        "config's size. The image size may differ: the relative-position rows are interpolated.",
    )
    report = LoadReport(src.name)
    first = model.encoder.layers[0]
    _check_activation(src.name, first.mlp["image"].act, config.get("hidden_act"), report.notes, option="hidden_act")
    _note_eps(first.norm1, config.get("layer_norm_eps"), report.notes)

    tensors, sources, dropped = _map(src, _beit_rules())
    report.dropped.update(dropped)
    image_rows = _place_positions(src.name, model, tensors, sources, _beit_grid(config), report)
    _place_layer_scale(src.name, model, tensors, sources, report)
    _load(model, tensors, sources, report)
    for key in report.interpolated:
        report.copied.pop(key, None)
    _finish_vlmo_report(model, report, image_rows, zero_image_modality)
    return report


def _place_positions(
    name: str,
    model: VlpVlmoModel,
    tensors: dict[str, torch.Tensor],
    sources: dict[str, list[str]],
    source_grid: tuple[int, int],
    report: LoadReport,
) -> int:
    """BEiT's positions into ``tensors`` as VLMo holds them: absolute embeddings into ``image_embeddings`` (bicubic to
    the config's grid) or the bias tables into the image rows of VLMo's table (the rest of it as the model has it), or
    an error when VLMo has no place for them. Returns how many image rows of the table were filled (0: none)."""
    target_grid = tuple(model.config.patch_grid)
    grids = f"{source_grid[0]}x{source_grid[1]} -> {target_grid[0]}x{target_grid[1]} patch grid"
    positions_key = "image_embeddings.position_embedding"
    if positions_key in tensors and model.image_embeddings.position_embedding is None:
        raise TowerInitError(
            f"{name} adds absolute position embeddings (use_absolute_position_embeddings=True), which a VLMo with "
            "position_embedding_type='relative' has no place for; dropping them would change what every layer "
            "computes. Build VLMo with position_embedding_type='absolute' (for a BEiT without relative biases) or "
            "pick a BEiT with relative positions only (use_absolute_position_embeddings=False, as microsoft/beit-*)."
        )
    merged = _merged_image_rows(
        name, tensors, sources, source_grid, model.config.num_hidden_layers, model.config.num_attention_heads
    )
    if merged is not None and model.relative_position_bias is None:
        raise TowerInitError(
            f"{name} has relative-position bias tables, which a VLMo with position_embedding_type='absolute' has no "
            "place for; dropping them would change what every layer computes. Build VLMo with "
            "position_embedding_type='relative' (VlpVlmoConfig.from_preset('base') or 'large')."
        )
    if positions_key in tensors and source_grid != target_grid:
        tensors[positions_key] = interpolate_grid_embeddings(tensors[positions_key], 1, source_grid[0], target_grid)
        report.interpolated[positions_key] = f"{grids} (bicubic) from {sources[positions_key][0]}"
    if merged is None:
        return 0
    rows, origins, how = merged
    if source_grid != target_grid:
        patch_rows = rows.shape[0] - 3  # the last three rows are the class-token entries, kept as they are
        rows = torch.cat([resized_image_rows(rows[:patch_rows], source_grid, target_grid), rows[patch_rows:]])
        report.interpolated[_TABLE] = (
            f"image rows 0-{rows.shape[0] - 1}: {grids} (patch offsets bilinear, class-token rows kept) from "
            f"{origins[0]}{' ...' if len(origins) > 1 else ''}"
        )
    table = model.relative_position_bias.table.detach().clone()
    table[: rows.shape[0]] = rows.to(table)
    tensors[_TABLE], sources[_TABLE] = table, origins
    report.notes.append(f"relative-position image rows 0-{rows.shape[0] - 1}: {how}")
    return rows.shape[0]


def _place_layer_scale(
    name: str, model: VlpVlmoModel, tensors: dict[str, torch.Tensor], sources: dict[str, list[str]], report: LoadReport
) -> None:
    """A BEiT without layer scale computes its branches unscaled: a VLMo with layer scale gets 1.0 there; a BEiT with
    layer scale cannot go into a VLMo without it."""
    has_scale = model.encoder.layers[0].layer_scale1 is not None
    source_scales = any(key.endswith(("layer_scale1", "layer_scale2")) for key in tensors)
    if source_scales and not has_scale:
        raise TowerInitError(
            f"{name} has layer scale (lambda_1/lambda_2, layer_scale_init_value > 0) but the VLMo config has "
            "layer_scale_init_value=None. Build VLMo with layer_scale_init_value set (0.1, as VLMo-Base)."
        )
    if has_scale and not source_scales:
        for index in range(model.config.num_hidden_layers):
            for scale in ("layer_scale1", "layer_scale2"):
                key = f"encoder.layers.{index}.{scale}"
                tensors[key] = torch.ones(model.config.hidden_size)
                sources[key] = ["1.0 (the source has no layer scale)"]
        report.notes.append(f"{name} has no layer scale (layer_scale_init_value=0): layer_scale1/2 set to 1.0")


def _finish_vlmo_report(model: VlpVlmoModel, report: LoadReport, image_rows: int, zero_image_modality: bool) -> None:
    """The parts of tensors left as initialised (the table's text rows, the modality rows but the zeroed image row),
    the final-norm note and the per-part overview."""
    from ..models.vlmo.modeling_vlmo import IMAGE

    table_rows = model.relative_position_bias.table.shape[0] if model.relative_position_bias is not None else 0
    left_rows = f"{_TABLE}[{image_rows}:{table_rows}]"
    if image_rows:
        report.not_initialised.append(left_rows)
    if zero_image_modality:
        with torch.no_grad():
            model.modality_embeddings.weight[IMAGE].zero_()
        report.not_initialised.remove("modality_embeddings.weight")
        modality_rows = model.modality_embeddings.weight.shape[0]
        report.not_initialised.extend(
            f"modality_embeddings.weight[{row}]" for row in range(modality_rows) if row != IMAGE
        )
        report.notes.append(
            f"modality_embeddings.weight[{IMAGE}] (the image row) set to zero so that encode_image computes BEiT's "
            "function (the original leaves it random; zero_image_modality=False keeps it)"
        )
    if "norm.weight" not in report.copied:
        has_fc_norm = any(reason == _FC_NORM_REASON for reason in report.dropped.values())
        report.notes.append(
            "the final norm stays as initialised: "
            + ("the source has fc_norm (mean pooling), not BEiT's final norm" if has_fc_norm
               else "the source has no final LayerNorm")
        )
    display = {
        _TABLE: f"{_TABLE}[0:{image_rows}] (image rows{', interpolated' if _TABLE in report.interpolated else ''})",
        left_rows: f"{_TABLE}[{image_rows}:] (cross-modal and text rows)",
        "modality_embeddings.weight[0]": "modality_embeddings.weight[0] (text row)",
    }
    copied = _vlmo_parts([*report.copied, *report.interpolated], display)
    report.overview = ["copied:", *(f"  {line}" for line in copied)]
    if report.not_initialised:
        left = _vlmo_parts(report.not_initialised, display)
        report.overview += ["left as initialised:", *(f"  {line}" for line in left)]
