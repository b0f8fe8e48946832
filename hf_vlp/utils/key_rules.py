"""Key-rule families of transformers' BERT layout, shared by the converters (``conversion/``, for ALBEF's ``xbert.py``
and BLIP's ``med.py``, which store BERT's names) and by :mod:`hf_vlp.utils.tower_init` (a transformers ``BertModel``):
the embeddings and the layers (self-attention, optional cross-attention, feed-forward) mapped onto
:class:`~hf_vlp.modules.text.PostNormBlock`'s names. Separate q/k/v (or k/v) projections become one fused tensor."""

from __future__ import annotations

from .checkpoints import PARAMETER as P
from .checkpoints import Drop, MappingRule, Rename, fused_projection


def position_ids_rule(source: str) -> Drop:
    """A ``BertModel``'s ``embeddings.position_ids`` buffer under the regex prefix ``source``, dropped."""
    return Drop(source + r"embeddings\.position_ids", "index buffer; positions are computed")


def bert_embedding_rules(source: str, target: str, token_types: bool = True) -> list[MappingRule]:
    """A ``BertModel``'s embeddings under the regex prefix ``source`` -> ``{target}embeddings.*``; the ``position_ids``
    buffer is dropped (positions are computed). BLIP's MED has no token-type embeddings."""
    embeddings = "word|position|token_type" if token_types else "word|position"
    return [
        position_ids_rule(source),
        Rename(
            source + rf"embeddings\.(?P<e>{embeddings})_embeddings\.weight", target + r"embeddings.\g<e>_embeddings.weight"
        ),
        Rename(source + r"embeddings\.LayerNorm\." + P, target + r"embeddings.norm.\g<p>"),
    ]


def bert_layer_rules(
    source: str,
    target: str,
    self_attention: str | None = "attn",
    *,
    drop_self_attention: str = "",
    cross_attention: bool = True,
    ffn: bool = True,
) -> list[MappingRule]:
    """The layers ``{source}encoder.layer.N.*`` of a ``BertModel`` (regex prefix) -> ``{target}encoder.layers.N.*``.

    ``self_attention`` is the target module of ``attention.*``: ``"attn"`` (bidirectional, norm ``norm1``),
    ``"causal_attn"`` (BLIP's decoder role, norm ``norm_causal``), or ``None`` to drop it saying why
    (``drop_self_attention``). ``cross_attention`` maps ``crossattention.*`` (q, fused kv) to ``cross_attn``/
    ``norm_cross``; ``ffn`` the feed-forward block to ``mlp``/``norm2``.
    """
    layer, out = source + r"encoder\.layer\.(?P<i>\d+)\.", target + r"encoder.layers.\g<i>."
    rules: list[MappingRule] = []
    if self_attention is None:
        if not drop_self_attention:
            raise ValueError("say why the self-attention is dropped (drop_self_attention)")
        rules.append(Drop(layer + r"attention\..+", drop_self_attention))
    else:
        norm = "norm1" if self_attention == "attn" else "norm_causal"
        rules += [
            fused_projection(layer + r"attention\.self\.", ("query", "key", "value"), out + self_attention + ".qkv"),
            Rename(layer + r"attention\.output\.dense\." + P, out + self_attention + r".out_proj.\g<p>"),
            Rename(layer + r"attention\.output\.LayerNorm\." + P, out + norm + r".\g<p>"),
        ]
    if cross_attention:
        rules += [
            Rename(layer + r"crossattention\.self\.query\." + P, out + r"cross_attn.q.\g<p>"),
            fused_projection(layer + r"crossattention\.self\.", ("key", "value"), out + "cross_attn.kv"),
            Rename(layer + r"crossattention\.output\.dense\." + P, out + r"cross_attn.out_proj.\g<p>"),
            Rename(layer + r"crossattention\.output\.LayerNorm\." + P, out + r"norm_cross.\g<p>"),
        ]
    if ffn:
        rules += [
            Rename(layer + r"intermediate\.dense\." + P, out + r"mlp.fc1.\g<p>"),
            Rename(layer + r"output\.dense\." + P, out + r"mlp.fc2.\g<p>"),
            Rename(layer + r"output\.LayerNorm\." + P, out + r"norm2.\g<p>"),
        ]
    return rules


__all__ = ["bert_embedding_rules", "bert_layer_rules", "position_ids_rule"]
