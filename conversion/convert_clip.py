"""Convert CLIP checkpoints to hf_vlp's ``VlpClipModel`` (+ ``VlpClipProcessor`` and a model card).

Sources:
  1. an OpenAI TorchScript release (``ViT-B-32.pt`` ...): its tensors are read from the archive's records WITHOUT
     running its code; ``--trust-torchscript`` opens it with ``torch.jit.load`` instead (running the code it holds),
     which the text-head probe and ``--verify`` need;
  2. a plain OpenAI-layout state dict (``jit_model.state_dict()`` saved with ``torch.save``, or open_clip's saves of
     its OpenAI-style CLIP models, possibly wrapped as ``{'state_dict': ...}`` with DDP ``module.`` prefixes);
  3. a transformers ``CLIPModel`` directory (``config.json`` + safetensors / ``pytorch_model.bin``).

Sizes are inferred from tensor shapes as OpenAI's ``build_model`` does. The text head count is the one size that
shapes cannot tell: ``--original-config`` (the original ``CLIP(...)`` constructor arguments) gives it; without it a
TorchScript source opened with ``--trust-torchscript`` is probed (the head count whose text features reproduce the
archive's ``encode_text`` is taken), and any other source gets ``width // 64`` as ``build_model`` assumes, with a
warning.

    python conversion/convert_clip.py --checkpoint ViT-B-32.pt --output out/clip-vit-b32 \
        --tokenizer bpe_simple_vocab_16e6.txt.gz --verify
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
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
from hf_vlp.models.clip.configuration_clip import VlpClipConfig, VlpClipTextConfig
from hf_vlp.models.clip.image_processing_clip import VlpClipImageProcessor
from hf_vlp.models.clip.modeling_clip import VlpClipModel, VlpClipTextModel
from hf_vlp.models.clip.processing_clip import VlpClipProcessor
from hf_vlp.models.clip.tokenization_clip import load_clip_tokenizer

from conversion.common import ConversionError, Drop, MappedStateDict, MappingRule, Rename, check_differences
from conversion.common import check_mapped_state_dict
from conversion.common import POSITIVE_INT, TOWER_SIZES, check_config_fields, check_family, check_source_tensors
from conversion.common import check_output_dir, config_fields, converter_options, converter_parser, input_paths
from conversion.common import filter_prefix, format_differences, fused_projection, load_mapped_state_dict, map_state_dict
from conversion.common import max_abs_differences, prepare_torchscript_for_cpu, read_checkpoint, read_original_config
from conversion.common import read_transformers_config, read_transformers_weights, run_cli, transpose, write_conversion
from conversion.rules import clip_block_rules

logger = logging.getLogger("conversion.clip")

VERIFY_ATOL = 1e-4
VERIFY_BATCH = 2
OPENAI_HEAD_DIM = 64
# keys of the original ``clip.model.CLIP.__init__`` accepted in --original-config, plus hf_vlp's ``vision_heads``
ORIGINAL_CONFIG_KEYS = (
    "embed_dim",
    "image_resolution",
    "vision_layers",
    "vision_width",
    "vision_patch_size",
    "context_length",
    "vocab_size",
    "transformer_width",
    "transformer_heads",
    "transformer_layers",
    "vision_heads",
)
# their kinds (every size a positive integer; vision_layers a list of 4 for a ResNet)
ORIGINAL_CONFIG_FIELDS: dict[str, Any] = {
    **{key: POSITIVE_INT for key in ORIGINAL_CONFIG_KEYS}, "vision_layers": (POSITIVE_INT, "list"),
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")

SOURCE_OPENAI_JIT = "OpenAI TorchScript archive"
SOURCE_OPENAI_STATE_DICT = "OpenAI-layout state dict"
SOURCE_TRANSFORMERS = "transformers CLIPModel directory"


# --------------------------------------------------------------------------------------------------- key rules


def openai_rules(architecture: str) -> list[MappingRule]:
    """OpenAI (and open_clip OpenAI-style) names -> hf_vlp names, for a ``"vit"`` or ``"resnet"`` image tower."""
    text = "text_model.transformer."
    rules: list[MappingRule] = [
        Drop(r"input_resolution|context_length|vocab_size", "size scalar of the TorchScript releases"),
        Rename(r"token_embedding\.weight", text + "token_embedding.weight"),
        Rename(r"positional_embedding", text + "position_embedding"),
        Rename(r"ln_final\.(weight|bias)", text + r"norm_final.\1"),
        Rename(r"text_projection", "text_projection.weight", transpose),
        Rename(r"logit_scale", "logit_scale"),
        *clip_block_rules("transformer.resblocks.", text + "encoder.layers.", fused_attention=True),
    ]
    if architecture == "vit":
        vit = "vision_model.transformer."
        rules += [
            Rename(r"visual\.conv1\.weight", vit + "patch_embed.weight"),
            Rename(r"visual\.class_embedding", vit + "class_embedding"),
            Rename(r"visual\.positional_embedding", vit + "position_embedding"),
            Rename(r"visual\.ln_pre\.(weight|bias)", vit + r"norm_pre.\1"),
            Rename(r"visual\.ln_post\.(weight|bias)", vit + r"norm_post.\1"),
            Rename(r"visual\.proj", "visual_projection.weight", transpose),
            *clip_block_rules("visual.transformer.resblocks.", vit + "encoder.layers.", fused_attention=True),
        ]
    else:
        trunk, pool = "vision_model.trunk.", "vision_model.attnpool."
        rules += [
            Rename(r"visual\.((?:conv|bn)[123]\..+)", trunk + r"\1"),
            Rename(r"visual\.(layer[1-4]\.\d+)\.downsample\.0\.(.+)", trunk + r"\1.downsample.conv.\2"),
            Rename(r"visual\.(layer[1-4]\.\d+)\.downsample\.1\.(.+)", trunk + r"\1.downsample.norm.\2"),
            Rename(r"visual\.(layer[1-4]\.\d+)\.((?:conv|bn)[123]\..+)", trunk + r"\1.\2"),
            Rename(r"visual\.attnpool\.positional_embedding", pool + "position_embedding"),
            Rename(r"visual\.attnpool\.q_proj\.(weight|bias)", pool + r"attn.q.\1"),
            fused_projection(r"visual\.attnpool\.", ("k_proj", "v_proj"), pool + "attn.kv"),
            Rename(r"visual\.attnpool\.c_proj\.(weight|bias)", pool + r"attn.out_proj.\1"),
        ]
    return rules


def transformers_rules() -> list[MappingRule]:
    """transformers ``CLIPModel`` names -> hf_vlp names (ViT image tower only, as transformers has no ResNet)."""
    text, vit = "text_model.transformer.", "vision_model.transformer."
    return [
        Drop(r"(?:text|vision)_model\.embeddings\.position_ids", "non-persistent index buffer of older saves"),
        Rename(r"text_model\.embeddings\.token_embedding\.weight", text + "token_embedding.weight"),
        Rename(r"text_model\.embeddings\.position_embedding\.weight", text + "position_embedding"),
        Rename(r"text_model\.final_layer_norm\.(weight|bias)", text + r"norm_final.\1"),
        *clip_block_rules("text_model.encoder.layers.", text + "encoder.layers.", fused_attention=False),
        Rename(r"vision_model\.embeddings\.patch_embedding\.weight", vit + "patch_embed.weight"),
        Rename(r"vision_model\.embeddings\.class_embedding", vit + "class_embedding"),
        Rename(r"vision_model\.embeddings\.position_embedding\.weight", vit + "position_embedding"),
        Rename(r"vision_model\.pre_layrnorm\.(weight|bias)", vit + r"norm_pre.\1"),
        Rename(r"vision_model\.post_layernorm\.(weight|bias)", vit + r"norm_post.\1"),
        *clip_block_rules("vision_model.encoder.layers.", vit + "encoder.layers.", fused_attention=False),
        Rename(r"(visual_projection|text_projection)\.weight", r"\1.weight"),
        Rename(r"logit_scale", "logit_scale"),
    ]


# --------------------------------------------------------------------------------------------------- sources


@dataclass
class ClipSource:
    """What was read from ``--checkpoint``."""

    path: Path
    kind: str  # one of the SOURCE_* descriptions
    state_dict: dict[str, torch.Tensor]
    torchscript: torch.jit.ScriptModule | None = None
    transformers_config: Any = None  # transformers.CLIPConfig for a transformers directory


def read_clip_source(path: str | Path, trust_torchscript: bool = False) -> ClipSource:
    """Open ``path`` as a TorchScript release, a state-dict file or a transformers ``CLIPModel`` directory.

    A TorchScript release is read without running its code (``torchscript`` is then ``None``); with
    ``trust_torchscript`` it is opened with ``torch.jit.load`` and its module kept (to probe heads and verify)."""
    path = Path(path)
    if path.is_dir():
        return _read_transformers_directory(path)
    checkpoint = read_checkpoint(path, trust_torchscript=trust_torchscript)
    if checkpoint.module is not None:
        # the released archives are traced in half precision (often on CUDA); run them in float32 on the CPU
        module = prepare_torchscript_for_cpu(checkpoint.module)
        return ClipSource(path, SOURCE_OPENAI_JIT, checkpoint.state_dict, torchscript=module)
    if checkpoint.container == "torchscript":
        return ClipSource(path, SOURCE_OPENAI_JIT, checkpoint.state_dict)
    return ClipSource(path, SOURCE_OPENAI_STATE_DICT, checkpoint.state_dict)


def _read_transformers_directory(path: Path) -> ClipSource:
    expected = "a transformers CLIPModel directory (written by save_pretrained) or a checkpoint file"
    read_transformers_config(path, "clip", expected)
    from transformers import CLIPConfig

    hf_config = CLIPConfig.from_pretrained(str(path))
    return ClipSource(path, SOURCE_TRANSFORMERS, read_transformers_weights(path), transformers_config=hf_config)


# --------------------------------------------------------------------------------------------------- configuration


def _count_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({match.group(1) for key in state_dict if (match := regex.match(key))})


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        hint = ""
        if any(name.startswith(("text_model.", "vision_model.")) for name in state_dict):
            hint = " It looks like transformers weights: pass the CLIPModel directory (with config.json) instead."
        raise ConversionError(
            f"Missing key {key!r}: the checkpoint is not a complete OpenAI-layout CLIP state dict "
            f"(it has {len(state_dict)} keys, e.g. {sorted(state_dict)[:5]}).{hint}"
        )
    return state_dict[key]


def infer_original_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The original ``CLIP(...)`` constructor arguments, inferred from shapes exactly as ``build_model`` does."""
    vit = "visual.proj" in state_dict
    if vit:
        width = _require(state_dict, "visual.conv1.weight").shape[0]
        patch = _require(state_dict, "visual.conv1.weight").shape[-1]
        grid = round((_require(state_dict, "visual.positional_embedding").shape[0] - 1) ** 0.5)
        block_pattern = r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$"
        vision_layers: int | list[int] = _count_indices(state_dict, block_pattern)
        image_resolution = patch * grid
    else:
        vision_layers = [_count_indices(state_dict, rf"visual\.layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4)]
        width = _require(state_dict, "visual.layer1.0.conv1.weight").shape[0]
        grid = round((_require(state_dict, "visual.attnpool.positional_embedding").shape[0] - 1) ** 0.5)
        patch = None
        image_resolution = grid * 32
    text_width = _require(state_dict, "ln_final.weight").shape[0]
    return {
        "embed_dim": _require(state_dict, "text_projection").shape[1],
        "image_resolution": image_resolution,
        "vision_layers": vision_layers,
        "vision_width": width,
        "vision_patch_size": patch,
        "context_length": _require(state_dict, "positional_embedding").shape[0],
        "vocab_size": _require(state_dict, "token_embedding.weight").shape[0],
        "transformer_width": text_width,
        "transformer_heads": text_width // OPENAI_HEAD_DIM,
        "transformer_layers": _count_indices(state_dict, r"transformer\.resblocks\.(\d+)\."),
    }


def _intermediate_size(state_dict: Mapping[str, torch.Tensor], block_prefix: str, width: int) -> int:
    fc = state_dict.get(f"{block_prefix}0.mlp.c_fc.weight")
    return fc.shape[0] if fc is not None else 4 * width


def openai_clip_config(
    state_dict: Mapping[str, torch.Tensor], original: Mapping[str, Any], eos_token_id: int, bos_token_id: int
) -> VlpClipConfig:
    """``VlpClipConfig`` of an OpenAI-layout checkpoint from its (inferred, possibly overridden) constructor args."""
    vision_layers = original["vision_layers"]
    image = original["image_resolution"]
    width = original["vision_width"]
    if isinstance(vision_layers, (list, tuple)):
        vision: dict[str, Any] = dict(
            architecture="resnet", resnet_layers=list(vision_layers), resnet_width=width, image_size=image,
            resnet_heads=original.get("vision_heads"),
        )
    else:
        patch = original["vision_patch_size"]
        if not patch:
            raise ConversionError("A ViT image tower needs vision_patch_size; set it in --original-config.")
        vision = dict(
            architecture="vit",
            hidden_size=width,
            intermediate_size=_intermediate_size(state_dict, "visual.transformer.resblocks.", width),
            num_hidden_layers=vision_layers,
            num_attention_heads=original.get("vision_heads") or width // OPENAI_HEAD_DIM,
            patch_size=patch,
            image_size=image,
        )
        _check_heads("vision", width, vision["num_attention_heads"], "vision_heads")
    text_width = original["transformer_width"]
    _check_heads("text", text_width, original["transformer_heads"], "transformer_heads")
    vocab_size = original["vocab_size"]
    for name, token_id in (("end-of-text", eos_token_id), ("start-of-text", bos_token_id)):
        if not 0 <= token_id < vocab_size:
            raise ConversionError(f"The {name} id {token_id} is outside the checkpoint's vocabulary of {vocab_size}.")
    text = dict(
        vocab_size=vocab_size,
        hidden_size=text_width,
        intermediate_size=_intermediate_size(state_dict, "transformer.resblocks.", text_width),
        num_hidden_layers=original["transformer_layers"],
        num_attention_heads=original["transformer_heads"],
        max_position_embeddings=original["context_length"],
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        pad_token_id=0,
    )
    return _make_config(original["embed_dim"], vision, text)


def _check_heads(tower: str, width: int, heads: int, key: str) -> None:
    if not heads or width % heads:
        raise ConversionError(
            f"The {tower} tower's width {width} cannot be split into {heads} attention heads (OpenAI's default is "
            f"width // {OPENAI_HEAD_DIM}); pass --original-config with the right {key!r}."
        )


def _make_config(projection_dim: int, vision: dict[str, Any], text: dict[str, Any]) -> VlpClipConfig:
    try:
        return VlpClipConfig(projection_dim=projection_dim, vision_config=vision, text_config=text)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ConversionError(f"The inferred configuration is invalid: {error}") from error


def transformers_clip_config(hf_config: Any, eos_token_id: int | None, bos_token_id: int | None) -> VlpClipConfig:
    """``VlpClipConfig`` equal to a transformers ``CLIPConfig`` (token ids from the tokenizer when given).

    Configs written before transformers PR #24773 say ``eos_token_id == 2`` and pool by ``argmax``; with OpenAI's
    vocabulary that is the last id, so the end/start-of-text ids become ``vocab_size - 1`` / ``vocab_size - 2``.
    """
    text, vision = hf_config.text_config, hf_config.vision_config
    if eos_token_id is None:
        if text.eos_token_id == 2:
            eos_token_id, bos_token_id = text.vocab_size - 1, text.vocab_size - 2
            logger.info(
                f"Legacy text config (eos_token_id 2, argmax pooling): using end-of-text id {eos_token_id} and "
                f"start-of-text id {bos_token_id}, the OpenAI layout."
            )
        else:
            eos_token_id, bos_token_id = text.eos_token_id, text.bos_token_id
    for name, token_id in (("end-of-text", eos_token_id), ("start-of-text", bos_token_id)):
        if token_id is None or not 0 <= token_id < text.vocab_size:
            raise ConversionError(f"The {name} id {token_id} is outside the vocabulary of {text.vocab_size}.")
    return _make_config(
        hf_config.projection_dim,
        dict(architecture="vit", **config_fields(vision, *TOWER_SIZES, "patch_size", "image_size", "num_channels")),
        dict(
            **config_fields(text, *TOWER_SIZES, "vocab_size", "max_position_embeddings"),
            eos_token_id=eos_token_id,
            bos_token_id=bos_token_id,
            pad_token_id=0,
        ),
    )


# --------------------------------------------------------------------------------------------------- inputs, outputs


def random_inputs(config: VlpClipConfig, batch: int = VERIFY_BATCH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch at the model's resolution and full-context token ids ending in EOT at random positions.

    Token ids before EOT are drawn below the EOT id (so ``argmax`` and first-EOT pooling agree), zeros after it.
    """
    generator = torch.Generator().manual_seed(seed)
    vision, text = config.vision_config, config.text_config
    pixel_values = torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    length, eot = text.max_position_embeddings, text.eos_token_id
    input_ids = torch.randint(0, max(eot, 1), (batch, length), generator=generator)
    eot_positions = torch.randint(1, length, (batch,), generator=generator)
    positions = torch.arange(length)[None, :]
    input_ids = input_ids.masked_fill(positions > eot_positions[:, None], 0)
    input_ids[torch.arange(batch), eot_positions] = eot
    return pixel_values, input_ids


@torch.no_grad()
def converted_outputs(
    model: VlpClipModel, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    output = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=False)
    return {
        "image_features": model.get_image_features(pixel_values).pooler_output,
        "text_features": model.get_text_features(input_ids).pooler_output,
        "logits_per_image": output.logits_per_image,
        "logits_per_text": output.logits_per_text,
    }


@torch.no_grad()
def torchscript_outputs(
    module: torch.jit.ScriptModule, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    logits_per_image, logits_per_text = module(pixel_values, input_ids)
    return {
        "image_features": module.encode_image(pixel_values),
        "text_features": module.encode_text(input_ids),
        "logits_per_image": logits_per_image,
        "logits_per_text": logits_per_text,
    }


def _pooled(features: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output holds the projected features
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@torch.no_grad()
def transformers_outputs(
    directory: Path, pixel_values: torch.Tensor, input_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(directory), dtype=torch.float32).eval()
    output = model(input_ids=input_ids, pixel_values=pixel_values)
    return {
        "image_features": _pooled(model.get_image_features(pixel_values=pixel_values)),
        "text_features": _pooled(model.get_text_features(input_ids=input_ids)),
        "logits_per_image": output.logits_per_image,
        "logits_per_text": output.logits_per_text,
    }


# --------------------------------------------------------------------------------------------------- heads probe


@torch.no_grad()
def probe_text_heads(
    module: torch.jit.ScriptModule, mapped: MappedStateDict, text_config: VlpClipTextConfig, seed: int = 0
) -> int:
    """The text head count whose converted text tower reproduces the TorchScript ``encode_text``.

    Head counts are not visible in tensor shapes but are baked into the traced graph; running both towers on the
    same tokens tells them apart (a wrong count changes every feature). ``width // 64`` is tried first.
    """
    width = text_config.hidden_size
    default = width // OPENAI_HEAD_DIM
    candidates = [heads for heads in range(1, width + 1) if width % heads == 0]
    candidates.sort(key=lambda heads: (heads != default, abs(math.log(heads / max(default, 1)))))
    generator = torch.Generator().manual_seed(seed)
    length, eot = text_config.max_position_embeddings, text_config.eos_token_id
    input_ids = torch.randint(0, max(eot, 1), (VERIFY_BATCH, length), generator=generator)
    input_ids[:, -1] = eot
    reference = module.encode_text(input_ids).float()
    tolerance = VERIFY_ATOL * max(1.0, float(reference.abs().max()))
    text_weights = filter_prefix(mapped.tensors, "text_model.")
    projection = mapped.tensors["text_projection.weight"].float()
    for heads in candidates:
        config = copy.deepcopy(text_config)
        config.num_attention_heads = heads
        tower = VlpClipTextModel(config).eval()
        try:
            tower.load_state_dict({key: value.float() for key, value in text_weights.items()}, strict=True)
        except RuntimeError as error:  # shapes that do not fit: the strict check names them all
            check_mapped_state_dict(
                MappedStateDict(text_weights, {key: [key] for key in text_weights}, {}), tower.state_dict()
            )
            raise ConversionError(f"The text tower does not fit the checkpoint: {str(error).splitlines()[0]}") from error
        features = tower(input_ids).pooler_output @ projection.t()
        if float((features - reference).abs().max()) <= tolerance:
            return heads
    raise ConversionError(
        f"No text head count (tried {candidates}) reproduces the TorchScript archive's encode_text; the archive's "
        "text tower differs from OpenAI's CLIP. Pass --original-config if the sizes are known."
    )


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class ClipConversion:
    """Result of :func:`convert_clip_checkpoint`."""

    model: VlpClipModel
    processor: VlpClipProcessor | None
    source: str
    max_abs_diffs: dict[str, float] | None  # None when no verification ran
    verification_note: str
    output: Path | None = None


def _tokenizer_for(source: ClipSource, tokenizer: str | Path | None, context_length: int | None) -> Any:
    if tokenizer is not None:
        path = Path(tokenizer)
        if not path.exists():
            raise ConversionError(
                f"Tokenizer not found: {path}. Pass a BPE merges file (.txt.gz) or a tokenizer directory."
            )
        try:
            return load_clip_tokenizer(path, **({"model_max_length": context_length} if context_length else {}))
        except (OSError, ValueError) as error:
            raise ConversionError(f"Cannot load the tokenizer from {path}: {error}") from error
    if source.kind == SOURCE_TRANSFORMERS and any((source.path / name).is_file() for name in TOKENIZER_FILES):
        try:
            return load_clip_tokenizer(source.path)
        except (OSError, ValueError) as error:
            raise ConversionError(f"Cannot load the tokenizer saved in {source.path}: {error}") from error
    return None


def _check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's vocabulary has {vocab_size}; pass the "
            "merges file (or tokenizer) the checkpoint was trained with."
        )
    if tokenizer.eos_token_id is None or tokenizer.bos_token_id is None:
        raise ConversionError("The tokenizer has no start/end-of-text tokens; pass a CLIP tokenizer.")


def build_processor(tokenizer: Any, config: VlpClipConfig) -> VlpClipProcessor:
    """Processor reproducing the original preprocessing at the model's resolution and context length."""
    size = config.vision_config.image_size
    image_processor = VlpClipImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return VlpClipProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        context_length=config.text_config.max_position_embeddings,
    )


def _build_config(
    source: ClipSource, mapped: MappedStateDict, original_config: Mapping[str, Any] | None, tokenizer: Any
) -> VlpClipConfig:
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    bos = tokenizer.bos_token_id if tokenizer is not None else None
    if source.kind == SOURCE_TRANSFORMERS:
        return transformers_clip_config(source.transformers_config, eos, bos)
    original = {**infer_original_config(source.state_dict), **(original_config or {})}
    vocab_size = original["vocab_size"]
    eos, bos = (vocab_size - 1, vocab_size - 2) if eos is None else (eos, bos)
    heads_given = bool(original_config and "transformer_heads" in original_config)
    if not heads_given and source.torchscript is not None:
        probe_original = {**original, "transformer_heads": 1}
        probe_config = openai_clip_config(source.state_dict, probe_original, eos, bos)
        original["transformer_heads"] = probe_text_heads(source.torchscript, mapped, probe_config.text_config)
        logger.info(
            f"Text heads: {original['transformer_heads']} (found by running the TorchScript archive's encode_text; "
            "head counts are not stored in tensor shapes)."
        )
    elif not heads_given:
        probe = (
            " (or --trust-torchscript to probe the archive by running it)" if source.kind == SOURCE_OPENAI_JIT else ""
        )
        logger.warning(
            f"Text heads: {original['transformer_heads']} = width // {OPENAI_HEAD_DIM}, as OpenAI's build_model "
            "assumes; head counts are not stored in tensor shapes. Pass --original-config with 'transformer_heads'"
            f"{probe} if the model was built with another count."
        )
    return openai_clip_config(source.state_dict, original, eos, bos)


def convert_clip_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    verify: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    trust_torchscript: bool = False,
    allow_non_finite: bool = False,
) -> ClipConversion:
    """Convert a CLIP checkpoint into a ``VlpClipModel`` (+ processor); write it to ``output`` when given.

    ``original_config`` is a path to (or a dict of) the original ``CLIP(...)`` constructor arguments; ``tokenizer``
    an original BPE merges file or a transformers tokenizer directory. ``verify`` runs the source model and the
    converted one on the same random inputs and raises :class:`ConversionError` above ``1e-4``; against a
    TorchScript release it needs ``trust_torchscript`` (the archive is run). Tensors holding inf/NaN are refused
    unless ``allow_non_finite``. Nothing is written unless every check passes.
    """
    inputs = input_paths(checkpoint, original_config, tokenizer)
    if output is not None:
        check_output_dir(output, overwrite, inputs)
    source = read_clip_source(checkpoint, trust_torchscript=trust_torchscript)
    logger.info(f"Source: {source.kind} {source.path} ({len(source.state_dict)} tensors)")
    if source.kind != SOURCE_TRANSFORMERS:
        check_family(source.state_dict, "clip", source.path)
    check_source_tensors(source.state_dict, source.path, allow_non_finite)
    if verify and source.kind == SOURCE_OPENAI_JIT and source.torchscript is None:
        raise ConversionError(
            f"--verify runs the TorchScript archive {source.path}, which is read without running its code by "
            "default; pass --trust-torchscript to verify against it (only for archives you trust), or drop --verify."
        )
    if original_config is not None:
        if source.kind == SOURCE_TRANSFORMERS:
            raise ConversionError(
                "--original-config applies to OpenAI-layout checkpoints; a transformers directory has its own "
                "config.json."
            )
        if not isinstance(original_config, Mapping):
            described = f"Original config {original_config}"
            original_config = read_original_config(
                original_config, "CLIP(...) arguments", allowed_keys=ORIGINAL_CONFIG_KEYS
            )
        else:
            described = "original_config"
        check_config_fields(original_config, ORIGINAL_CONFIG_FIELDS, described)
    context_length = None
    if source.kind != SOURCE_TRANSFORMERS:
        context_length = _require(source.state_dict, "positional_embedding").shape[0]
    clip_tokenizer = _tokenizer_for(source, tokenizer, context_length)

    if source.kind == SOURCE_TRANSFORMERS:
        rules = transformers_rules()
    else:
        rules = openai_rules("vit" if "visual.proj" in source.state_dict else "resnet")
    mapped = map_state_dict(source.state_dict, rules)
    config = _build_config(source, mapped, original_config, clip_tokenizer)
    if clip_tokenizer is not None:
        _check_tokenizer(clip_tokenizer, config.text_config.vocab_size)
    model = VlpClipModel(config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    logger.info(f"Mapped {len(mapped.tensors)} tensors; dropped {sorted(mapped.dropped) or 'none'}.")

    differences, note = None, "not run (pass --verify)"
    if verify:
        differences, note = _verify(source, model)
    processor = build_processor(clip_tokenizer, config) if clip_tokenizer is not None else None
    if processor is None:
        logger.warning("No tokenizer given (--tokenizer): writing the model without a processor.")

    result = ClipConversion(model, processor, source.kind, differences, note)
    if output is not None:
        card = provenance(result, source, command or _api_call(checkpoint, original_config, tokenizer, verify))
        result.output = write_conversion(output, model, processor, card, overwrite, inputs)
    return result


def _verify(source: ClipSource, model: VlpClipModel) -> tuple[dict[str, float] | None, str]:
    pixel_values, input_ids = random_inputs(model.config)
    if source.kind == SOURCE_OPENAI_STATE_DICT:
        note = "skipped: a plain state dict has no runnable source model (verify against the TorchScript release)"
        logger.warning(f"Verification {note}.")
        return None, note
    if source.kind == SOURCE_OPENAI_JIT:
        reference = torchscript_outputs(source.torchscript, pixel_values, input_ids)
        against = "the TorchScript archive (float32, CPU)"
    else:
        reference = transformers_outputs(source.path, pixel_values, input_ids)
        against = "transformers CLIPModel"
    differences = check_differences(
        max_abs_differences(reference, converted_outputs(model, pixel_values, input_ids)), VERIFY_ATOL, against
    )
    return differences, f"passed against {against} (atol {VERIFY_ATOL:g}): max |diff| {format_differences(differences)}"


def _api_call(checkpoint: Any, original_config: Any, tokenizer: Any, verify: bool) -> str:
    arguments = [repr(Path(checkpoint).name)]
    if original_config is not None:
        arguments.append(f"original_config={dict(original_config)!r}")
    if tokenizer is not None:
        arguments.append(f"tokenizer={Path(tokenizer).name!r}")
    if verify:
        arguments.append("verify=True")
    return f"conversion.convert_clip.convert_clip_checkpoint({', '.join(arguments)}, output=...)"


def provenance(result: ClipConversion, source: ClipSource, command: str) -> str:
    """The conversion's provenance paragraph for the CLIP model card (``model_cards/clip.md``)."""
    processor_line = (
        "The processor tokenises like the original `clip.tokenize(..., truncate=True)` and preprocesses images like "
        "`clip._transform`."
        if result.processor is not None
        else "No tokenizer was given, so this folder holds the model only (convert again with `--tokenizer`)."
    )
    return (
        f"Converted from `{source.path.name}` ({source.kind}); weights upcast to float32, `logit_scale` carried over "
        f"exactly.\n\n```bash\n{command}\n```\n\nVerification: {result.verification_note}. {processor_line}"
    )


# --------------------------------------------------------------------------------------------------- CLI


OPTION_HELP = {
    "checkpoint": "TorchScript release, state-dict file or transformers CLIPModel directory",
    "original_config": "JSON of the original CLIP(...) constructor arguments (sizes, text heads)",
    "tokenizer": "original BPE merges file (.txt.gz) or a transformers tokenizer directory",
    "verify": "compare with the source model on random inputs (atol 1e-4)",
}


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = converter_parser(__doc__, OPTION_HELP, prog=prog)
    parser.add_argument(
        "--trust-torchscript", action="store_true",
        help="open a TorchScript --checkpoint with torch.jit.load, which RUNS code stored in the archive (only for "
        "archives you trust); needed to probe the text head count and for --verify against it. Without it the "
        "archive's tensors are read from its records and nothing in it is executed",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, program: str = "python conversion/convert_clip.py") -> ClipConversion:
    """``convert_clip.py`` / ``hf-vlp convert clip``: convert as the command line says."""
    args = parse_args(argv, program)
    return convert_clip_checkpoint(**converter_options(args, argv, program), trust_torchscript=args.trust_torchscript)


if __name__ == "__main__":
    sys.exit(run_cli(main))
