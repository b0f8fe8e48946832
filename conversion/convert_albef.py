"""Convert an original ALBEF pretraining checkpoint (salesforce/ALBEF ``{'model': state_dict, ...}``) to hf_vlp's
``VlpAlbefForPretraining`` (online weights: ViT, BERT text/fusion encoder, MLM head, projections, ITM head, ``temp``;
the momentum ``*_m`` towers as ``momentum_*``; ``image_queue``/``text_queue`` with the shared ``queue_ptr`` copied into
each queue's ``ptr``) plus a ``VlpAlbefProcessor`` (ALBEF's image transform and the BERT tokenizer of ``--tokenizer``).
``--head masked_lm`` (or a checkpoint without momentum towers) writes
``VlpAlbefForMaskedLM`` with the momentum towers and queues dropped explicitly. A retrieval fine-tuning checkpoint
(``models/model_retrieval.py``: ``text_encoder.*`` without ``bert.``, an ``idx_queue``) is detected and written as
``VlpAlbefForImageTextRetrieval``; ``--head retrieval`` on a pretraining checkpoint starts retrieval fine-tuning as
``Retrieval.py`` does (MLM heads dropped, ``idx_queue`` filled with -100). A VQA checkpoint (``models/model_vqa.py``:
``text_decoder.*`` answer decoder) is detected and written as ``VlpAlbefForQuestionAnswering`` (``--head vqa``).
The visual-reasoning checkpoints are detected too: NLVR2 (``models/model_nlvr.py``: an 18-layer ``text_encoder``
whose fusion layers come in pairs sharing their cross-attention key/value, a 2-way ``cls_head``) ->
``VlpAlbefForVisualReasoning`` (``--head nlvr2``); SNLI-VE (``models/model_ve.py``: a 3-way ``cls_head``) ->
``VlpAlbefForVisualEntailment`` (``--head snli-ve``); text assignment (``models/model_pretrain_nlvr.py``:
``ta_head``) -> ``VlpAlbefForTextAssignment`` (``--head text-assignment``). A RefCOCO+ grounding checkpoint
(``Grounding.py``) is a retrieval model: ``--head grounding`` writes ``VlpAlbefForImageTextRetrieval``. When the
target image size (``--image-size``, else the original config's ``image_res``) differs from the checkpoint's, every
``pos_embed`` (the momentum tower's too) is resized bicubically with the class token kept, as the original's
``interpolate_pos_embed``.

Sizes are inferred from tensor shapes; head counts are not stored in shapes, so they default to ``width // 64``
(ViT-B/16 and BERT-base) unless ``--original-config`` (the original yaml keys as JSON, with the BERT json content under
``bert_config``) gives them. ``--verify`` compares the towers of the pretraining, masked-LM and retrieval heads with
the original tensors run through transformers' own BERT/BLIP modules (``conversion/albef_reference.py``).

    python conversion/convert_albef.py --checkpoint ALBEF.pth --output out/albef-base \
        --original-config pretrain_config.json --tokenizer vocab.txt --verify
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.albef import VlpAlbefConfig, VlpAlbefForImageTextRetrieval, VlpAlbefForMaskedLM
from hf_vlp.models.albef import VlpAlbefForPretraining, VlpAlbefForQuestionAnswering, VlpAlbefForTextAssignment
from hf_vlp.models.albef import VlpAlbefForVisualEntailment, VlpAlbefForVisualReasoning, VlpAlbefImageProcessor
from hf_vlp.models.albef import VlpAlbefProcessor
from hf_vlp.modules.vision import interpolate_grid_embeddings
from hf_vlp.utils.key_rules import bert_embedding_rules, bert_layer_rules

from conversion.albef_reference import converted_outputs, random_inputs, reference_outputs
from conversion.common import ConversionError, Drop, MappedStateDict, MappingRule, Rename, check_differences
from conversion.common import NON_NEGATIVE_INT, NUMBER, POSITIVE_INT, TEXT, check_config_fields, converter_options
from conversion.common import converter_parser, format_differences, input_paths, load_bert_tokenizer
from conversion.common import load_mapped_state_dict, map_state_dict, max_abs_differences, positive_int
from conversion.common import read_original_config, read_original_source
from conversion.common import run_cli, write_conversion
from conversion.rules import P, as_scalar, bert_prediction_head_rules
from conversion.rules import timm_vit_rules

logger = logging.getLogger("conversion.albef")

HEAD_DIM = 64  # ViT-B/16 and BERT-base: 768 / 12
# the original hard-codes ViT-B/16 in every model constructor; the vit_* keys (reference fixtures) override it
VIT_DEFAULTS = {"vit_patch_size": 16, "vit_depth": 12, "vit_num_heads": 12, "vit_mlp_ratio": 4}
MOMENTUM_PREFIXES = (
    "visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m", "text_decoder_m", "cls_head_m",
)
# tied copies in the original: (copy, source) must hold the same values
TIED_KEYS = tuple(
    (f"{encoder}.cls.predictions.decoder.{copy}", f"{encoder}.{source}")
    for encoder in ("text_encoder", "text_encoder_m", "text_decoder", "text_decoder_m")
    for copy, source in (("weight", "bert.embeddings.word_embeddings.weight"), ("bias", "cls.predictions.bias"))
)


# --------------------------------------------------------------------------------------------------- key rules

# Where the heads keep their towers: the online ones at the top level (``vision_model``, ``text_model``,
# ``vision_proj``, ``text_proj``, ``itm_head``, ``temp``), the momentum copies under ``momentum_``.
ONLINE, MOMENTUM = "", "momentum_"
NO_MLM_HEAD = "MLM head (the retrieval model has none, as Retrieval.py)"


def text_tower_rules(encoder: str, bert: str, text: str, mlm_head: str | None) -> list[MappingRule]:
    """ALBEF's xbert ``BertForMaskedLM`` (``bert=r"bert\\."``) or ``BertModel`` (``bert=""``) under the regex prefix
    ``encoder`` -> ``{text}transformer.*``; its MLM head -> ``mlm_head`` (``None``: dropped, a model without one)."""
    return [
        *bert_prediction_head_rules(encoder, mlm_head, NO_MLM_HEAD),
        *bert_embedding_rules(encoder + bert, text + "transformer."),
        *bert_layer_rules(encoder + bert, text + "transformer."),
    ]


def tower_rules(
    source: str,
    target: str,
    mlm_head: bool,
    projections: Sequence[str] = ("vision_proj", "text_proj"),
    bert: str = r"bert\.",
) -> list[MappingRule]:
    """One set of towers: ``source`` ``""`` (online) or ``"_m"`` (momentum copies) -> the ``target`` prefix
    (:data:`ONLINE` or :data:`MOMENTUM`): the ViT, the text encoder (``bert`` as in :func:`text_tower_rules`), its MLM
    head when ``mlm_head`` and the contrastive ``projections`` the model has."""
    return [
        *timm_vit_rules(rf"visual_encoder{source}\.", f"{target}vision_model."),
        *text_tower_rules(
            rf"text_encoder{source}\.", bert, f"{target}text_model.", f"{target}mlm_head." if mlm_head else None
        ),
        *(Rename(rf"{name}{source}\.{P}", rf"{target}{name}.\g<p>") for name in projections),
    ]


def _online_heads() -> list[MappingRule]:
    return [Rename(r"temp", ONLINE + "temp"), Rename(r"itm_head\." + P, ONLINE + r"itm_head.\g<p>")]


def albef_rules(with_momentum: bool = False) -> list[MappingRule]:
    """Original ``model_pretrain.ALBEF`` names -> ``VlpAlbefForPretraining`` names (``with_momentum``), else ->
    ``VlpAlbefForMaskedLM`` names with the momentum towers and queues dropped. The original's single
    ``queue_ptr`` goes to ``image_queue.ptr`` here and is copied to ``text_queue.ptr`` by :func:`map_albef_state_dict`."""
    online = [*_online_heads(), *tower_rules("", ONLINE, mlm_head=True)]
    if not with_momentum:
        momentum = "|".join(MOMENTUM_PREFIXES)
        return [
            Drop(rf"(?:{momentum})\..+", "momentum tower (only VlpAlbefForPretraining keeps it)"),
            Drop(
                r"image_queue|text_queue|queue_ptr",
                "feature queue of momentum distillation (only VlpAlbefForPretraining keeps it)",
            ),
            *online,
        ]
    queues = [Rename(r"(image|text)_queue", r"\1_queue.queue"), Rename(r"queue_ptr", "image_queue.ptr", as_scalar)]
    return [*online, *tower_rules("_m", MOMENTUM, mlm_head=True), *queues]


def is_vqa_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a ``models/model_vqa.py`` state dict (it alone has the answer decoder ``text_decoder``)."""
    return any(key.startswith("text_decoder.") for key in state_dict)


def vqa_rules() -> list[MappingRule]:
    """Original ``model_vqa.ALBEF`` names -> ``VlpAlbefForQuestionAnswering`` names: the question encoder (a
    ``BertModel``, no ``bert.``, no projections), the answer decoder ``text_decoder.bert.*`` and its LM head
    ``text_decoder.cls.*``, and the momentum copies ``*_m`` of all three."""
    rules: list[MappingRule] = []
    for source, target in (("", ONLINE), ("_m", MOMENTUM)):
        rules += tower_rules(source, target, mlm_head=False, projections=(), bert="")
        decoder = rf"text_decoder{source}\."
        rules += text_tower_rules(decoder, r"bert\.", f"{target}answer_decoder.", f"{target}answer_head.")
    return rules


def text_encoder_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``text_encoder.bert.`` (pretraining's ``BertForMaskedLM``) or ``text_encoder.`` (retrieval's ``BertModel``)."""
    if any(key.startswith("text_encoder.bert.") for key in state_dict):
        return "text_encoder.bert."
    return "text_encoder."


def is_retrieval_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a ``models/model_retrieval.py`` state dict (it alone has the image-id queue ``idx_queue``)."""
    return "idx_queue" in state_dict


def retrieval_rules(bert: str) -> list[MappingRule]:
    """Original ``model_retrieval.ALBEF`` names (or a pretraining checkpoint's, ``bert="bert\\."``, with its MLM heads
    dropped as ``Retrieval.py`` ignores them) -> ``VlpAlbefForImageTextRetrieval`` names. The single ``queue_ptr`` goes
    to ``image_queue.ptr`` and is copied to the other queues by :func:`map_retrieval_state_dict`."""
    return [
        *_online_heads(),
        *tower_rules("_m", MOMENTUM, mlm_head=False, bert=bert),
        *tower_rules("", ONLINE, mlm_head=False, bert=bert),
        Rename(r"(image|text|idx)_queue", r"\1_queue.queue"),
        Rename(r"queue_ptr", "image_queue.ptr", as_scalar),
    ]


def map_retrieval_state_dict(state_dict: Mapping[str, torch.Tensor]) -> MappedStateDict:
    """Apply :func:`retrieval_rules`; every queue gets its own copy of ``queue_ptr``, and a pretraining checkpoint
    (no ``idx_queue``) gets one filled with -100 (no image id), as the original's fresh buffer."""
    prefix = text_encoder_prefix(state_dict)
    mapped = map_state_dict(state_dict, retrieval_rules(r"bert\." if prefix.endswith("bert.") else ""))
    if "idx_queue.queue" not in mapped.tensors and "image_queue.queue" in mapped.tensors:
        size = mapped.tensors["image_queue.queue"].shape[1]
        mapped.tensors["idx_queue.queue"] = torch.full((1, size), -100, dtype=torch.long)
        mapped.sources["idx_queue.queue"] = ["(new: -100, as model_retrieval.py initialises it)"]
    if "image_queue.ptr" in mapped.tensors:
        for queue in ("text_queue", "idx_queue"):
            mapped.tensors[f"{queue}.ptr"] = mapped.tensors["image_queue.ptr"].clone()
            mapped.sources[f"{queue}.ptr"] = list(mapped.sources["image_queue.ptr"])
    return mapped


def has_momentum_towers(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a pretraining checkpoint that holds the momentum (``*_m``) towers."""
    return any(key.split(".")[0] in MOMENTUM_PREFIXES for key in state_dict)


def map_albef_state_dict(state_dict: Mapping[str, torch.Tensor], with_momentum: bool) -> MappedStateDict:
    """Apply :func:`albef_rules`; with momentum, every ``FeatureQueue`` gets its own copy of ``queue_ptr``."""
    mapped = map_state_dict(state_dict, albef_rules(with_momentum))
    if with_momentum and "image_queue.ptr" in mapped.tensors:
        mapped.tensors["text_queue.ptr"] = mapped.tensors["image_queue.ptr"].clone()
        mapped.sources["text_queue.ptr"] = list(mapped.sources["image_queue.ptr"])
    return mapped


def check_ties(state_dict: Mapping[str, torch.Tensor]) -> None:
    """The original ties the MLM decoder to the word embeddings and its bias to ``predictions.bias``; a checkpoint
    whose copies differ cannot be represented with one tensor each."""
    for copy, source in TIED_KEYS:
        if copy in state_dict and source in state_dict and not torch.equal(state_dict[copy], state_dict[source]):
            raise ConversionError(
                f"{copy} differs from {source}, which the original ties to it; hf_vlp keeps one tensor for both. "
                "The checkpoint was not saved from ALBEF's BertForMaskedLM (or was edited)."
            )


# --------------------------------------------------------------------------------------------------- visual reasoning

# head -> (original model file, what it is), for the checkpoints whose layout fixes the head
TASK_CHECKPOINTS = {
    "nlvr2": ("models/model_nlvr.py", "NLVR2"),
    "snli-ve": ("models/model_ve.py", "SNLI-VE"),
    "text-assignment": ("models/model_pretrain_nlvr.py", "text-assignment (NLVR2 pre-training)"),
}
CLASSIFIER_CLASSES = {2: "nlvr2", 3: "snli-ve"}  # cls_head outputs -> head


def checkpoint_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What an original state dict was saved from: ``vqa``, ``text-assignment`` (``ta_head``), ``nlvr2`` / ``snli-ve``
    (``cls_head`` with 2 / 3 outputs), ``retrieval`` (``idx_queue``; grounding too) or ``pretraining``."""
    if is_vqa_checkpoint(state_dict):
        return "vqa"
    if "ta_head.weight" in state_dict:
        return "text-assignment"
    if "cls_head.2.weight" in state_dict:
        classes = state_dict["cls_head.2.weight"].shape[0]
        if classes not in CLASSIFIER_CLASSES:
            raise ConversionError(
                f"cls_head.2.weight has {classes} outputs; ALBEF's NLVR2 head has 2 and its SNLI-VE head 3."
            )
        return CLASSIFIER_CLASSES[classes]
    if is_retrieval_checkpoint(state_dict):
        return "retrieval"
    return "pretraining"


def classifier_rules() -> list[MappingRule]:
    """Original ``model_nlvr.ALBEF`` / ``model_ve.ALBEF`` names -> ``VlpAlbefForVisualReasoning`` /
    ``VlpAlbefForVisualEntailment`` names: ``visual_encoder``, ``text_encoder`` (a ``BertModel``: no ``bert.``, layer
    indices kept, so NLVR2's 18 layers land on the paired encoder's), ``cls_head`` and their ``*_m`` copies."""
    rules: list[MappingRule] = []
    for source, target in (("", ONLINE), ("_m", MOMENTUM)):
        # neither model has contrastive projections
        rules += tower_rules(source, target, mlm_head=False, projections=(), bert="")
        rules.append(Rename(rf"cls_head{source}\.(?P<i>[02])\.{P}", rf"{target}cls_head.\g<i>.\g<p>"))
    return rules


def text_assignment_rules() -> list[MappingRule]:
    """Original ``model_pretrain_nlvr.ALBEF`` names -> ``VlpAlbefForTextAssignment`` names (``vision_proj`` draws the
    similar images; ``text_proj`` and ``temp`` exist in the original but are never read)."""
    return [
        Drop(r"text_proj\.(?:weight|bias)|temp", "never read by text assignment (model_pretrain_nlvr.py keeps it)"),
        *tower_rules("", ONLINE, mlm_head=False, projections=("vision_proj",), bert=""),
        Rename(r"ta_head\." + P, ONLINE + r"ta_head.\g<p>"),
    ]


def map_classifier_state_dict(state_dict: Mapping[str, torch.Tensor]) -> MappedStateDict:
    """Apply :func:`classifier_rules`; a checkpoint trained with ``distill: False`` (no ``*_m`` towers) gets momentum
    towers copied from the online ones, as the original's ``copy_params`` would start them."""
    mapped = map_state_dict(state_dict, classifier_rules())
    if not has_momentum_towers(state_dict):
        logger.warning("The checkpoint has no momentum towers (distill: False): copying the online towers into them.")
        for key in [key for key in mapped.tensors if not key.startswith("momentum_")]:
            mapped.tensors[f"momentum_{key}"] = mapped.tensors[key].clone()
            mapped.sources[f"momentum_{key}"] = [f"(copy of the online {', '.join(mapped.sources[key])})"]
    return mapped


def check_shared_cross_attention(state_dict: Mapping[str, torch.Tensor]) -> None:
    """NLVR2 and text assignment tie the cross-attention key/value of layers ``f + 2i`` and ``f + 2i + 1``
    (``share_cross_attention``, ``f`` the first cross-attending layer); hf_vlp keeps one tensor per pair, so the two
    copies must be equal."""
    fusion_layers = _layer_indices(state_dict, r"text_encoder\.encoder\.layer\.(\d+)\.crossattention\.")
    fusion_layer = fusion_layers[0] if fusion_layers else 0
    layer = re.compile(
        r"(text_encoder(?:_m)?\.encoder\.layer\.)(\d+)(\.crossattention\.self\.(?:key|value)\.(?:weight|bias))"
    )
    for key, tensor in state_dict.items():
        match = layer.fullmatch(key)
        if match is None or (int(match.group(2)) - fusion_layer) % 2:
            continue
        partner = f"{match.group(1)}{int(match.group(2)) + 1}{match.group(3)}"
        if partner in state_dict and not torch.equal(tensor, state_dict[partner]):
            raise ConversionError(
                f"{partner} differs from {key}; the original shares the cross-attention key/value within each pair "
                "of NLVR2 layers and hf_vlp keeps one tensor for both. The checkpoint was not saved from "
                "model_nlvr.py / model_pretrain_nlvr.py (or was edited)."
            )


def check_task_head(kind: str, head: str) -> None:
    """An NLVR2, SNLI-VE or text-assignment checkpoint converts only to its own head, and those heads only from it."""
    if kind in TASK_CHECKPOINTS and head != kind:
        module, name = TASK_CHECKPOINTS[kind]
        raise ConversionError(
            f"The checkpoint is an ALBEF {name} model ({module}); it converts only with --head {kind} (or auto), "
            f"not --head {head}."
        )
    if head in TASK_CHECKPOINTS and kind != head:
        module, name = TASK_CHECKPOINTS[head]
        raise ConversionError(
            f"--head {head} needs an ALBEF {name} checkpoint ({module}); this one is a {kind} checkpoint. To start "
            f"{name} training from pre-trained ALBEF, convert it with --head pretraining and call "
            f"{TASK_MODEL_NAMES[head]}.from_albef_pretrained(DIR)."
        )


def resize_position_embeddings(mapped: MappedStateDict, image_size: int, patch_size: int) -> list[str]:
    """Resize every mapped ViT position embedding (online and momentum) in place to ``image_size`` as the original's
    ``interpolate_pos_embed``: class token kept, patch grid resized bicubically. Returns a note per resized tensor."""
    grid = image_size // patch_size
    notes = []
    for key in [key for key in mapped.tensors if key.endswith("vision_model.transformer.position_embedding")]:
        positions = mapped.tensors[key]
        source_grid = round((positions.shape[0] - 1) ** 0.5)
        if source_grid * source_grid != positions.shape[0] - 1:
            raise ConversionError(
                f"{mapped.sources[key][0]} has {positions.shape[0] - 1} patch positions, which is not a square grid."
            )
        if source_grid != grid:
            mapped.tensors[key] = interpolate_grid_embeddings(positions, 1, source_grid, (grid, grid))
            notes.append(
                f"`{mapped.sources[key][0]}` resized from a {source_grid}x{source_grid} to a {grid}x{grid} patch grid "
                f"(bicubic, class token kept) for {image_size} px"
            )
    return notes


# --------------------------------------------------------------------------------------------------- configuration


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(
            f"Missing key {key!r}: the checkpoint is not an ALBEF pretraining or retrieval state dict "
            "(models/model_pretrain.py, models/model_retrieval.py) "
            f"(it has {len(state_dict)} keys, e.g. {sorted(state_dict)[:5]})."
        )
    return state_dict[key]


def _layer_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in state_dict if (match := regex.match(key))})


BERT_CONFIG = ("bert_config", "the BERT json (e.g. configs/config_bert.json)")
ORIGINAL_CONFIG = "the original yaml keys"
# the kinds of the fields the converter reads (checked before use: a wrong type is one line, not a traceback)
ORIGINAL_CONFIG_FIELDS = {
    "image_res": POSITIVE_INT, "vit_patch_size": POSITIVE_INT, "vit_depth": POSITIVE_INT,
    "vit_num_heads": POSITIVE_INT, "vit_mlp_ratio": NUMBER, "queue_size": POSITIVE_INT, "temp": NUMBER,
    "momentum": NUMBER, "alpha": NUMBER, "mlm_probability": NUMBER,
    "bert_config.num_attention_heads": POSITIVE_INT, "bert_config.fusion_layer": NON_NEGATIVE_INT,
    "bert_config.pad_token_id": NON_NEGATIVE_INT, "bert_config.hidden_act": TEXT, "bert_config.layer_norm_eps": NUMBER,
    "bert_config.hidden_dropout_prob": NUMBER, "bert_config.attention_probs_dropout_prob": NUMBER,
}


def albef_config(
    state_dict: Mapping[str, torch.Tensor],
    original: Mapping[str, Any],
    image_size: int | None = None,
    paired: bool = False,
) -> VlpAlbefConfig:
    """``VlpAlbefConfig`` from tensor shapes, with head counts and training settings from the original config.

    ``image_size`` overrides the original's ``image_res``. ``paired``: the text encoder is NLVR2's, whose fusion layers
    come in pairs; the config counts each pair once (``num_hidden_layers`` = text layers + pairs), as pre-trained ALBEF.
    """
    bert_json = dict(original.get("bert_config") or {})
    vit = {key: original.get(key, default) for key, default in VIT_DEFAULTS.items()}
    width = _require(state_dict, "visual_encoder.cls_token").shape[-1]
    patch = _require(state_dict, "visual_encoder.patch_embed.proj.weight").shape[-1]
    grid = round((_require(state_dict, "visual_encoder.pos_embed").shape[1] - 1) ** 0.5)
    vision_layers = _layer_indices(state_dict, r"visual_encoder\.blocks\.(\d+)\.")
    bert = text_encoder_prefix(state_dict)
    words = _require(state_dict, f"{bert}embeddings.word_embeddings.weight")
    text_width = words.shape[1]
    text_layers = _layer_indices(state_dict, re.escape(bert) + r"encoder\.layer\.(\d+)\.")
    fusion_layers = _layer_indices(state_dict, re.escape(bert) + r"encoder\.layer\.(\d+)\.crossattention\.")
    if patch != vit["vit_patch_size"] and "vit_patch_size" in original:
        raise ConversionError(f"vit_patch_size {vit['vit_patch_size']} contradicts the checkpoint's patch size {patch}")
    target_size = image_size if image_size is not None else original.get("image_res", patch * grid)
    if not isinstance(target_size, int) or isinstance(target_size, bool) or target_size < patch:
        raise ConversionError(
            f"The image size must be an integer of at least the patch size {patch}, got {target_size!r} "
            "(--image-size or the original config's image_res)."
        )
    vision = dict(
        hidden_size=width,
        intermediate_size=_require(state_dict, "visual_encoder.blocks.0.mlp.fc1.weight").shape[0],
        num_hidden_layers=len(vision_layers),
        num_attention_heads=vit["vit_num_heads"] if "vit_num_heads" in original else width // HEAD_DIM,
        image_size=target_size,
        patch_size=patch,
    )
    text = dict(
        vocab_size=words.shape[0],
        hidden_size=text_width,
        intermediate_size=_require(state_dict, f"{bert}encoder.layer.0.intermediate.dense.weight").shape[0],
        num_hidden_layers=len(text_layers),
        num_attention_heads=bert_json.get("num_attention_heads", text_width // HEAD_DIM),
        max_position_embeddings=_require(state_dict, f"{bert}embeddings.position_embeddings.weight").shape[0],
        type_vocab_size=_require(state_dict, f"{bert}embeddings.token_type_embeddings.weight").shape[0],
        fusion_layer=fusion_layers[0] if fusion_layers else len(text_layers),
        hidden_act=bert_json.get("hidden_act", "gelu"),
        layer_norm_eps=bert_json.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=bert_json.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=bert_json.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=bert_json.get("pad_token_id", 0),
    )
    if paired:
        if not fusion_layers or len(fusion_layers) % 2:
            raise ConversionError(
                f"An NLVR2 text encoder has its fusion layers in pairs; this one has {len(fusion_layers)} "
                "cross-attention layers."
            )
        text["num_hidden_layers"] = text["fusion_layer"] + len(fusion_layers) // 2
    if "fusion_layer" in bert_json and bert_json["fusion_layer"] != text["fusion_layer"]:
        raise ConversionError(
            f"bert_config.fusion_layer {bert_json['fusion_layer']} contradicts the checkpoint, whose first "
            f"cross-attention layer is {text['fusion_layer']}."
        )
    for tower, settings in (("vision", vision), ("text", text)):
        heads = settings["num_attention_heads"]
        if not heads or settings["hidden_size"] % heads:
            key = "vit_num_heads" if tower == "vision" else "bert_config.num_attention_heads"
            raise ConversionError(
                f"The {tower} tower's width {settings['hidden_size']} cannot be split into {heads} attention heads "
                f"(the default is width // {HEAD_DIM}); pass --original-config with the right {key!r}."
            )
    settings = {key: original[key] for key in ("temp", "queue_size", "momentum", "alpha", "mlm_probability") if key in original}
    if "image_queue" in state_dict:  # the model's queues must hold the checkpoint's
        settings["queue_size"] = state_dict["image_queue"].shape[1]
    try:
        return VlpAlbefConfig(
            # the VQA, NLVR2 and SNLI-VE models have no contrastive projections: keep the default contrastive width
            **({"embed_dim": state_dict["vision_proj.weight"].shape[0]} if "vision_proj.weight" in state_dict else {}),
            vision_config=vision,
            text_config=text,
            **settings,
        )
    except (StrictDataclassError, ValueError, TypeError) as error:
        raise ConversionError(f"The resulting configuration is invalid: {error}") from error


# --------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path, vocab_size: int) -> Any:
    """A lower-casing BERT tokenizer from the original WordPiece ``vocab.txt`` (special tokens found by name) or a
    tokenizer directory; its size must equal the checkpoint's vocabulary.

    ALBEF feeds ``[CLS] tokens`` without a trailing ``[SEP]``: the processor drops the last id of single sentences;
    the tokenizer alone keeps the stock format (for fine-tuning from here with it).
    """
    tokenizer = load_bert_tokenizer(path)
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary has {vocab_size}; pass the "
            "vocab.txt the checkpoint was trained with."
        )
    return tokenizer


def build_processor(tokenizer: Any, config: VlpAlbefConfig) -> VlpAlbefProcessor:
    """The processor of a converted model: ALBEF's square bicubic resize at the model's resolution and ``tokenizer``."""
    size = config.vision_config.image_size
    return VlpAlbefProcessor(VlpAlbefImageProcessor(size={"height": size, "width": size}), tokenizer)


# --------------------------------------------------------------------------------------------------- conversion


HEADS = ("auto", "pretraining", "masked_lm", "retrieval", "vqa", "nlvr2", "snli-ve", "text-assignment", "grounding")
MODEL_CLASSES = {
    "retrieval": VlpAlbefForImageTextRetrieval, "pretraining": VlpAlbefForPretraining, "masked_lm": VlpAlbefForMaskedLM,
    "vqa": VlpAlbefForQuestionAnswering, "nlvr2": VlpAlbefForVisualReasoning, "snli-ve": VlpAlbefForVisualEntailment,
    "text-assignment": VlpAlbefForTextAssignment,
}
VERIFY_ATOL = 1e-4
VERIFIED_HEADS = ("pretraining", "masked_lm", "retrieval")
VERIFIED_AGAINST = "the original tensors run through transformers' BERT/BLIP modules"
TASK_MODEL_NAMES = {"nlvr2": "VlpAlbefForVisualReasoning", "snli-ve": "VlpAlbefForVisualEntailment",
                    "text-assignment": "VlpAlbefForTextAssignment"}


@dataclass
class AlbefConversion:
    """Result of :func:`convert_albef_checkpoint`."""

    model: (
        VlpAlbefForPretraining | VlpAlbefForMaskedLM | VlpAlbefForImageTextRetrieval | VlpAlbefForQuestionAnswering
        | VlpAlbefForVisualReasoning | VlpAlbefForVisualEntailment | VlpAlbefForTextAssignment
    )
    tokenizer: Any
    processor: VlpAlbefProcessor | None
    dropped: dict[str, str]
    differences: dict[str, float] | None = None  # None when no verification ran
    output: Path | None = None


def convert_albef_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
    command: str | None = None,
    head: str = "auto",
    image_size: int | None = None,
    verify: bool = False,
    allow_non_finite: bool = False,
) -> AlbefConversion:
    """Convert an ALBEF checkpoint (+ tokenizer, as a ``VlpAlbefProcessor``); write it to ``output``.

    ``head="auto"`` writes ``VlpAlbefForImageTextRetrieval`` for a retrieval checkpoint (it has ``idx_queue``),
    ``VlpAlbefForPretraining`` (momentum towers and queues kept) when the checkpoint holds momentum towers, else
    ``VlpAlbefForMaskedLM``; ``"masked_lm"`` keeps only the online weights, dropping the momentum towers and queues
    explicitly; ``"retrieval"`` (or ``"grounding"``) on a pretraining checkpoint drops the MLM heads and starts
    ``idx_queue`` at -100. VQA, NLVR2, SNLI-VE and text-assignment checkpoints are detected from their keys and convert
    only to their own head. ``image_size`` (default: the original config's ``image_res``, else the checkpoint's)
    resizes the ViT position embeddings when it differs from the checkpoint's. Every source key is mapped or
    explicitly dropped (``position_ids``, the tied bias copies) and every target key filled, or a
    :class:`ConversionError` names the keys and nothing is written. ``verify`` compares the ITC/ITM towers of the
    pretraining, masked-LM and retrieval heads with the original tensors run through transformers' modules
    (:mod:`conversion.albef_reference`, atol 1e-4).
    """
    if head not in HEADS:
        raise ConversionError(f"head must be one of {HEADS}, got {head!r}")
    inputs = input_paths(checkpoint, original_config, tokenizer)
    source = read_original_source(checkpoint, "albef", inputs, output, overwrite, allow_non_finite)
    state_dict = source.state_dict
    described = "original_config"
    if original_config is not None and not isinstance(original_config, Mapping):
        described = f"Original config {original_config}"
        original_config = read_original_config(original_config, ORIGINAL_CONFIG, nested=BERT_CONFIG)
    original_config = original_config or {}
    check_config_fields(original_config, ORIGINAL_CONFIG_FIELDS, described)
    retrieval_source = is_retrieval_checkpoint(state_dict)
    vqa_source = is_vqa_checkpoint(state_dict)
    kind = checkpoint_kind(state_dict)
    requested_head = head
    if head == "auto":
        if kind in ("vqa", "retrieval", *TASK_CHECKPOINTS):
            head = kind
        else:
            head = "pretraining" if has_momentum_towers(state_dict) else "masked_lm"
    check_task_head(kind, head)
    if head == "grounding":  # Grounding.py fine-tunes model_retrieval.ALBEF
        head = "retrieval"
    if vqa_source != (head == "vqa"):
        raise ConversionError(
            "--head vqa needs an ALBEF VQA checkpoint (models/model_vqa.py, with text_decoder.*) and a VQA checkpoint "
            f"converts only with --head vqa (or auto); got --head {head} for a "
            f"{'VQA' if vqa_source else 'non-VQA'} checkpoint."
        )
    if head == "vqa" and not has_momentum_towers(state_dict):
        raise ConversionError(
            "--head vqa needs the momentum towers (visual_encoder_m, text_encoder_m, text_decoder_m) of a VQA "
            "checkpoint trained with distill: True."
        )
    if retrieval_source and head != "retrieval":
        raise ConversionError(
            f"The checkpoint is an ALBEF retrieval model (it has idx_queue) with no MLM head; --head {head} cannot be "
            "written from it. Use --head retrieval (or auto)."
        )
    if head == "retrieval" and not has_momentum_towers(state_dict):
        raise ConversionError(
            "--head retrieval needs the momentum towers (*_m) and feature queues of a pretraining or retrieval "
            "checkpoint; this one holds only online weights."
        )
    with_momentum = head == "pretraining"
    check_ties(state_dict)
    paired = head in ("nlvr2", "text-assignment")
    if paired:
        check_shared_cross_attention(state_dict)
    if head == "vqa":
        mapped = map_state_dict(state_dict, vqa_rules())
    elif head == "retrieval":
        mapped = map_retrieval_state_dict(state_dict)
    elif head in ("nlvr2", "snli-ve"):
        mapped = map_classifier_state_dict(state_dict)
    elif head == "text-assignment":
        mapped = map_state_dict(state_dict, text_assignment_rules())
    else:
        mapped = map_albef_state_dict(state_dict, with_momentum)
    config = albef_config(state_dict, original_config, image_size=image_size, paired=paired)
    vision = config.vision_config
    resized = resize_position_embeddings(mapped, vision.image_size, vision.patch_size)
    for note in resized:
        logger.info(note.replace("`", ""))
    bert_tokenizer = load_tokenizer(tokenizer, config.text_config.vocab_size) if tokenizer is not None else None
    if bert_tokenizer is not None:
        # the pretraining head masks tokens itself and must know the special ids
        config.text_config.pad_token_id = bert_tokenizer.pad_token_id
        config.text_config.cls_token_id = bert_tokenizer.cls_token_id
        config.text_config.mask_token_id = bert_tokenizer.mask_token_id
        config.text_config.sep_token_id = bert_tokenizer.sep_token_id
    model = MODEL_CLASSES[head](config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    momentum = sorted(key for key in mapped.dropped if key.startswith(MOMENTUM_PREFIXES) or "queue" in key)
    logger.info(
        f"Wrote {type(model).__name__}: mapped {len(mapped.tensors)} tensors; dropped {len(momentum)} momentum/queue "
        f"tensors and {sorted(set(mapped.dropped) - set(momentum))}."
    )
    differences = _verify(state_dict, model, head, resized) if verify else None
    processor = build_processor(bert_tokenizer, config) if bert_tokenizer is not None else None
    if processor is None:
        logger.warning("No tokenizer given (--tokenizer): writing the model without a processor.")
    result = AlbefConversion(model, bert_tokenizer, processor, mapped.dropped, differences)
    if output is not None:
        call = command or f"convert_albef_checkpoint({source.path.name!r}, ...)"
        readme = provenance(
            source.path.name, call, momentum, type(model).__name__, grounding=requested_head == "grounding",
            notes=resized, momentum_copied=head in ("nlvr2", "snli-ve") and not has_momentum_towers(state_dict),
            differences=differences,
        )
        result.output = write_conversion(output, model, processor, readme, overwrite, inputs)
    return result


def _verify(
    state_dict: Mapping[str, torch.Tensor], model: Any, head: str, resized: Sequence[str]
) -> dict[str, float]:
    """Max |difference| between the converted model and :func:`~conversion.albef_reference.reference_outputs`."""
    if head not in VERIFIED_HEADS:
        raise ConversionError(
            f"--verify compares the ITC/ITM towers with the original tensors run through transformers' modules; it "
            f"covers --head {', '.join(VERIFIED_HEADS)}, not --head {head}."
        )
    if resized:
        raise ConversionError("--verify needs the checkpoint's own resolution; drop --image-size (or image_res).")
    inputs = random_inputs(model.config)
    differences = max_abs_differences(reference_outputs(state_dict, model.config, inputs), converted_outputs(model, inputs))
    return check_differences(differences, VERIFY_ATOL, VERIFIED_AGAINST)


def provenance(
    checkpoint_name: str,
    command: str,
    momentum: Sequence[str],
    model_class: str,
    grounding: bool = False,
    notes: Sequence[str] = (),
    momentum_copied: bool = False,
    differences: Mapping[str, float] | None = None,
) -> str:
    """The conversion's provenance paragraph for the ALBEF model card; ``notes`` (e.g. resized position embeddings)
    are appended. ``momentum_copied``: the source had no momentum towers and they start as copies of the online ones."""
    classifier_kept = "Momentum towers (`momentum_*`, incl. `momentum_cls_head`) carried over too."
    if momentum_copied:
        classifier_kept = (
            "The checkpoint has no momentum towers (trained with `distill: False`): `momentum_*` start as copies of "
            "the online towers."
        )
    if model_class == VlpAlbefForQuestionAnswering.__name__:
        source, carried = "VQA", "Question encoder (ViT + BERT with fusion layers), answer decoder and its LM head"
        kept = "Momentum towers (`momentum_*`) carried over too."
    elif model_class == VlpAlbefForVisualReasoning.__name__:
        source = "NLVR2"
        carried = "ViT, the paired text encoder (cross-attention key/value shared per pair) and `cls_head`"
        kept = classifier_kept
    elif model_class == VlpAlbefForVisualEntailment.__name__:
        source, carried, kept = "SNLI-VE", "ViT, the multimodal text encoder and `cls_head`", classifier_kept
    elif model_class == VlpAlbefForTextAssignment.__name__:
        source = "text-assignment (NLVR2 pre-training)"
        carried = "ViT, `vision_proj`, the paired text encoder and `ta_head`"
        kept = "The unused `text_proj` and `temp` were dropped."
    elif model_class == VlpAlbefForImageTextRetrieval.__name__:
        source = "grounding (RefCOCO+, a retrieval model)" if grounding else "retrieval or pretraining"
        carried = "Online towers, projections, ITM head and `temp`"
        kept = (
            "Momentum towers (`momentum_*`) and the queues (`image_queue`, `text_queue`, `idx_queue`; -100 where the "
            "source had no id queue) carried over too; MLM heads, if any, were dropped."
        )
    elif momentum:
        source, carried = "pretraining", "Online towers, MLM head, projections, ITM head and `temp`"
        kept = f"{len(momentum)} momentum-tower/queue tensors were dropped (`--head masked_lm`)."
    else:
        source, carried = "pretraining", "Online towers, MLM head, projections, ITM head and `temp`"
        kept = "Momentum towers (`momentum_*`) and feature queues (`image_queue`, `text_queue`) carried over too."
    resized = "".join(f" {note}." for note in notes)
    verified = (
        f" Compared with {VERIFIED_AGAINST} on random inputs: max |diff| {format_differences(differences)}."
        if differences is not None
        else ""
    )
    return (
        f"Converted from `{checkpoint_name}` (salesforce/ALBEF {source} checkpoint) to `{model_class}` with\n\n"
        f"```bash\n{command}\n```\n\n"
        f"{carried} carried over exactly. {kept}{resized}{verified} "
        "ALBEF's text format is `[CLS] tokens` without a trailing `[SEP]`."
    )


# --------------------------------------------------------------------------------------------------- CLI


OPTION_HELP = {
    "checkpoint": "original {'model': state_dict} file (e.g. ALBEF.pth)",
    "original_config": "JSON of the original yaml keys, BERT json content under bert_config",
    "tokenizer": "the WordPiece vocab.txt (or tokenizer directory) the checkpoint was trained with",
    "verify": "compare the ITC/ITM towers with the original tensors run through transformers' modules (atol 1e-4)",
    "head": "auto: VlpAlbefForQuestionAnswering for a VQA checkpoint (text_decoder), VlpAlbefForTextAssignment for a "
    "text-assignment checkpoint (ta_head), VlpAlbefForVisualReasoning / VlpAlbefForVisualEntailment for an NLVR2 / "
    "SNLI-VE checkpoint (cls_head with 2 / 3 outputs), VlpAlbefForImageTextRetrieval for a retrieval checkpoint "
    "(idx_queue; --head grounding for RefCOCO+ grounding ones), VlpAlbefForPretraining when the checkpoint has "
    "momentum towers, else VlpAlbefForMaskedLM",
}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = converter_parser(__doc__, OPTION_HELP, heads=HEADS, prog=prog)
    parser.add_argument(
        "--image-size", type=positive_int,
        help="image resolution of the converted model (default: the original config's image_res, else the "
        "checkpoint's); position embeddings are resized bicubically when it differs from the checkpoint's",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, program: str = "python conversion/convert_albef.py") -> AlbefConversion:
    """``convert_albef.py`` / ``hf-vlp convert albef``: convert as the command line says."""
    args = parse_args(argv, program)
    return convert_albef_checkpoint(**converter_options(args, argv, program), head=args.head, image_size=args.image_size)


if __name__ == "__main__":
    sys.exit(run_cli(main))
