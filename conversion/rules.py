"""Key-rule families shared by the converters: the original releases reuse the same building blocks.

- timm ViT (``models/vit.py`` of ALBEF and BLIP): :func:`timm_vit_rules`;
- BERT as ALBEF's ``xbert.py`` and BLIP's ``med.py`` store it: the MLM/LM prediction head
  (:func:`bert_prediction_head_rules`); its embeddings and layers are :mod:`hf_vlp.utils.key_rules`' families, which
  the text-tower initialiser shares;
- transformers' BLIP ViT names, which map one to one onto the timm ones: :func:`to_transformers_vit_name` and back
  (any such name table: :func:`prefix_renames` / :func:`rename_prefix`);
- CLIP's residual attention blocks, under OpenAI / open_clip or transformers names: :func:`clip_block_rules`.

Every separate q/k/v (or k/v) projection becomes one fused tensor through
:func:`hf_vlp.utils.checkpoints.fused_projection`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from hf_vlp.utils.checkpoints import PARAMETER as P
from hf_vlp.utils.checkpoints import Drop, MappingRule, Rename, fused_projection


def flatten(tensor: torch.Tensor) -> torch.Tensor:
    """``[1, 1, D]`` class token to ``[D]``."""
    return tensor.reshape(-1)


def squeeze_batch(tensor: torch.Tensor) -> torch.Tensor:
    """``[1, N, D]`` position embedding to ``[N, D]``."""
    return tensor[0]


def as_scalar(tensor: torch.Tensor) -> torch.Tensor:
    """``[1]`` queue pointer to a 0-d tensor."""
    return tensor.reshape(())


# --------------------------------------------------------------------------------------------------- timm ViT


def timm_vit_rules(source: str, target: str) -> list[MappingRule]:
    """A timm ``VisionTransformer`` under the regex prefix ``source`` (e.g. ``r"visual_encoder_m\\."``) ->
    ``{target}transformer.*`` of our ``VisionTransformer`` (the fused ``qkv`` is kept as it is)."""
    vit = target + "transformer."
    block, layer = source + r"blocks\.(?P<i>\d+)\.", vit + r"encoder.layers.\g<i>."
    return [
        Rename(source + r"cls_token", vit + "class_embedding", flatten),
        Rename(source + r"pos_embed", vit + "position_embedding", squeeze_batch),
        Rename(source + r"patch_embed\.proj\." + P, vit + r"patch_embed.\g<p>"),
        Rename(source + r"norm\." + P, vit + r"norm_post.\g<p>"),
        Rename(block + r"(?P<m>norm1|norm2|attn\.qkv|mlp\.fc1|mlp\.fc2)\." + P, layer + r"\g<m>.\g<p>"),
        Rename(block + r"attn\.proj\." + P, layer + r"attn.out_proj.\g<p>"),
    ]


# transformers' BLIP vision names <-> the original timm names, as ``{i}`` (layer) / ``{n}`` (norm) templates
_TRANSFORMERS_VIT_NAMES = (
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.", "vision_model.embeddings.patch_embedding."),
    ("visual_encoder.norm.", "vision_model.post_layernorm."),
    ("visual_encoder.blocks.{i}.norm{n}.", "vision_model.encoder.layers.{i}.layer_norm{n}."),
    ("visual_encoder.blocks.{i}.attn.proj.", "vision_model.encoder.layers.{i}.self_attn.projection."),
    ("visual_encoder.blocks.{i}.attn.qkv.", "vision_model.encoder.layers.{i}.self_attn.qkv."),
    ("visual_encoder.blocks.{i}.mlp.", "vision_model.encoder.layers.{i}.mlp."),
)


def prefix_renames(pairs: Sequence[tuple[str, str]], forward: bool) -> list[tuple[re.Pattern[str], str]]:
    """Compiled key-prefix renames from ``(first, second)`` name templates (``{i}`` a layer index, ``{n}`` a digit):
    first -> second when ``forward``, else second -> first; apply them with :func:`rename_prefix`."""
    renames = []
    for first, second in pairs:
        source, target = (first, second) if forward else (second, first)
        pattern = re.escape(source).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{n\}", r"(?P<n>\d)")
        renames.append((re.compile(pattern), target.replace("{i}", r"\g<i>").replace("{n}", r"\g<n>")))
    return renames


_TO_TRANSFORMERS = prefix_renames(_TRANSFORMERS_VIT_NAMES, forward=True)
_TO_ORIGINAL = prefix_renames(_TRANSFORMERS_VIT_NAMES, forward=False)


def rename_prefix(key: str, renames: Sequence[tuple[re.Pattern[str], str]]) -> str:
    """``key`` with its prefix renamed by the first of ``renames`` (:func:`prefix_renames`) that matches it; other
    keys unchanged."""
    for pattern, replacement in renames:
        match = pattern.match(key)
        if match:
            return match.expand(replacement) + key[match.end() :]
    return key


def to_transformers_vit_name(key: str) -> str:
    """An original BLIP/ALBEF ViT key under transformers' BLIP name (other keys unchanged)."""
    return rename_prefix(key, _TO_TRANSFORMERS)


def from_transformers_vit_name(key: str) -> str:
    """A transformers BLIP vision key under the original timm name (other keys unchanged)."""
    return rename_prefix(key, _TO_ORIGINAL)


# --------------------------------------------------------------------------------------------------- CLIP blocks


def clip_block_rules(source: str, target: str, fused_attention: bool) -> list[MappingRule]:
    """A stack of CLIP's pre-norm residual attention blocks ``{source}{i}.`` -> ``{target}{i}.``: OpenAI's (and
    open_clip's) names with a fused ``in_proj`` (``fused_attention``), or transformers' ``CLIPEncoderLayer`` names with
    separate ``q/k/v_proj``."""
    src, dst = re.escape(source) + r"(?P<i>\d+)\.", target + r"\g<i>."
    param = r"\.(?P<p>weight|bias)"
    if fused_attention:
        attention: list[MappingRule] = [
            Rename(src + r"attn\.in_proj_(?P<p>weight|bias)", dst + r"attn.qkv.\g<p>"),
            Rename(src + r"attn\.out_proj" + param, dst + r"attn.out_proj.\g<p>"),
        ]
        norm1, norm2, fc1, fc2 = r"ln_1", r"ln_2", r"mlp\.c_fc", r"mlp\.c_proj"
    else:
        attention = [
            fused_projection(src + r"self_attn\.", ("q_proj", "k_proj", "v_proj"), dst + "attn.qkv"),
            Rename(src + r"self_attn\.out_proj" + param, dst + r"attn.out_proj.\g<p>"),
        ]
        norm1, norm2, fc1, fc2 = r"layer_norm1", r"layer_norm2", r"mlp\.fc1", r"mlp\.fc2"
    return attention + [
        Rename(src + norm1 + param, dst + r"norm1.\g<p>"),
        Rename(src + norm2 + param, dst + r"norm2.\g<p>"),
        Rename(src + fc1 + param, dst + r"mlp.fc1.\g<p>"),
        Rename(src + fc2 + param, dst + r"mlp.fc2.\g<p>"),
    ]


# --------------------------------------------------------------------------------------------------- BERT (xbert, med)


def bert_prediction_head_rules(source: str, target: str | None, drop_reason: str = "") -> list[MappingRule]:
    """BERT's MLM/LM prediction head ``{source}cls.predictions.*`` -> ``{target}dense/norm/decoder.*``, or all of it
    dropped with ``drop_reason`` when ``target`` is None. ``predictions.bias`` is the tensor ``decoder.bias`` holds
    (the converters check the tie) and ``decoder.weight`` is tied to the word embeddings."""
    head = source + r"cls\.predictions\."
    if target is None:
        return [Drop(head + r".+", drop_reason)]
    return [
        Drop(head + "bias", "same tensor as cls.predictions.decoder.bias (tied; checked equal)"),
        Rename(head + r"transform\.dense\." + P, target + r"dense.\g<p>"),
        Rename(head + r"transform\.LayerNorm\." + P, target + r"norm.\g<p>"),
        Rename(head + r"decoder\." + P, target + r"decoder.\g<p>"),
    ]


# --------------------------------------------------------------------------------------------------- VLMo


VLMO_INDEX_BUFFERS = (
    "relative_position_index", "text_relative_position_index", "text_imag_relative_position_index",
    "text_embeddings.position_ids",
)
_VLMO_EXPERTS = {"text": "text", "imag": "image", "vl": "vl"}


def vlmo_rules(target: str, relative_positions: bool) -> list[MappingRule]:
    """The original ``VLMo`` LightningModule's backbone (``transformer.*`` = ``MultiWayTransformer``, text and modality
    embeddings, rel-pos table, pooler, the ITC projections and temperature) -> ``{target}*`` of ``VlpVlmoModel``.

    The four index tensors the released files carry (:data:`VLMO_INDEX_BUFFERS`) are dropped (the model builds them);
    with relative positions the BERT position table is dropped too (the original never adds it). Heads are the
    converter's business."""
    block, layer = r"transformer\.blocks\.(?P<i>\d+)\.", target + r"encoder.layers.\g<i>."
    rules: list[MappingRule] = [Drop(re.escape(name), "an index the model rebuilds") for name in VLMO_INDEX_BUFFERS]
    rules += [
        Rename(r"transformer\.cls_token", target + "image_embeddings.class_embedding", flatten),
        Rename(r"transformer\.pos_embed", target + "image_embeddings.position_embedding", squeeze_batch),
        Rename(r"transformer\.patch_embed\.proj\." + P, target + r"image_embeddings.patch_embed.\g<p>"),
        Rename(r"transformer\.norm\." + P, target + r"norm.\g<p>"),
        Rename(block + r"gamma_(?P<n>[12])", layer + r"layer_scale\g<n>"),
        Rename(block + r"norm1\." + P, layer + r"norm1.\g<p>"),
        Rename(block + r"attn\.(?P<b>q_bias|v_bias)", layer + r"attn.\g<b>"),
        Rename(block + r"attn\.qkv\.weight", layer + r"attn.qkv.weight"),
        Rename(block + r"attn\.proj\." + P, layer + r"attn.out_proj.\g<p>"),
        *(
            Rename(block + rf"norm2_{name}\." + P, layer + rf"norm2.{expert}.\g<p>")
            for name, expert in _VLMO_EXPERTS.items()
        ),
        *(
            Rename(block + rf"mlp_{name}\.(?P<f>fc1|fc2)\." + P, layer + rf"mlp.{expert}.\g<f>.\g<p>")
            for name, expert in _VLMO_EXPERTS.items()
        ),
        Rename(r"text_embeddings\.word_embeddings\.weight", target + "text_embeddings.word_embeddings.weight"),
        Rename(r"text_embeddings\.token_type_embeddings\.weight", target + "text_embeddings.token_type_embeddings.weight"),
        Rename(r"text_embeddings\.LayerNorm\." + P, target + r"text_embeddings.norm.\g<p>"),
        Rename(r"relative_position_bias_table", target + "relative_position_bias.table"),
        Rename(r"pooler\.dense\." + P, target + r"pooler.dense.\g<p>"),
        Rename(r"itc_image_proj\.fc\.weight", target + "image_projection.weight"),
        Rename(r"itc_text_proj\.fc\.weight", target + "text_projection.weight"),
        Rename(r"logit_scale", target + "logit_scale"),
    ]
    position = r"text_embeddings\.position_embeddings\.weight"
    if relative_positions:
        rules.append(Drop(position, "BERT's position table, never added with relative positions (dead in the original)"))
    else:
        rules.append(Rename(position, target + "text_embeddings.position_embeddings.weight"))
    return rules


def vlmo_head_rules(head: str) -> list[MappingRule]:
    """The original's head modules -> the hf_vlp VLMo ``head``'s names (``pretraining``, ``masked_lm``, ``vqa``,
    ``nlvr2``, ``retrieval``, ``model``); the modules a head does not hold, and the modality table (two rows to
    the model, NLVR2's third to its head: one source tensor, two targets), are the converter's."""
    itm = [Rename(r"itm_score\.fc\." + P, r"itm_head.\g<p>")]
    mlm = [
        Rename(r"mlm_score\.transform\.dense\." + P, r"mlm_head.dense.\g<p>"),
        Rename(r"mlm_score\.transform\.LayerNorm\." + P, r"mlm_head.norm.\g<p>"),
        Rename(r"mlm_score\.decoder\.weight", "mlm_head.decoder.weight"),
        Rename(r"mlm_score\.bias", "mlm_head.decoder.bias"),
    ]
    vl_contrast = [
        Rename(r"itc_vl_image_proj\.fc\.weight", "vl_image_projection.weight"),
        Rename(r"itc_vl_text_proj\.fc\.weight", "vl_text_projection.weight"),
        Rename(r"logit_vl_scale", "logit_vl_scale"),
    ]
    classifier = {"vqa": "vqa_classifier", "nlvr2": "nlvr2_classifier"}
    rules: dict[str, list[MappingRule]] = {
        "pretraining": itm + mlm + vl_contrast,
        "masked_lm": mlm,
        "retrieval": itm,
        "model": [],
        **{
            name: [Rename(rf"{module}\.(?P<n>[013])\." + P, r"classifier.\g<n>.\g<p>")]
            for name, module in classifier.items()
        },
    }
    if head not in rules:
        raise ValueError(f"head must be one of {sorted(rules)}, got {head!r}")
    return rules[head]
