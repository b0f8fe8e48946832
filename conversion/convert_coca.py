"""Convert open_clip's CoCa (``coca_ViT-B-32``, ``coca_ViT-L-14``, their MSCOCO fine-tunes, or any checkpoint of that
layout) to hf_vlp's ``VlpCocaForConditionalGeneration`` (or the dual encoder ``VlpCocaModel``) + ``VlpCocaProcessor``,
and back to open_clip (``--to-open-clip``, :func:`export_open_clip`).

Sources: open_clip's ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors`` (``model.state_dict()``), a
training checkpoint ``epoch_N.pt`` (``{"epoch", "name", "state_dict", ...}``, DDP's ``module.`` stripped), or a folder
holding one of the two weight files. Head counts are not stored in the weights, so the architecture comes from
``--model-config`` (alias ``--original-config``): open_clip's model-config JSON (the schema of its
``model_configs/coca_ViT-B-32.json``), the ``open_clip_config.json`` of a Hub repo (``{"model_cfg", "preprocess_cfg"}``;
its ``preprocess_cfg`` gives the processor's mean and std; found on its own next to the weights), or a preset name
``coca_ViT-B-32`` / ``coca_ViT-L-14``. Every open_clip field is mapped or named in an error: layouts hf_vlp cannot hold
(the ``"parallel"``/``"cascade"`` poolers, QuickGELU, layer scale, a Hugging Face text tower, ...) are refused with
the reason. ``--bpe`` (alias ``--tokenizer``) is the CLIP merges file of the vocabulary (default: the real one, from an
installed ``open_clip``); ``--head model`` keeps the dual encoder and drops the decoder by name. ``--verify`` compares
with open_clip's own CoCa when it is installed, else with an independent plain-torch forward of the original tensors
(:mod:`conversion.coca_reference`), in float64 (atol 1e-4); a failed check writes nothing.

    python conversion/convert_coca.py --checkpoint open_clip_pytorch_model.bin --model-config coca_ViT-B-32 \\
        --output out/coca-vit-b32 --verify
    python conversion/convert_coca.py --to-open-clip --checkpoint out/coca-vit-b32 --output out/coca-open-clip
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.coca.configuration_coca import VlpCocaConfig
from hf_vlp.models.coca.image_processing_coca import VlpCocaImageProcessor
from hf_vlp.models.coca.modeling_coca import VlpCocaModel
from hf_vlp.models.coca.modeling_coca_generation import VlpCocaForConditionalGeneration
from hf_vlp.models.coca.processing_coca import VlpCocaProcessor
from hf_vlp.models.clip.tokenization_clip import load_clip_tokenizer

from conversion.coca_reference import CAPTION_LOGITS, OUTPUT_NAMES, converted_outputs, open_clip_available
from conversion.coca_reference import random_inputs, reference_outputs
from conversion.common import NON_NEGATIVE_INT, NUMBER, POSITIVE_INT, ConversionError, check_config_fields
from conversion.common import check_differences, converter_options, converter_parser, input_paths, installed_clip_bpe
from conversion.common import load_mapped_state_dict, map_state_dict_with_splits, max_abs_differences
from conversion.common import read_original_config, read_original_source, run_cli, write_conversion, write_output_dir
from conversion.lightning_releases import conversion_provenance, make_config
from conversion.rules import coca_rules

logger = logging.getLogger("conversion.coca")

VERIFY_ATOL = 1e-4
HEADS = ("auto", "captioning", "model")
MODEL_CLASSES: dict[str, type] = {"captioning": VlpCocaForConditionalGeneration, "model": VlpCocaModel}
OPEN_CLIP_PRESETS = ("coca_ViT-B-32", "coca_ViT-L-14")  # open_clip's CoCa configs with released weights
OPEN_CLIP_WEIGHTS = "open_clip_pytorch_model.bin"  # open_clip's HF_WEIGHTS_NAME / HF_SAFE_WEIGHTS_NAME / HF_CONFIG_NAME
OPEN_CLIP_SAFETENSORS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
CLIP_VOCAB_SIZE = 49408
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / _STD
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LAYER_NORM_EPS = 1e-5
DECODER_MLP_RATIO = 4  # open_clip's MultimodalTransformer is built without mlp_ratio: always 4x
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


# --------------------------------------------------------------------------------------------------- open_clip fields


@dataclass(frozen=True)
class Fields:
    """One section of open_clip's model config: the fields hf_vlp's config takes (``used``), the fields open_clip's
    CoCa does not read or that only matter in training (``ignored``), and the fields hf_vlp can hold only at the
    values listed (``fixed``: name -> (accepted values, what another value would be))."""

    used: tuple[str, ...]
    ignored: tuple[str, ...] = ()
    fixed: Mapping[str, tuple[tuple[Any, ...], str]] | None = None

    def check(self, section: Mapping[str, Any], name: str, described: str) -> None:
        fixed = self.fixed or {}
        unknown = sorted(set(section) - set(self.used) - set(self.ignored) - set(fixed))
        if unknown:
            raise ConversionError(
                f"{described}: {name} has fields open_clip 3.3's CoCa does not know: {unknown}. Pass an open_clip "
                "CoCa model config (the schema of open_clip's model_configs/coca_ViT-B-32.json)."
            )
        for field, (accepted, meaning) in fixed.items():
            if field in section and not any(_same(section[field], value) for value in accepted):
                raise ConversionError(
                    f"{described}: {name}.{field} = {section[field]!r} ({meaning}) cannot be represented by hf_vlp's "
                    f"CoCa, which holds open_clip's released CoCa layout ({field}: {accepted[0]!r})."
                )


def _same(value: Any, accepted: Any) -> bool:
    return type(value) is type(accepted) and value == accepted


_BLOCK_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "ls_init_value": ((None,), "layer scale"),
    "act_kwargs": ((None, {}), "activation arguments"),
    "norm_kwargs": ((None, {}), "LayerNorm arguments"),
    "block_type": ((None, "default"), "open_clip's custom attention block"),
    **{
        name: ((False,), meaning)
        for name, meaning in (
            ("qk_norm", "query/key LayerNorm"), ("scaled_cosine_attn", "scaled cosine attention"),
            ("scale_heads", "per-head attention scales"), ("scale_attn_inner", "a LayerNorm inside the attention"),
            ("scale_attn", "a LayerNorm after the attention"), ("scale_fc", "a LayerNorm inside the MLP"),
        )
    },
}
# open_clip 3.3's CLIPTextCfg fields that only configure the tokenizer (hf_vlp's processor is CLIP's BPE tokenizer)
TOKENIZER_FIELDS = ("hf_tokenizer_name", "tokenizer_mode", "tokenizer_kwargs")
VISION_FIELDS = Fields(
    used=("image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "attentional_pool",
          "attn_pooler_queries", "attn_pooler_heads"),
    ignored=("patch_dropout", "final_ln_after_pool", "output_tokens", "timm_model_pretrained", "timm_pool", "timm_proj",
             "timm_proj_bias", "timm_drop", "timm_drop_path"),
    fixed={
        **_BLOCK_OPTIONS,
        "no_ln_pre": ((False,), "an image tower without ln_pre"),
        "pos_embed_type": (("learnable",), "fixed sin-cos positions"),
        "pool_type": (("tok",), "the contrastive embedding pooled otherwise than by the first query"),
        "timm_model_name": ((None,), "a timm image tower"),
    },
)
TEXT_FIELDS = Fields(
    used=("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "pad_id"),
    ignored=("eos_id", "pool_type", "final_ln_after_pool", "output_tokens", "hf_model_pretrained", "hf_proj_type",
             "hf_pooler_type", *TOKENIZER_FIELDS),
    fixed={
        **_BLOCK_OPTIONS,
        "embed_cls": ((True,), "a text tower without CoCa's appended class token"),
        "no_causal_mask": ((False,), "a bidirectional text tower"),
        "proj_bias": ((False,), "a text projection with bias"),
        "proj_type": (("linear",), "another text projection"),
        "hf_model_name": ((None,), "a Hugging Face text tower instead of CLIP's"),
    },
)
# open_clip builds the decoder from context_length, width, heads, layers and ls_init_value alone; its other fields
# (MultimodalCfg extends CLIPTextCfg) are not read
MULTIMODAL_FIELDS = Fields(
    used=("context_length", "vocab_size", "width", "heads", "layers"),
    ignored=(*(set(TEXT_FIELDS.used) | set(TEXT_FIELDS.ignored) | set(TEXT_FIELDS.fixed or {})) - {"ls_init_value"},
             "dim_head", "n_queries", "attn_pooler_heads"),
    fixed={"ls_init_value": _BLOCK_OPTIONS["ls_init_value"]},
)
MODEL_FIELDS = Fields(
    used=("embed_dim", "vision_cfg", "text_cfg", "multimodal_cfg", "init_logit_scale", "nonscalar_logit_scale",
          "pad_id"),
    ignored=("custom_text",),
    fixed={
        "quick_gelu": ((False,), "QuickGELU activations; open_clip's CoCa configs use exact GELU"),
        "init_logit_bias": ((None,), "a SigLIP-style logit bias"),
    },
)
FIELD_KINDS: dict[str, Any] = {
    "embed_dim": POSITIVE_INT, "init_logit_scale": NUMBER, "pad_id": NON_NEGATIVE_INT,
    **{
        f"vision_cfg.{name}": POSITIVE_INT
        for name in ("width", "head_width", "attn_pooler_queries", "attn_pooler_heads")
    },
    "vision_cfg.layers": (POSITIVE_INT, "list"), "vision_cfg.image_size": (POSITIVE_INT, "list"),
    "vision_cfg.patch_size": (POSITIVE_INT, "list"), "vision_cfg.mlp_ratio": NUMBER,
    **{f"text_cfg.{name}": POSITIVE_INT for name in ("context_length", "vocab_size", "width", "heads", "layers")},
    "text_cfg.mlp_ratio": NUMBER, "text_cfg.pad_id": NON_NEGATIVE_INT,
    **{f"multimodal_cfg.{name}": POSITIVE_INT for name in ("context_length", "vocab_size", "width", "heads", "layers")},
}
SECTIONS = {"vision_cfg": VISION_FIELDS, "text_cfg": TEXT_FIELDS, "multimodal_cfg": MULTIMODAL_FIELDS}


def _square(value: int | Sequence[int], name: str, described: str) -> int:
    if isinstance(value, int):
        return value
    if len(value) == 2 and value[0] == value[1]:
        return value[0]
    raise ConversionError(f"{described}: {name} {list(value)} is not square; hf_vlp's ViT takes square images/patches.")


def check_model_cfg(model_cfg: Mapping[str, Any], described: str) -> None:
    """Refuse, with the field and the reason, an open_clip model config hf_vlp's CoCa cannot represent exactly."""
    MODEL_FIELDS.check(model_cfg, "the model config", described)
    for name, fields in SECTIONS.items():
        if not isinstance(model_cfg.get(name), Mapping):
            raise ConversionError(f"{described}: {name!r} must be a JSON object (open_clip's CoCa needs all three of "
                                  f"{list(SECTIONS)}), got {model_cfg.get(name)!r}.")
        fields.check(model_cfg[name], name, described)
    if "embed_dim" not in model_cfg:
        raise ConversionError(f"{described}: 'embed_dim' is missing (the contrastive width).")
    check_config_fields(model_cfg, FIELD_KINDS, described)
    vision, text, multimodal = (model_cfg[name] for name in SECTIONS)
    pool = vision.get("attentional_pool", False)
    if pool in ("parallel", "cascade"):
        raise ConversionError(
            f"{described}: vision_cfg.attentional_pool = {pool!r} is open_clip's untested work-in-progress layout (two "
            "poolers, ln_post before pooling), which has no released weights and which hf_vlp does not convert. "
            "Released CoCa checkpoints use attentional_pool: true."
        )
    if pool is not True:
        raise ConversionError(
            f"{described}: vision_cfg.attentional_pool = {pool!r}; a CoCa image tower has open_clip's attentional "
            "pooler (attentional_pool: true). Is this a CLIP config? Convert CLIP with conversion/convert_clip.py."
        )
    if text.get("embed_cls") is not True:
        raise ConversionError(
            f"{described}: text_cfg.embed_cls is {text.get('embed_cls', 'absent')!r}; CoCa's text tower appends a "
            "class token (embed_cls: true). Is this a CLIP config? Convert CLIP with conversion/convert_clip.py."
        )
    if isinstance(vision.get("layers"), list):
        raise ConversionError(f"{described}: vision_cfg.layers is a list (a ModifiedResNet image tower); hf_vlp's "
                              "CoCa has a ViT image tower.")
    width = text.get("width", 512)
    if not model_cfg["embed_dim"] == multimodal.get("width", 512) == width:
        raise ConversionError(
            f"{described}: embed_dim ({model_cfg['embed_dim']}), text_cfg.width ({width}) and multimodal_cfg.width "
            f"({multimodal.get('width', 512)}) differ; open_clip's decoder reads the pooled image tokens (embed_dim) "
            "and the text tokens without a projection, so the three must be equal."
        )
    if multimodal.get("context_length", 77) < text.get("context_length", 77):
        raise ConversionError(
            f"{described}: multimodal_cfg.context_length ({multimodal.get('context_length', 77)}) is shorter than "
            f"text_cfg.context_length ({text.get('context_length', 77)}); open_clip's decoder mask must cover the text."
        )
    if model_cfg.get("pad_id", 0) != text.get("pad_id", 0):
        raise ConversionError(
            f"{described}: pad_id ({model_cfg.get('pad_id', 0)}) differs from text_cfg.pad_id "
            f"({text.get('pad_id', 0)}); hf_vlp's CoCa has one pad id for its mask, loss and generation."
        )


def coca_config(
    model_cfg: Mapping[str, Any], described: str, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> VlpCocaConfig:
    """``VlpCocaConfig`` of an open_clip CoCa model config (checked by :func:`check_model_cfg`): vision heads = width //
    head_width, the pooler's queries and heads, text ``context_length`` -> ``max_position_embeddings``, MLP widths from
    ``mlp_ratio`` (the decoder's always 4x), start/end of text = the given ids or ``vocab - 2`` / ``vocab - 1`` (CLIP's
    BPE layout), pad = ``pad_id``."""
    check_model_cfg(model_cfg, described)
    vision, text, multimodal = (model_cfg[name] for name in SECTIONS)
    vision_width, text_width = vision.get("width", 768), text.get("width", 512)
    vocab_size = text.get("vocab_size", CLIP_VOCAB_SIZE)
    if multimodal.get("vocab_size", vocab_size) != vocab_size:
        logger.warning(
            f"multimodal_cfg.vocab_size {multimodal['vocab_size']} is ignored, as open_clip does: the decoder predicts "
            f"text_cfg.vocab_size = {vocab_size} tokens."
        )
    if vision.get("patch_dropout", 0):
        logger.warning(f"vision_cfg.patch_dropout {vision['patch_dropout']} (a training setting) is not carried over.")
    settings = dict(
        projection_dim=model_cfg["embed_dim"],
        logit_scale_init_value=model_cfg.get("init_logit_scale", DEFAULT_LOGIT_SCALE),
        vision_config=dict(
            image_size=_square(vision.get("image_size", 224), "vision_cfg.image_size", described),
            patch_size=_square(vision.get("patch_size", 16), "vision_cfg.patch_size", described),
            hidden_size=vision_width,
            intermediate_size=int(vision_width * vision.get("mlp_ratio", 4.0)),
            num_hidden_layers=vision.get("layers", 12),
            num_attention_heads=vision_width // vision.get("head_width", 64),
            pooler_num_queries=vision.get("attn_pooler_queries", 256),
            pooler_num_attention_heads=vision.get("attn_pooler_heads", 8),
            pooler_layout="single",
            layer_norm_eps=LAYER_NORM_EPS,
        ),
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=text_width,
            intermediate_size=int(text_width * text.get("mlp_ratio", 4.0)),
            num_hidden_layers=text.get("layers", 12),
            num_attention_heads=text.get("heads", 8),
            max_position_embeddings=text.get("context_length", 77),
            pad_token_id=text.get("pad_id", 0),
            bos_token_id=vocab_size - 2 if bos_token_id is None else bos_token_id,
            eos_token_id=vocab_size - 1 if eos_token_id is None else eos_token_id,
            layer_norm_eps=LAYER_NORM_EPS,
        ),
        decoder_config=dict(
            vocab_size=vocab_size,
            hidden_size=multimodal.get("width", 512),
            intermediate_size=DECODER_MLP_RATIO * multimodal.get("width", 512),
            num_hidden_layers=multimodal.get("layers", 12),
            num_attention_heads=multimodal.get("heads", 8),
            layer_norm_eps=LAYER_NORM_EPS,
        ),
    )
    if not settings["vision_config"]["num_attention_heads"]:
        raise ConversionError(f"{described}: vision_cfg.head_width {vision['head_width']} exceeds the width "
                              f"{vision_width}.")
    return make_config(VlpCocaConfig, settings)


def open_clip_model_cfg(config: VlpCocaConfig) -> dict[str, Any]:
    """The open_clip model config (``model_configs/coca_*.json`` schema) of ``config``: the inverse of
    :func:`coca_config`. Refuses what open_clip's CoCa cannot build: the ``"parallel"`` pooler layout, activations
    other than exact GELU, LayerNorm eps other than 1e-5, a decoder MLP other than 4x, MLP widths no ``mlp_ratio``
    gives, a contrastive width unequal to the text/decoder width."""
    vision, text, decoder = config.vision_config, config.text_config, config.decoder_config
    if vision.pooler_layout != "single":
        raise ConversionError(
            f"pooler_layout {vision.pooler_layout!r} (the paper's two poolers) has no open_clip counterpart that runs: "
            "open_clip's 'parallel' layout normalises before pooling. Only the 'single' layout (open_clip's released "
            "CoCa) is exported."
        )
    problems = []
    for name, tower in (("vision", vision), ("text", text), ("decoder", decoder)):
        if tower.hidden_act != "gelu":
            problems.append(f"{name} hidden_act {tower.hidden_act!r} (open_clip's CoCa: 'gelu')")
        if tower.layer_norm_eps != LAYER_NORM_EPS:
            problems.append(f"{name} layer_norm_eps {tower.layer_norm_eps} (open_clip's CoCa: {LAYER_NORM_EPS})")
    if decoder.intermediate_size != DECODER_MLP_RATIO * decoder.hidden_size:
        problems.append(f"decoder intermediate_size {decoder.intermediate_size} (open_clip's decoder: 4 x width)")
    if not config.projection_dim == text.hidden_size == decoder.hidden_size:
        problems.append(f"projection_dim {config.projection_dim} unequal to the text/decoder width {text.hidden_size}")
    ratios = {}
    for name, tower in (("vision", vision), ("text", text)):
        ratios[name] = tower.intermediate_size / tower.hidden_size
        if int(tower.hidden_size * ratios[name]) != tower.intermediate_size:
            problems.append(f"{name} intermediate_size {tower.intermediate_size} (no mlp_ratio gives it)")
    if problems:
        raise ConversionError(f"open_clip's CoCa cannot hold this model: {'; '.join(problems)}.")
    model_cfg: dict[str, Any] = {
        "embed_dim": config.projection_dim,
        "vision_cfg": {
            "image_size": vision.image_size, "layers": vision.num_hidden_layers, "width": vision.hidden_size,
            "head_width": vision.hidden_size // vision.num_attention_heads, "mlp_ratio": ratios["vision"],
            "patch_size": vision.patch_size, "attentional_pool": True, "attn_pooler_queries": vision.pooler_num_queries,
            "attn_pooler_heads": vision.pooler_num_attention_heads, "output_tokens": True,
        },
        "text_cfg": {
            "context_length": text.max_position_embeddings, "vocab_size": text.vocab_size, "width": text.hidden_size,
            "heads": text.num_attention_heads, "layers": text.num_hidden_layers, "mlp_ratio": ratios["text"],
            "embed_cls": True, "pad_id": text.pad_token_id, "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": text.max_position_embeddings, "vocab_size": decoder.vocab_size,
            "width": decoder.hidden_size, "heads": decoder.num_attention_heads, "layers": decoder.num_hidden_layers,
        },
        "custom_text": True,
    }
    if text.pad_token_id:
        model_cfg["pad_id"] = text.pad_token_id
    if not math.isclose(config.logit_scale_init_value, DEFAULT_LOGIT_SCALE):
        model_cfg["init_logit_scale"] = config.logit_scale_init_value
    return model_cfg


# --------------------------------------------------------------------------------------------------- inputs


@dataclass
class OpenClipConfig:
    """open_clip's ``{"model_cfg", "preprocess_cfg"}`` and where it was read (for messages)."""

    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    described: str


def _weights_in(folder: Path) -> Path:
    for name in (OPEN_CLIP_SAFETENSORS, OPEN_CLIP_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(
        f"{folder} is a folder without open_clip weights ({OPEN_CLIP_SAFETENSORS} or {OPEN_CLIP_WEIGHTS}); pass the "
        "checkpoint file itself."
    )


def read_model_config(model_config: str | Path | Mapping[str, Any] | None, weights: Path) -> OpenClipConfig:
    """The open_clip config of the conversion: ``model_config`` (a preset name, a JSON file or its content: a model
    config or ``{"model_cfg", "preprocess_cfg"}``), else the ``open_clip_config.json`` next to the ``weights``."""
    if model_config is None:
        sibling = weights.parent / OPEN_CLIP_CONFIG
        if not sibling.is_file():
            raise ConversionError(
                f"No model config for {weights.name}: attention head counts are not stored in the weights. Pass "
                f"--model-config with open_clip's model-config JSON (model_configs/<name>.json), the repo's "
                f"{OPEN_CLIP_CONFIG}, or a preset name ({', '.join(OPEN_CLIP_PRESETS)}; their MSCOCO fine-tunes too)."
            )
        logger.info(f"Model config: {sibling} (found next to the weights)")
        model_config = sibling
    if isinstance(model_config, str) and model_config in OPEN_CLIP_PRESETS and not Path(model_config).exists():
        preset = open_clip_model_cfg(VlpCocaConfig.from_preset(model_config))
        return OpenClipConfig(preset, default_preprocess_cfg(), f"the preset {model_config}")
    if isinstance(model_config, Mapping):
        raw, described = dict(model_config), "model_config"
    else:
        path = Path(model_config)
        if not path.exists() and path.suffix != ".json":
            raise ConversionError(
                f"Model config {model_config!r} is neither a JSON file nor a preset; the presets are "
                f"{', '.join(OPEN_CLIP_PRESETS)}."
            )
        raw, described = read_original_config(path, "open_clip's CoCa model config"), f"Model config {path}"
    if "model_cfg" in raw:
        unknown = sorted(set(raw) - {"model_cfg", "preprocess_cfg"})
        if unknown or not isinstance(raw["model_cfg"], Mapping):
            raise ConversionError(
                f"{described} looks like an {OPEN_CLIP_CONFIG} but holds "
                f"{unknown or 'a model_cfg that is not an object'}"
                '; it must be {"model_cfg": {...}, "preprocess_cfg": {...}}.'
            )
        preprocess = raw.get("preprocess_cfg") or {}
        return OpenClipConfig(dict(raw["model_cfg"]), {**default_preprocess_cfg(), **preprocess}, described)
    return OpenClipConfig(raw, default_preprocess_cfg(), described)


def default_preprocess_cfg() -> dict[str, Any]:
    """open_clip's eval preprocessing of its CoCa models (OpenAI mean/std, bicubic, shorter side), as its
    ``open_clip_config.json`` states it."""
    return {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"}


PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")  # PreprocessCfg


def check_preprocess_cfg(preprocess: Mapping[str, Any], image_size: int, described: str) -> None:
    """Refuse preprocessing the processor cannot reproduce (another interpolation or resize mode, a size other than
    the model's, mean/std that are not three numbers)."""
    unknown = sorted(set(preprocess) - set(PREPROCESS_KEYS))
    fixed = {"mode": "RGB", "interpolation": "bicubic", "resize_mode": "shortest"}
    wrong = [f"{key} {preprocess[key]!r} (hf_vlp: {value!r})" for key, value in fixed.items()
             if key in preprocess and preprocess[key] != value]
    if "size" in preprocess and preprocess["size"] not in (image_size, [image_size, image_size]):
        wrong.append(f"size {preprocess['size']!r} (the model's image size is {image_size})")
    for key in ("mean", "std"):
        value = preprocess.get(key)
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(x, (int, float)) for x in value)):
            wrong.append(f"{key} {value!r} (three numbers)")
    if unknown or wrong:
        raise ConversionError(
            f"{described}: preprocess_cfg {'has unknown keys ' + str(unknown) if unknown else ''}"
            f"{'; ' if unknown and wrong else ''}{', '.join(wrong)}: VlpCocaProcessor reproduces open_clip's eval "
            "transform with bicubic shorter-side resizing only. Drop the preprocess_cfg (pass the model config alone) "
            "to get open_clip's default CoCa preprocessing."
        )


def coca_tokenizer(bpe: str | Path | None, vocab_size: int, context_length: int) -> Any:
    """The CLIP BPE tokenizer of ``bpe`` (a merges file or a tokenizer folder), checked to have ``vocab_size`` tokens;
    without ``bpe`` the real CLIP vocabulary of an installed open_clip when the size fits, else ``None`` (no
    processor, with a warning)."""
    if bpe is None:
        path = installed_clip_bpe()
        if path is None or vocab_size != CLIP_VOCAB_SIZE:
            why = (
                "open_clip (which ships CLIP's bpe_simple_vocab_16e6.txt.gz) is not installed" if path is None else
                f"the checkpoint's vocabulary has {vocab_size} tokens, CLIP's {CLIP_VOCAB_SIZE}"
            )
            logger.warning(f"No --bpe given and {why}: writing the model without a processor.")
            return None
        bpe = path
    path = Path(bpe)
    if not path.exists():
        raise ConversionError(f"BPE merges file not found: {path}. Pass CLIP's bpe_simple_vocab_16e6.txt.gz (or the "
                              "merges file of the checkpoint's vocabulary).")
    try:
        tokenizer = load_clip_tokenizer(path, model_max_length=context_length)
    except (OSError, ValueError) as error:
        raise ConversionError(f"Cannot build the tokenizer from {path}: {error}") from error
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"The tokenizer of {path} has {len(tokenizer)} tokens but the checkpoint's vocabulary has {vocab_size}; "
            "pass the merges file the checkpoint was trained with."
        )
    return tokenizer


def build_processor(tokenizer: Any, config: VlpCocaConfig, preprocess: Mapping[str, Any]) -> VlpCocaProcessor:
    """open_clip's CoCa preprocessing at the model's image size (mean/std from ``preprocess``) and its tokenisation
    (context ``max_position_embeddings``, pad ``pad_token_id``)."""
    size, text = config.vision_config.image_size, config.text_config
    image_processor = VlpCocaImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(preprocess["mean"]), image_std=list(preprocess["std"]),
    )
    return VlpCocaProcessor(
        image_processor, tokenizer, context_length=text.max_position_embeddings, pad_token_id=text.pad_token_id
    )


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class CocaConversion:
    """Result of :func:`convert_coca_checkpoint`; ``differences`` is ``None`` when no verification ran."""

    model: VlpCocaForConditionalGeneration | VlpCocaModel
    processor: VlpCocaProcessor | None
    head: str
    open_clip_config: OpenClipConfig
    dropped: dict[str, str]
    differences: dict[str, float] | None = None
    verified_against: str | None = None
    output: Path | None = None


def verify_conversion(
    model: VlpCocaModel, state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any],
    use_open_clip: bool | None = None,
) -> tuple[dict[str, float], str]:
    """Max |difference| between ``model`` and the original (open_clip when installed and ``use_open_clip`` is not
    False, else :mod:`conversion.coca_reference`'s plain forward) of ``state_dict`` on random inputs, in float64;
    raises above :data:`VERIFY_ATOL`. A dual encoder is compared without the caption logits."""
    text = model.config.text_config
    inputs = random_inputs(
        model.config.vision_config.image_size, text.max_position_embeddings, text.bos_token_id, text.eos_token_id,
        text.pad_token_id,
    )
    has_decoder = any(key.startswith("text_decoder.") for key in state_dict)
    use_open_clip = (open_clip_available() if use_open_clip is None else use_open_clip) and has_decoder
    reference, against = reference_outputs(state_dict, model_cfg, inputs, use_open_clip=use_open_clip)
    captions = isinstance(model, VlpCocaForConditionalGeneration)
    names = [*OUTPUT_NAMES, *([CAPTION_LOGITS] if captions else [])]
    converted = converted_outputs(model, inputs, reference[CAPTION_LOGITS].shape[1] if captions else None)
    differences = max_abs_differences({name: reference[name] for name in names}, converted)
    return check_differences(differences, VERIFY_ATOL, against), against


def _resolve_head(head: str, state_dict: Mapping[str, torch.Tensor], source: Path) -> str:
    has_decoder = any(key.startswith("text_decoder.") for key in state_dict)
    if head not in HEADS:
        raise ConversionError(f"Unknown head {head!r}; choose one of {list(HEADS)}.")
    if head == "auto":
        return "captioning" if has_decoder else "model"
    if head == "captioning" and not has_decoder:
        raise ConversionError(
            f"{source} holds no multimodal decoder (text_decoder.*), which VlpCocaForConditionalGeneration needs; "
            "convert it with --head model (the dual encoder)."
        )
    return head


def convert_coca_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    model_config: str | Path | Mapping[str, Any] | None = None,
    bpe: str | Path | None = None,
    *,
    head: str = "auto",
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    allow_non_finite: bool = False,
    use_open_clip: bool | None = None,
) -> CocaConversion:
    """Convert an open_clip CoCa checkpoint (+ its CLIP BPE vocabulary, as a ``VlpCocaProcessor``) to the hf_vlp
    ``head`` (``auto``: captioning when the checkpoint has its decoder, ``captioning``, ``model``); write it to
    ``output`` when given.

    ``model_config`` is a preset name, open_clip's model-config JSON or an ``open_clip_config.json`` (path or content;
    default: the ``open_clip_config.json`` next to the weights). Every source key is mapped (``--head model`` drops
    the decoder by name) and every target key filled, or a :class:`ConversionError` names the keys and nothing is
    written. ``verify`` compares with the original in float64 (``use_open_clip``: open_clip itself, default when
    installed, or the plain-torch reference) and raises above 1e-4.
    """
    path = Path(checkpoint)
    weights = _weights_in(path) if path.is_dir() else path
    preset = isinstance(model_config, str) and model_config in OPEN_CLIP_PRESETS and not Path(model_config).exists()
    inputs = input_paths(checkpoint, None if preset else model_config, bpe)
    source = read_original_source(weights, "coca", inputs, output, overwrite, allow_non_finite)
    state_dict = source.state_dict
    original = read_model_config(model_config, source.path)
    check_model_cfg(original.model_cfg, original.described)
    head = _resolve_head(head, state_dict, source.path)
    text_cfg = original.model_cfg["text_cfg"]
    tokenizer = coca_tokenizer(bpe, text_cfg.get("vocab_size", CLIP_VOCAB_SIZE), text_cfg.get("context_length", 77))
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id} if tokenizer else {}
    config = coca_config(original.model_cfg, original.described, **special)
    check_preprocess_cfg(original.preprocess_cfg, config.vision_config.image_size, original.described)
    if tokenizer is not None and any(text_cfg.get(name) for name in TOKENIZER_FIELDS):
        logger.warning(
            f"{original.described} configures open_clip's tokenizer ({', '.join(TOKENIZER_FIELDS)}), which the CLIP "
            "BPE processor does not reproduce: writing the model without a processor."
        )
        tokenizer = None
    decoder = head == "captioning"
    mapped = map_state_dict_with_splits(state_dict, coca_rules(decoder=decoder))
    model = MODEL_CLASSES[head](config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    reasons = "; ".join(sorted(set(mapped.dropped.values())))
    dropped = f", dropped {len(mapped.dropped)} ({reasons})" if mapped.dropped else ""
    logger.info(f"Converted to {type(model).__name__}: mapped {len(mapped.tensors)} tensors{dropped}.")
    result = CocaConversion(model, None, head, original, mapped.dropped)
    if verify:
        result.differences, result.verified_against = verify_conversion(
            model, state_dict, original.model_cfg, use_open_clip
        )
    if tokenizer is not None:
        result.processor = build_processor(tokenizer, config, original.preprocess_cfg)
    if output is not None:
        readme = conversion_provenance(
            f"`{source.path.name}` (open_clip CoCa, configured by {original.described.removeprefix('Model config ')})",
            command or f"convert_coca_checkpoint({source.path.name!r}, ...)", result,
            f"Compared with {result.verified_against} on random inputs", "" if result.processor else
            "No tokenizer matched the vocabulary, so this folder holds the model only (convert again with `--bpe`).",
        )
        result.output = write_conversion(output, model, result.processor, readme, overwrite, inputs)
    return result


# --------------------------------------------------------------------------------------------------- to open_clip


@dataclass
class OpenClipExport:
    """Result of :func:`export_open_clip`: open_clip's state dict and ``open_clip_config.json`` content."""

    state_dict: dict[str, torch.Tensor]
    open_clip_config: dict[str, Any]
    differences: dict[str, float] | None = None
    verified_against: str | None = None
    output: Path | None = None


def _load_for_export(model_or_dir: Any) -> tuple[VlpCocaForConditionalGeneration, Any, list[Path]]:
    if isinstance(model_or_dir, torch.nn.Module):
        return model_or_dir, None, []
    folder = Path(model_or_dir)
    if not (folder / "config.json").is_file():
        raise ConversionError(f"{folder} is not a saved hf_vlp CoCa folder (no config.json); pass one written by "
                              "save_pretrained or hf-vlp convert coca.")
    config = json.loads((folder / "config.json").read_text())
    architectures = config.get("architectures") or []
    if config.get("model_type") != VlpCocaConfig.model_type:
        raise ConversionError(f"{folder} holds a {config.get('model_type')!r} model, not hf_vlp's CoCa.")
    if VlpCocaForConditionalGeneration.__name__ not in architectures:
        raise ConversionError(
            f"{folder} holds {architectures or 'a model'} without the multimodal decoder (text_decoder.*, lm_head), "
            "which open_clip's CoCa always has. Export a VlpCocaForConditionalGeneration (convert with --head "
            "captioning)."
        )
    model, info = VlpCocaForConditionalGeneration.from_pretrained(
        str(folder), dtype=torch.float32, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ConversionError(f"{folder} lacks weights open_clip needs: {', '.join(missing[:25])}.")
    processor = None
    if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder))
    return model.eval(), processor, [folder]


def open_clip_state_dict(model: VlpCocaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """``model``'s weights as open_clip's CoCa ``state_dict()`` (fp32), checked to convert back to exactly ``model``'s
    state dict."""
    if not isinstance(model, VlpCocaForConditionalGeneration):
        raise ConversionError(
            f"{type(model).__name__} holds no multimodal decoder (text_decoder.*, lm_head), which open_clip's CoCa "
            "always has; export a VlpCocaForConditionalGeneration."
        )
    config = model.config
    open_clip_model_cfg(config)  # refuses what open_clip cannot hold
    ours = {key: value.detach().float().cpu() for key, value in model.state_dict().items()}
    in_proj = config.vision_config.hidden_size == config.projection_dim  # nn.MultiheadAttention then fuses q/k/v
    exported = map_state_dict_with_splits(ours, coca_rules(decoder=True, to_open_clip=True, pooler_in_proj=in_proj))
    state_dict = {key: value.contiguous() for key, value in exported.tensors.items()}
    back = map_state_dict_with_splits(state_dict, coca_rules(decoder=True)).tensors
    if set(back) != set(ours) or any(not torch.equal(back[key], ours[key]) for key in ours):
        raise ConversionError("The open_clip state dict does not convert back to the model's (a mapping error).")
    return state_dict


def export_open_clip(
    model_or_dir: VlpCocaForConditionalGeneration | str | Path,
    output: str | Path | None = None,
    *,
    processor: Any = None,
    verify: bool = False,
    overwrite: bool = False,
    use_open_clip: bool | None = None,
) -> OpenClipExport:
    """Write a CoCa (a ``VlpCocaForConditionalGeneration`` or a folder holding one) as open_clip stores it: its
    ``model.state_dict()`` as ``open_clip_pytorch_model.bin`` and ``open_clip_model.safetensors`` (fp32) and
    ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``; mean/std from ``processor``, the folder's processor
    or OpenAI's), atomically, replacing only a folder a conversion wrote (``overwrite``). ``verify`` runs the exported
    tensors through open_clip (or the plain-torch reference) against the model, in float64."""
    model, saved_processor, inputs = _load_for_export(model_or_dir)
    processor = processor or saved_processor
    state_dict = open_clip_state_dict(model)
    preprocess = default_preprocess_cfg()
    if processor is not None:
        image_processor = getattr(processor, "image_processor", processor)
        preprocess.update(mean=list(image_processor.image_mean), std=list(image_processor.image_std))
    result = OpenClipExport(state_dict, {"model_cfg": open_clip_model_cfg(model.config), "preprocess_cfg": preprocess})
    if verify:
        result.differences, result.verified_against = verify_conversion(
            model, state_dict, result.open_clip_config["model_cfg"], use_open_clip
        )
    if output is not None:
        from safetensors.torch import save_file

        def write(directory: Path) -> None:
            torch.save(state_dict, directory / OPEN_CLIP_WEIGHTS)
            save_file(state_dict, str(directory / OPEN_CLIP_SAFETENSORS))
            (directory / OPEN_CLIP_CONFIG).write_text(json.dumps(result.open_clip_config, indent=2) + "\n")

        marker = {"model_class": "open_clip CoCa", "sources": [str(path) for path in inputs]}
        result.output = write_output_dir(output, write, overwrite, inputs, marker=marker)
        logger.info(f"Wrote {result.output} ({len(state_dict)} tensors, {OPEN_CLIP_CONFIG})")
    return result


# --------------------------------------------------------------------------------------------------- CLI


OPTION_HELP = {
    "checkpoint": "open_clip CoCa weights: open_clip_pytorch_model.bin, open_clip_model.safetensors, a training "
    "checkpoint (epoch_N.pt) or a folder holding the weights; with --to-open-clip the hf_vlp CoCa folder",
    "original_config": "open_clip's model-config JSON, an open_clip_config.json, or a preset "
    f"({', '.join(OPEN_CLIP_PRESETS)}) (default: the open_clip_config.json next to the weights)",
    "tokenizer": "CLIP BPE merges file (.txt.gz) or tokenizer folder of the checkpoint's vocabulary (default: CLIP's, "
    "from an installed open_clip)",
    "verify": "compare with open_clip's CoCa (or, without open_clip, a plain-torch reference) on random inputs, in "
    "float64 (atol 1e-4)",
    "head": "auto: VlpCocaForConditionalGeneration when the checkpoint has its decoder (captioning), else VlpCocaModel "
    "(model: the dual encoder, the decoder dropped)",
}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = converter_parser(
        __doc__, OPTION_HELP, heads=HEADS, prog=prog,
        aliases={"original_config": ("--model-config",), "tokenizer": ("--bpe",)},
    )
    parser.add_argument(
        "--to-open-clip", action="store_true",
        help="the other way: write the hf_vlp CoCa folder --checkpoint as open_clip's open_clip_pytorch_model.bin, "
        "open_clip_model.safetensors and open_clip_config.json into --output",
    )
    return parser.parse_args(argv)


def main(
    argv: Sequence[str] | None = None, program: str = "python conversion/convert_coca.py"
) -> CocaConversion | OpenClipExport:
    """``convert_coca.py`` / ``hf-vlp convert coca``: convert as the command line says."""
    args = parse_args(argv, program)
    options = converter_options(args, argv, program)
    if args.to_open_clip:
        given = [flag for flag, value in (("--model-config", args.original_config), ("--bpe", args.tokenizer),
                                          ("--head", args.head != "auto")) if value]
        if given:
            raise ConversionError(f"{', '.join(given)} describe an open_clip source; --to-open-clip reads an hf_vlp "
                                  "folder, whose config says it all.")
        return export_open_clip(args.checkpoint, args.output, verify=args.verify, overwrite=args.overwrite)
    options["model_config"], options["bpe"] = options.pop("original_config"), options.pop("tokenizer")
    return convert_coca_checkpoint(**options, head=args.head)


if __name__ == "__main__":
    sys.exit(run_cli(main))
