"""Convert an original ALBEF pretraining checkpoint (salesforce/ALBEF ``{'model': state_dict, ...}``) to hf_vlp's
``VlpAlbefForMaskedLM`` (every online weight: ViT, BERT text/fusion encoder, MLM head, projections, ITM head, ``temp``)
plus a BERT tokenizer.

The momentum towers (``*_m``) and the feature queues are dropped explicitly and reported: the pretraining head that
uses them is not part of hf_vlp yet. Sizes are inferred from tensor shapes; head counts are not stored in shapes, so
they default to ``width // 64`` (ViT-B/16 and BERT-base) unless ``--original-config`` (the original yaml keys as JSON,
with the BERT json content under ``bert_config``) gives them.

    python conversion/convert_albef.py --checkpoint ALBEF.pth --output out/albef-base \
        --original-config pretrain_config.json --tokenizer vocab.txt
"""

from __future__ import annotations

import argparse
import json
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
from hf_vlp.models.albef.configuration_albef import VlpAlbefConfig
from hf_vlp.models.albef.modeling_albef import VlpAlbefForMaskedLM

from conversion.common import (
    ConversionError,
    Drop,
    Fuse,
    MappingRule,
    Rename,
    check_output_dir,
    command_line,
    load_mapped_state_dict,
    map_state_dict,
    read_checkpoint,
    run_cli,
    write_output_dir,
)

logger = logging.getLogger("conversion.albef")

HEAD_DIM = 64  # ViT-B/16 and BERT-base: 768 / 12
# the original hard-codes ViT-B/16 in every model constructor; the vit_* keys (reference fixtures) override it
VIT_DEFAULTS = {"vit_patch_size": 16, "vit_depth": 12, "vit_num_heads": 12, "vit_mlp_ratio": 4}
SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
MOMENTUM_PREFIXES = ("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m")
# tied copies in the original: (copy, source) must hold the same values
TIED_KEYS = (
    ("text_encoder.cls.predictions.decoder.weight", "text_encoder.bert.embeddings.word_embeddings.weight"),
    ("text_encoder.cls.predictions.decoder.bias", "text_encoder.cls.predictions.bias"),
)


# --------------------------------------------------------------------------------------------------- key rules


def _flatten(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1)


def _squeeze_batch(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[0]


def albef_rules() -> list[MappingRule]:
    """Original ``model_pretrain.ALBEF`` names -> ``VlpAlbefForMaskedLM`` names (online towers)."""
    vit, text, p = "albef.vision_model.transformer.", "albef.text_model.transformer.", r"(?P<p>weight|bias)"
    block, layer = r"visual_encoder\.blocks\.(?P<i>\d+)\.", r"text_encoder\.bert\.encoder\.layer\.(?P<i>\d+)\."
    vit_layer, text_layer = vit + r"encoder.layers.\g<i>.", text + r"encoder.layers.\g<i>."
    momentum = "|".join(MOMENTUM_PREFIXES)
    return [
        Drop(rf"(?:{momentum})\..+", "momentum tower (the momentum-distillation pretraining head is not ported yet)"),
        Drop(r"image_queue|text_queue|queue_ptr", "feature queue of momentum distillation (not ported yet)"),
        Drop(r"text_encoder\.bert\.embeddings\.position_ids", "index buffer; positions are computed"),
        Drop(r"text_encoder\.cls\.predictions\.bias", "same tensor as cls.predictions.decoder.bias (tied)"),
        Rename(r"temp", "albef.temp"),
        Rename(r"(vision_proj|text_proj|itm_head)\.(weight|bias)", r"albef.\1.\2"),
        # ViT (timm layout)
        Rename(r"visual_encoder\.cls_token", vit + "class_embedding", _flatten),
        Rename(r"visual_encoder\.pos_embed", vit + "position_embedding", _squeeze_batch),
        Rename(r"visual_encoder\.patch_embed\.proj\." + p, vit + r"patch_embed.\g<p>"),
        Rename(r"visual_encoder\.norm\." + p, vit + r"norm_post.\g<p>"),
        Rename(block + r"(?P<m>norm1|norm2|attn\.qkv|mlp\.fc1|mlp\.fc2)\." + p, vit_layer + r"\g<m>.\g<p>"),
        Rename(block + r"attn\.proj\." + p, vit_layer + r"attn.out_proj.\g<p>"),
        # BERT embeddings and layers (xbert layout)
        Rename(
            r"text_encoder\.bert\.embeddings\.(?P<e>word|position|token_type)_embeddings\.weight",
            text + r"embeddings.\g<e>_embeddings.weight",
        ),
        Rename(r"text_encoder\.bert\.embeddings\.LayerNorm\." + p, text + r"embeddings.norm.\g<p>"),
        Fuse(layer + r"attention\.self\.(?P<part>query|key|value)\." + p, text_layer + r"attn.qkv.\g<p>",
             parts=("query", "key", "value")),
        Rename(layer + r"attention\.output\.dense\." + p, text_layer + r"attn.out_proj.\g<p>"),
        Rename(layer + r"attention\.output\.LayerNorm\." + p, text_layer + r"norm1.\g<p>"),
        Rename(layer + r"crossattention\.self\.query\." + p, text_layer + r"cross_attn.q.\g<p>"),
        Fuse(layer + r"crossattention\.self\.(?P<part>key|value)\." + p, text_layer + r"cross_attn.kv.\g<p>",
             parts=("key", "value")),
        Rename(layer + r"crossattention\.output\.dense\." + p, text_layer + r"cross_attn.out_proj.\g<p>"),
        Rename(layer + r"crossattention\.output\.LayerNorm\." + p, text_layer + r"norm_cross.\g<p>"),
        Rename(layer + r"intermediate\.dense\." + p, text_layer + r"mlp.fc1.\g<p>"),
        Rename(layer + r"output\.dense\." + p, text_layer + r"mlp.fc2.\g<p>"),
        Rename(layer + r"output\.LayerNorm\." + p, text_layer + r"norm2.\g<p>"),
        # MLM head (decoder.weight is tied to the word embeddings in both layouts)
        Rename(r"text_encoder\.cls\.predictions\.transform\.dense\." + p, r"mlm_head.dense.\g<p>"),
        Rename(r"text_encoder\.cls\.predictions\.transform\.LayerNorm\." + p, r"mlm_head.norm.\g<p>"),
        Rename(r"text_encoder\.cls\.predictions\.decoder\." + p, r"mlm_head.decoder.\g<p>"),
    ]


def check_ties(state_dict: Mapping[str, torch.Tensor]) -> None:
    """The original ties the MLM decoder to the word embeddings and its bias to ``predictions.bias``; a checkpoint
    whose copies differ cannot be represented with one tensor each."""
    for copy, source in TIED_KEYS:
        if copy in state_dict and source in state_dict and not torch.equal(state_dict[copy], state_dict[source]):
            raise ConversionError(
                f"{copy} differs from {source}, which the original ties to it; hf_vlp keeps one tensor for both. "
                "The checkpoint was not saved from ALBEF's BertForMaskedLM (or was edited)."
            )


# --------------------------------------------------------------------------------------------------- configuration


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(
            f"Missing key {key!r}: the checkpoint is not an ALBEF pretraining state dict (models/model_pretrain.py) "
            f"(it has {len(state_dict)} keys, e.g. {sorted(state_dict)[:5]})."
        )
    return state_dict[key]


def _layer_indices(state_dict: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match.group(1)) for key in state_dict if (match := regex.match(key))})


def read_original_config(path: str | Path) -> dict[str, Any]:
    """Load ``--original-config``: the original yaml keys as a JSON object (``bert_config`` = the json content)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Original config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConversionError(f"Original config {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConversionError(f"Original config {path} must be a JSON object of the original yaml keys.")
    if "bert_config" in config and not isinstance(config["bert_config"], dict):
        raise ConversionError(
            f"'bert_config' in {path} must hold the CONTENT of the BERT json (e.g. configs/config_bert.json), "
            f"not {config['bert_config']!r}."
        )
    return config


def albef_config(state_dict: Mapping[str, torch.Tensor], original: Mapping[str, Any]) -> VlpAlbefConfig:
    """``VlpAlbefConfig`` from tensor shapes, with head counts and training settings from the original config."""
    bert = dict(original.get("bert_config") or {})
    vit = {key: original.get(key, default) for key, default in VIT_DEFAULTS.items()}
    width = _require(state_dict, "visual_encoder.cls_token").shape[-1]
    patch = _require(state_dict, "visual_encoder.patch_embed.proj.weight").shape[-1]
    grid = round((_require(state_dict, "visual_encoder.pos_embed").shape[1] - 1) ** 0.5)
    vision_layers = _layer_indices(state_dict, r"visual_encoder\.blocks\.(\d+)\.")
    words = _require(state_dict, "text_encoder.bert.embeddings.word_embeddings.weight")
    text_width = words.shape[1]
    text_layers = _layer_indices(state_dict, r"text_encoder\.bert\.encoder\.layer\.(\d+)\.")
    fusion_layers = _layer_indices(state_dict, r"text_encoder\.bert\.encoder\.layer\.(\d+)\.crossattention\.")
    if patch != vit["vit_patch_size"] and "vit_patch_size" in original:
        raise ConversionError(f"vit_patch_size {vit['vit_patch_size']} contradicts the checkpoint's patch size {patch}")
    vision = dict(
        hidden_size=width,
        intermediate_size=_require(state_dict, "visual_encoder.blocks.0.mlp.fc1.weight").shape[0],
        num_hidden_layers=len(vision_layers),
        num_attention_heads=vit["vit_num_heads"] if "vit_num_heads" in original else width // HEAD_DIM,
        image_size=original.get("image_res", patch * grid),
        patch_size=patch,
    )
    text = dict(
        vocab_size=words.shape[0],
        hidden_size=text_width,
        intermediate_size=_require(state_dict, "text_encoder.bert.encoder.layer.0.intermediate.dense.weight").shape[0],
        num_hidden_layers=len(text_layers),
        num_attention_heads=bert.get("num_attention_heads", text_width // HEAD_DIM),
        max_position_embeddings=_require(state_dict, "text_encoder.bert.embeddings.position_embeddings.weight").shape[0],
        type_vocab_size=_require(state_dict, "text_encoder.bert.embeddings.token_type_embeddings.weight").shape[0],
        fusion_layer=fusion_layers[0] if fusion_layers else len(text_layers),
        hidden_act=bert.get("hidden_act", "gelu"),
        layer_norm_eps=bert.get("layer_norm_eps", 1e-12),
        hidden_dropout_prob=bert.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=bert.get("attention_probs_dropout_prob", 0.1),
        pad_token_id=bert.get("pad_token_id", 0),
    )
    if "fusion_layer" in bert and bert["fusion_layer"] != text["fusion_layer"]:
        raise ConversionError(
            f"bert_config.fusion_layer {bert['fusion_layer']} contradicts the checkpoint, whose first "
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
    try:
        return VlpAlbefConfig(
            embed_dim=_require(state_dict, "vision_proj.weight").shape[0],
            vision_config=vision,
            text_config=text,
            **settings,
        )
    except (StrictDataclassError, ValueError, TypeError) as error:
        raise ConversionError(f"The resulting configuration is invalid: {error}") from error


# --------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path, vocab_size: int) -> Any:
    """A lower-casing ``BertTokenizer`` from the original WordPiece ``vocab.txt``; special tokens found by name.

    ALBEF feeds ``[CLS] tokens`` without a trailing ``[SEP]``: drop the last id of single sentences (the processor's
    job), or keep it when the model is fine-tuned from here with the stock format.
    """
    from transformers import BertTokenizer

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Tokenizer not found: {path}. Pass the WordPiece vocab.txt the checkpoint was trained with.")
    tokens = path.read_text(encoding="utf-8").splitlines()
    missing = [token for token in SPECIAL_TOKENS.values() if token not in tokens]
    if missing:
        raise ConversionError(f"{path} lacks the special tokens {missing}; pass a BERT WordPiece vocab.txt.")
    if len(tokens) != vocab_size:
        raise ConversionError(
            f"The tokenizer has {len(tokens)} tokens but the checkpoint's vocabulary has {vocab_size}; pass the "
            "vocab.txt the checkpoint was trained with."
        )
    return BertTokenizer(vocab=str(path), do_lower_case=True, **SPECIAL_TOKENS)


# --------------------------------------------------------------------------------------------------- conversion


@dataclass
class AlbefConversion:
    """Result of :func:`convert_albef_checkpoint`."""

    model: VlpAlbefForMaskedLM
    tokenizer: Any
    dropped: dict[str, str]
    output: Path | None = None


def convert_albef_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    original_config: str | Path | Mapping[str, Any] | None = None,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> AlbefConversion:
    """Convert an ALBEF pretraining checkpoint to ``VlpAlbefForMaskedLM`` (+ tokenizer); write it to ``output``.

    Every source key is mapped or explicitly dropped (momentum towers, queues, ``position_ids``, the tied bias copy)
    and every target key filled, or a :class:`ConversionError` names the keys and nothing is written.
    """
    if output is not None:
        check_output_dir(output, overwrite)
    source = read_checkpoint(checkpoint, allow_torchscript=False)
    state_dict = source.state_dict
    logger.info(f"Source: {source.path} ({len(state_dict)} tensors)")
    if original_config is not None and not isinstance(original_config, Mapping):
        original_config = read_original_config(original_config)
    check_ties(state_dict)
    mapped = map_state_dict(state_dict, albef_rules())
    config = albef_config(state_dict, original_config or {})
    bert_tokenizer = load_tokenizer(tokenizer, config.text_config.vocab_size) if tokenizer is not None else None
    if bert_tokenizer is not None:
        config.text_config.pad_token_id = bert_tokenizer.pad_token_id
    model = VlpAlbefForMaskedLM(config)
    load_mapped_state_dict(model, mapped)
    model.eval()
    momentum = sorted(key for key in mapped.dropped if key.startswith(MOMENTUM_PREFIXES) or "queue" in key)
    logger.info(
        f"Mapped {len(mapped.tensors)} tensors; dropped {len(momentum)} momentum/queue tensors (momentum "
        f"distillation is not ported yet) and {sorted(set(mapped.dropped) - set(momentum))}."
    )
    if bert_tokenizer is None:
        logger.warning("No tokenizer given (--tokenizer): writing the model without one.")
    result = AlbefConversion(model, bert_tokenizer, mapped.dropped)
    if output is not None:
        readme = provenance(source.path.name, command or f"convert_albef_checkpoint({source.path.name!r}, ...)", momentum)
        result.output = write_output_dir(output, lambda directory: _write(directory, result, readme), overwrite)
        logger.info(f"Wrote {result.output}")
    return result


def provenance(checkpoint_name: str, command: str, momentum: Sequence[str]) -> str:
    return (
        "# ALBEF (hf_vlp)\n\n"
        f"Converted from `{checkpoint_name}` (salesforce/ALBEF pretraining checkpoint) with\n\n```bash\n{command}\n```\n\n"
        "Online towers, MLM head, projections, ITM head and `temp` carried over exactly; "
        f"{len(momentum)} momentum-tower/queue tensors were dropped (momentum distillation is not ported yet). "
        "Load with `AutoModel.from_pretrained(DIR)` (encoders) or `VlpAlbefForMaskedLM.from_pretrained(DIR)` after "
        "`import hf_vlp`. ALBEF's text format is `[CLS] tokens` without a trailing `[SEP]`.\n"
    )


def _write(directory: Path, result: AlbefConversion, readme: str) -> None:
    result.model.save_pretrained(directory)
    if result.tokenizer is not None:
        result.tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text(readme, encoding="utf-8")


# --------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="original {'model': state_dict} file (e.g. ALBEF.pth)")
    parser.add_argument("--output", required=True, help="directory to write (must not exist or be empty unless --overwrite)")
    parser.add_argument("--original-config", help="JSON of the original yaml keys, BERT json content under bert_config")
    parser.add_argument("--tokenizer", help="the WordPiece vocab.txt the checkpoint was trained with")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> AlbefConversion:
    args = parse_args(argv)
    return convert_albef_checkpoint(
        args.checkpoint,
        output=args.output,
        original_config=args.original_config,
        tokenizer=args.tokenizer,
        overwrite=args.overwrite,
        command=command_line(argv, program="python conversion/convert_albef.py"),
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
