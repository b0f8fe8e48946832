"""Key-rule families shared by the converters: the original releases reuse the same building blocks.

- timm ViT (``models/vit.py`` of ALBEF and BLIP): :func:`timm_vit_rules`;
- BERT as ALBEF's ``xbert.py`` and BLIP's ``med.py`` store it: the MLM/LM prediction head
  (:func:`bert_prediction_head_rules`); its embeddings and layers are :mod:`hf_vlp.utils.key_rules`' families, which
  the text-tower initialiser shares;
- transformers' BLIP ViT names, which map one to one onto the timm ones: :func:`to_transformers_vit_name` and back
  (any such name table: :func:`prefix_renames` / :func:`rename_prefix`);
- CLIP's residual attention blocks, under OpenAI / open_clip or transformers names: :func:`clip_block_rules`;
- open_clip's CoCa, both ways (open_clip -> hf_vlp and back): :func:`coca_rules`, built from one name table
  (:data:`COCA_NAMES`, :func:`template_rules`).

Every separate q/k/v (or k/v) projection becomes one fused tensor through
:func:`hf_vlp.utils.checkpoints.fused_projection` (open_clip's pooler names its parts ``k_proj_weight``/
``v_proj_weight``: one :class:`~hf_vlp.utils.checkpoints.Fuse`); a fused tensor cut into ours (an ``in_proj`` into ``q``
and ``kv``) is a :class:`conversion.common.Split`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from hf_vlp.utils.checkpoints import PARAMETER as P
from hf_vlp.utils.checkpoints import Drop, Fuse, MappingRule, Rename, fused_projection, transpose

from conversion.common import Split


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


# --------------------------------------------------------------------------------------------------- name tables


def _template_pattern(template: str) -> str:
    return re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", P)


def _template_target(template: str) -> str:
    return template.replace("{i}", r"\g<i>").replace("{p}", r"\g<p>")


def template_rules(
    pairs: Sequence[tuple[str, str]],
    forward: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Rename]:
    """Exact renames from ``(first, second)`` key templates (``{i}`` a layer index, ``{p}`` ``weight|bias``): first ->
    second when ``forward``, else second -> first, each tensor through ``transform`` when given. One table then serves
    a converter and its inverse."""
    rules = []
    for first, second in pairs:
        source, target = (first, second) if forward else (second, first)
        rules.append(Rename(_template_pattern(source), _template_target(target), transform))
    return rules


# --------------------------------------------------------------------------------------------------- CLIP blocks

# OpenAI's (and open_clip's) ``ResidualAttentionBlock`` -> ours, within one block
OPENAI_BLOCK_NAMES = (
    ("attn.in_proj_{p}", "attn.qkv.{p}"),
    ("attn.out_proj.{p}", "attn.out_proj.{p}"),
    ("ln_1.{p}", "norm1.{p}"),
    ("ln_2.{p}", "norm2.{p}"),
    ("mlp.c_fc.{p}", "mlp.fc1.{p}"),
    ("mlp.c_proj.{p}", "mlp.fc2.{p}"),
)


def block_names(
    source: str, target: str, names: Sequence[tuple[str, str]] = OPENAI_BLOCK_NAMES
) -> list[tuple[str, str]]:
    """``names`` (within one block) under the block stacks ``{source}{i}.`` and ``{target}{i}.``, for
    :func:`template_rules`; a ``{i}`` in ``source``/``target`` marks the layer index elsewhere than at the end."""
    source, target = (name if "{i}" in name else name + "{i}." for name in (source, target))
    return [(source + first, target + second) for first, second in names]


def clip_block_rules(source: str, target: str, fused_attention: bool) -> list[MappingRule]:
    """A stack of CLIP's pre-norm residual attention blocks ``{source}{i}.`` -> ``{target}{i}.``: OpenAI's (and
    open_clip's) names with a fused ``in_proj`` (``fused_attention``), or transformers' ``CLIPEncoderLayer`` names with
    separate ``q/k/v_proj``."""
    if fused_attention:
        return [*template_rules(block_names(source, target))]
    src, dst = re.escape(source) + r"(?P<i>\d+)\.", target + r"\g<i>."
    param = r"\.(?P<p>weight|bias)"
    return [
        fused_projection(src + r"self_attn\.", ("q_proj", "k_proj", "v_proj"), dst + "attn.qkv"),
        Rename(src + r"self_attn\.out_proj" + param, dst + r"attn.out_proj.\g<p>"),
        *(
            Rename(src + original + param, dst + ours + r".\g<p>")
            for original, ours in (
                (r"layer_norm1", "norm1"), (r"layer_norm2", "norm2"), (r"mlp\.fc1", "mlp.fc1"), (r"mlp\.fc2", "mlp.fc2")
            )
        ),
    ]


# --------------------------------------------------------------------------------------------------- open_clip CoCa

_POOLER = "vision_model.attentional_pooler."
_POOL = "visual.attn_pool."
# open_clip CoCa (3.x ``model.state_dict()``) <-> hf_vlp's VlpCocaForConditionalGeneration, tensors kept as they are
COCA_NAMES: tuple[tuple[str, str], ...] = (
    ("visual.conv1.weight", "vision_model.transformer.patch_embed.weight"),
    ("visual.class_embedding", "vision_model.transformer.class_embedding"),
    ("visual.positional_embedding", "vision_model.transformer.position_embedding"),
    ("visual.ln_pre.{p}", "vision_model.transformer.norm_pre.{p}"),
    *block_names("visual.transformer.resblocks.", "vision_model.transformer.encoder.layers."),
    (_POOL + "query", _POOLER + "query"),
    (_POOL + "ln_q.{p}", _POOLER + "norm_query.{p}"),
    (_POOL + "ln_k.{p}", _POOLER + "norm_context.{p}"),
    (_POOL + "attn.out_proj.{p}", _POOLER + "attn.out_proj.{p}"),
    ("visual.ln_post.{p}", "vision_model.norm_post.{p}"),
    ("text.token_embedding.weight", "text_model.transformer.token_embedding.weight"),
    ("text.positional_embedding", "text_model.transformer.position_embedding"),
    ("text.cls_emb", "text_model.transformer.cls_embedding"),
    *block_names("text.transformer.resblocks.", "text_model.transformer.encoder.layers."),
    ("text.ln_final.{p}", "text_model.transformer.norm_final.{p}"),
)
# the multimodal decoder: per layer a self-attention block, then a cross-attention block whose fused in_proj is our
# q + kv (:func:`coca_rules`)
COCA_DECODER_NAMES: tuple[tuple[str, str], ...] = (
    *block_names("text_decoder.resblocks.", "text_decoder.transformer.layers.{i}.self_attention_block."),
    *block_names(
        "text_decoder.cross_attn.", "text_decoder.transformer.layers.{i}.cross_attention_block.",
        (*(pair for pair in OPENAI_BLOCK_NAMES if pair[1] != "attn.qkv.{p}"), ("ln_1_kv.{p}", "norm_kv.{p}")),
    ),
    ("text_decoder.ln_final.{p}", "text_decoder.transformer.norm_final.{p}"),
)
# ``x @ W`` matrices of open_clip <-> our bias-free Linear weights (transposed both ways)
COCA_PROJECTIONS = (("visual.proj", "visual_projection.weight"), ("text.text_projection", "text_projection.weight"))
COCA_DECODER_PROJECTION = (("text_decoder.text_projection", "lm_head.weight"),)
_CROSS_ATTENTION = (
    "text_decoder.cross_attn.{i}.attn.in_proj_{p}", "text_decoder.transformer.layers.{i}.cross_attention_block.attn."
)


def coca_rules(decoder: bool, to_open_clip: bool = False, pooler_in_proj: bool = False) -> list[MappingRule | Split]:
    """open_clip CoCa names -> hf_vlp's (``to_open_clip``: the way back), for
    :func:`conversion.common.map_state_dict_with_splits`.

    The attentional pooler's ``nn.MultiheadAttention`` has keys of another width than its queries, so open_clip stores
    ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` and one ``in_proj_bias`` (``in_proj_weight`` instead of the
    three when the widths are equal: ``pooler_in_proj``, which the way back must be told); ours holds ``q`` and a fused
    ``kv``. The decoder's cross-attention ``in_proj`` is our ``q`` + ``kv``. Without ``decoder`` (the dual encoder,
    ``VlpCocaModel``) open_clip's ``text_decoder.*`` is dropped by name; the way back needs the decoder."""
    names = COCA_NAMES + (COCA_DECODER_NAMES if decoder else ())
    projections = COCA_PROJECTIONS + (COCA_DECODER_PROJECTION if decoder else ())
    in_proj, ours = _CROSS_ATTENTION
    if not to_open_clip:
        rules: list[MappingRule | Split] = [
            *template_rules(names),
            *template_rules(projections, transform=transpose),
            Rename(r"logit_scale", "logit_scale", as_scalar),  # open_clip's nonscalar_logit_scale saves it as [1]
            Rename(re.escape(_POOL) + r"attn\.q_proj_weight", _POOLER + "attn.q.weight"),
            Fuse(re.escape(_POOL) + r"attn\.(?P<part>k|v)_proj_weight", _POOLER + "attn.kv.weight", ("k", "v")),
            Split(re.escape(_POOL) + r"attn\.in_proj_" + P, _POOLER + r"attn.{part}.\g<p>", ("q", "kv"), (1, 2)),
        ]
        if decoder:
            target = _template_target(ours) + r"{part}.\g<p>"
            rules.append(Split(_template_pattern(in_proj), target, ("q", "kv"), (1, 2)))
        else:
            rules.append(Drop(r"text_decoder\..+", "the multimodal text decoder (captioning), not in VlpCocaModel"))
        return rules
    if not decoder:
        raise ValueError("open_clip's CoCa always has its multimodal decoder: the way back needs decoder=True")
    pooler = re.escape(_POOLER) + r"attn\."
    rules = [
        *template_rules(names, forward=False),
        *template_rules(projections, forward=False, transform=transpose),
        Rename(r"logit_scale", "logit_scale"),
        Fuse(_template_pattern(ours) + r"(?P<part>q|kv)\." + P, _template_target(in_proj), ("q", "kv")),
    ]
    if pooler_in_proj:
        return rules + [Fuse(pooler + r"(?P<part>q|kv)\." + P, _POOL + r"attn.in_proj_\g<p>", ("q", "kv"))]
    return rules + [
        Rename(pooler + r"q\.weight", _POOL + "attn.q_proj_weight"),
        Split(pooler + r"kv\.weight", _POOL + "attn.{part}_proj_weight", ("k", "v"), (1, 1)),
        Fuse(pooler + r"(?P<part>q|kv)\.bias", _POOL + "attn.in_proj_bias", ("q", "kv")),
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
