"""An independent VLMo forward for ``convert_vlmo.py --verify``: the ORIGINAL checkpoint tensors, under their original
names, run through transformers' own modules.

transformers has no VLMo, but its ``BeitLayer`` is the original's block for one expert: a pre-norm block whose
attention has a query bias, no key bias and a value bias (the original's ``qkv`` with ``q_bias``/``v_bias``), scales
every head by ``head_dim ** -0.5``, takes an additive attention mask (through which the relative-position bias comes
in) and scales both branches by ``lambda_1``/``lambda_2`` (the original's ``gamma_1``/``gamma_2``; 1 without layer
scale). Each original block becomes one ``BeitLayer`` per expert (V-FFN, L-FFN, VL-FFN), all sharing the block's
attention and ``norm1``; a fused sequence in a block without VL-FFN takes its text slice from the L-FFN layer's output
and its image slice from the V-FFN layer's (the FFN acts on each token alone, so this is the original's split). Text
embeddings are transformers' ``BertEmbeddings``, with a zero position table in the relative-position variants (the
original builds its BERT embeddings with ``position_embedding_type="rel_pos"``, which never adds it); the
relative-position bias is gathered from the original table with the checkpoint's own index tensors when it stores
them. Patch embedding, pooler, projections and heads are plain tensor products of the original weights.

:func:`reference_outputs` and :func:`converted_outputs` give the same named outputs (:func:`output_names`) of the
original tensors and of the converted model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from hf_vlp.models.vlmo.configuration_vlmo import VlpVlmoConfig
from hf_vlp.models.vlmo.modeling_vlmo import VlpVlmoModel
from hf_vlp.modules.relative_position import fused_relative_position_index, num_relative_distances
from hf_vlp.modules.relative_position import relative_position_index, text_relative_position_index

from conversion.common import ConversionError

BERT_LAYER_NORM_EPS = 1e-12  # the original's BertEmbeddings and MLM transform (BertConfig's default)
CLASSIFIER_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, in the VQA and NLVR2 classifiers
EXPERTS = {"image": "imag", "text": "text", "vl": "vl"}  # mode -> the original's expert suffix
MODALITY_ROWS = "token_type_embeddings.weight"


def output_names(head: str, dual_encoder: bool, itm: bool) -> list[str]:
    """What ``--verify`` compares for ``head``: the three modes' final states and the pooled fused ``[CLS]``, the
    dual encoder's embeddings when the checkpoint holds its projections, and the head's own outputs."""
    names = ["image_feats", "text_feats", "fused_feats", "fused_pooled"]
    if dual_encoder:
        names += ["image_embeds", "text_embeds"]
    names += {
        "pretraining": ["vl_image_embeds", "vl_text_embeds", "itm_logits", "mlm_logits"],
        "masked_lm": ["text_mlm_logits", "mlm_logits"],
        "vqa": ["vqa_logits"],
        "nlvr2": ["nlvr2_logits"],
        "retrieval": ["itm_logits"] if itm else [],
    }.get(head, [])
    return names


def random_inputs(config: VlpVlmoConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images (two per example, for NLVR2) at the model's resolution and ``max_text_length`` random ids (the
    original always pads to it), ``[CLS]`` first when known, the second row padded after half its length."""
    generator = torch.Generator().manual_seed(seed)
    length = config.max_text_length
    input_ids = torch.randint(config.vocab_size, (batch, length), generator=generator)
    if config.cls_token_id is not None and config.cls_token_id < config.vocab_size:
        input_ids[:, 0] = config.cls_token_id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, max(1, length // 2) :] = 0
    shape = (batch, config.num_channels, config.image_size, config.image_size)
    first, second = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": first, "pixel_values_2": second}


class OriginalVlmo:
    """The original ``VLMo`` module's forward, from its state dict (original names), on transformers' modules."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], config: VlpVlmoConfig) -> None:
        from transformers import BeitConfig, BertConfig
        from transformers.models.bert.modeling_bert import BertEmbeddings

        self.tensors = {key: value.float() for key, value in state_dict.items() if value.is_floating_point()}
        self.indices = {key: value for key, value in state_dict.items() if key.endswith("relative_position_index")}
        self.config = config
        self.depth = config.num_hidden_layers
        layer_scale = "transformer.blocks.0.gamma_1" in self.tensors
        beit = BeitConfig(
            hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size, hidden_act="gelu", layer_norm_eps=config.layer_norm_eps,
            layer_scale_init_value=0.1 if layer_scale else 0.0, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, image_size=config.image_size, patch_size=config.patch_size,
        )
        beit._attn_implementation = "eager"
        self.blocks = [self._block(beit, index) for index in range(self.depth)]
        words = self._get("text_embeddings.word_embeddings.weight")
        types = self._get("text_embeddings.token_type_embeddings.weight")
        length = config.max_text_length
        self.text_embeddings = BertEmbeddings(BertConfig(
            vocab_size=words.shape[0], hidden_size=words.shape[1], max_position_embeddings=length,
            type_vocab_size=types.shape[0], layer_norm_eps=BERT_LAYER_NORM_EPS, hidden_dropout_prob=0.0, pad_token_id=0,
        ))
        positions = (
            self._get("text_embeddings.position_embeddings.weight")[:length]
            if "transformer.pos_embed" in self.tensors  # absolute positions (base-plus): BERT's table is added
            else torch.zeros(length, words.shape[1])
        )
        self._load(self.text_embeddings, {
            "word_embeddings.weight": words, "position_embeddings.weight": positions,
            "token_type_embeddings.weight": types, "LayerNorm.weight": self._get("text_embeddings.LayerNorm.weight"),
            "LayerNorm.bias": self._get("text_embeddings.LayerNorm.bias"),
        }, "text embeddings")

    def _get(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise ConversionError(f"Verification: the checkpoint lacks {key}, which the original forward reads.")
        return self.tensors[key]

    @staticmethod
    def _load(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
        missing, unexpected = module.load_state_dict(dict(tensors), strict=False)
        if missing or unexpected:
            raise ConversionError(f"Verification: the reference {what} does not take the original tensors "
                                  f"(missing {missing}, unexpected {unexpected}).")
        return module.eval()

    def _block(self, beit: object, index: int) -> dict[str, torch.nn.Module]:
        """One ``BeitLayer`` per expert of original block ``index``, sharing its attention and ``norm1``."""
        from transformers.models.beit.modeling_beit import BeitLayer

        block = f"transformer.blocks.{index}."
        query, key, value = self._get(block + "attn.qkv.weight").chunk(3)
        shared = {
            "attention.q_proj.weight": query, "attention.q_proj.bias": self._get(block + "attn.q_bias"),
            "attention.k_proj.weight": key,
            "attention.v_proj.weight": value, "attention.v_proj.bias": self._get(block + "attn.v_bias"),
            "attention.o_proj.weight": self._get(block + "attn.proj.weight"),
            "attention.o_proj.bias": self._get(block + "attn.proj.bias"),
            "layernorm_before.weight": self._get(block + "norm1.weight"),
            "layernorm_before.bias": self._get(block + "norm1.bias"),
        }
        if block + "gamma_1" in self.tensors:
            shared.update(lambda_1=self.tensors[block + "gamma_1"], lambda_2=self._get(block + "gamma_2"))
        layers: dict[str, torch.nn.Module] = {}
        for expert in EXPERTS.values():
            if block + f"mlp_{expert}.fc1.weight" not in self.tensors:
                continue  # the VL-FFN lives in the top blocks only
            own = {
                f"layernorm_after.{part}": self._get(f"{block}norm2_{expert}.{part}") for part in ("weight", "bias")
            } | {
                f"mlp.{fc}.{part}": self._get(f"{block}mlp_{expert}.{fc}.{part}")
                for fc in ("fc1", "fc2") for part in ("weight", "bias")
            }
            layer = self._load(BeitLayer(beit), {**shared, **own}, f"block {index} ({expert} expert)")
            if layers:  # one attention for every expert, as the original block
                first = next(iter(layers.values()))
                layer.attention, layer.layernorm_before = first.attention, first.layernorm_before
            layers[expert] = layer
        return layers

    # ------------------------------------------------------------------------------------------------ the modes

    def _index(self, name: str, built: torch.Tensor) -> torch.Tensor:
        stored = self.indices.get(name)
        return stored.long() if stored is not None and stored.shape == built.shape else built

    def biases(self, kind: str, text_length: int = 0) -> list[torch.Tensor] | None:
        """Each layer's relative-position bias ``[heads, N, N]`` (``None`` without a table): the table's rows at the
        index of an ``image``, ``text`` or ``fused`` sequence, layer ``i`` reading columns ``[i*H, (i+1)*H)``."""
        table = self.tensors.get("relative_position_bias_table")
        if table is None:
            return None
        config = self.config
        grid, text_rows = config.patch_grid, config.relative_position_text_length
        if kind == "image":
            index = self._index("relative_position_index", relative_position_index(grid))
        elif kind == "text":
            built = text_relative_position_index(text_length, text_rows, num_relative_distances(grid))
            index = self._index("text_relative_position_index", built)
        else:
            built = fused_relative_position_index(text_length, grid, text_rows)
            index = self._index("text_imag_relative_position_index", built)
        tokens = index.shape[0]
        bias = table[index.flatten()].view(tokens, tokens, -1).permute(2, 0, 1)
        return list(bias.chunk(self.depth, dim=0))

    def run(
        self,
        hidden: torch.Tensor,
        mode: str,
        biases: Sequence[torch.Tensor] | None,
        keep: torch.Tensor | None = None,
        layers: range | None = None,
        text_length: int = 0,
    ) -> torch.Tensor:
        """The blocks ``layers`` in ``mode`` (``image``, ``text``, ``vl``); ``keep`` ``[B, N]`` masks padding keys."""
        padding = None
        if keep is not None:
            padding = (1.0 - keep[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for index in layers if layers is not None else range(self.depth):
            mask = biases[index][None] if biases is not None else None
            mask = padding if mask is None else (mask if padding is None else mask + padding)
            experts = self.blocks[index]
            if mode == "vl" and "vl" not in experts:  # lower blocks: text tokens -> L-FFN, image tokens -> V-FFN
                text, image = experts["text"](hidden, mask), experts["imag"](hidden, mask)
                hidden = torch.cat([text[:, :text_length], image[:, text_length:]], dim=1)
            else:
                hidden = experts[EXPERTS[mode]](hidden, mask)
        return hidden

    def norm(self, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = self._get("transformer.norm.weight"), self._get("transformer.norm.bias")
        return F.layer_norm(hidden, weight.shape, weight, bias, eps=self.config.layer_norm_eps)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_embeddings(input_ids) + self._get(MODALITY_ROWS)[0]

    def embed_image(self, pixel_values: torch.Tensor, row: int = 1) -> torch.Tensor:
        patches = F.conv2d(
            pixel_values, self._get("transformer.patch_embed.proj.weight"),
            self._get("transformer.patch_embed.proj.bias"), stride=self.config.patch_size,
        ).flatten(2).transpose(1, 2)
        tokens = torch.cat([self._get("transformer.cls_token").expand(len(patches), -1, -1), patches], dim=1)
        if "transformer.pos_embed" in self.tensors:
            tokens = tokens + self.tensors["transformer.pos_embed"]
        return tokens + self._get(MODALITY_ROWS)[row]

    def fused(
        self, input_ids: torch.Tensor, keep: torch.Tensor, pixel_values: torch.Tensor, row: int = 1
    ) -> torch.Tensor:
        tokens = torch.cat([self.embed_text(input_ids), self.embed_image(pixel_values, row)], dim=1)
        keep = torch.cat([keep, keep.new_ones(tokens.shape[0], tokens.shape[1] - keep.shape[1])], dim=1)
        length = input_ids.shape[1]
        hidden = self.run(tokens, "vl", self.biases("fused", length), keep, text_length=length)
        return self.norm(hidden)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.linear(hidden[:, 0], self._get("pooler.dense.weight"), self._get("pooler.dense.bias")))

    def projected(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.linear(hidden[:, 0], self._get(f"{name}.fc.weight")), dim=-1)

    def classifier(self, prefix: str, features: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(features, self._get(f"{prefix}.0.weight"), self._get(f"{prefix}.0.bias"))
        weight, bias = self._get(f"{prefix}.1.weight"), self._get(f"{prefix}.1.bias")
        hidden = F.gelu(F.layer_norm(hidden, weight.shape, weight, bias, eps=CLASSIFIER_LAYER_NORM_EPS))
        return F.linear(hidden, self._get(f"{prefix}.3.weight"), self._get(f"{prefix}.3.bias"))

    def mlm(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(F.linear(hidden, self._get("mlm_score.transform.dense.weight"),
                                 self._get("mlm_score.transform.dense.bias")))
        norm = "mlm_score.transform.LayerNorm."
        weight, bias = self._get(norm + "weight"), self._get(norm + "bias")
        hidden = F.layer_norm(hidden, weight.shape, weight, bias, eps=BERT_LAYER_NORM_EPS)
        return F.linear(hidden, self._get("mlm_score.decoder.weight")) + self._get("mlm_score.bias")


@torch.no_grad()
def reference_outputs(
    state_dict: Mapping[str, torch.Tensor], config: VlpVlmoConfig, inputs: Mapping[str, torch.Tensor],
    names: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The original model's ``names`` outputs on ``inputs``, computed from its state dict (:class:`OriginalVlmo`)."""
    original = OriginalVlmo(state_dict, config)
    ids, keep, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    length, start = ids.shape[1], config.vl_ffn_start_layer
    lower, upper = range(start), range(start, config.num_hidden_layers)
    image_biases, text_biases = original.biases("image"), original.biases("text", length)
    image_lower = original.run(original.embed_image(pixels), "image", image_biases, layers=lower)
    text_lower = original.run(original.embed_text(ids), "text", text_biases, keep, layers=lower)
    image_feats = original.norm(original.run(image_lower, "image", image_biases, layers=upper))
    text_feats = original.norm(original.run(text_lower, "text", text_biases, keep, layers=upper))
    fused = original.fused(ids, keep, pixels)
    outputs = {"image_feats": image_feats, "text_feats": text_feats, "fused_feats": fused,
               "fused_pooled": original.pooled(fused)}
    if "image_embeds" in names:
        outputs["image_embeds"] = original.projected("itc_image_proj", image_feats)
        outputs["text_embeds"] = original.projected("itc_text_proj", text_feats)
    if "vl_image_embeds" in names:  # the unimodal passes' top blocks re-run through the VL-FFN (pre-training)
        vl_image = original.norm(original.run(image_lower, "vl", image_biases, layers=upper))
        vl_text = original.norm(original.run(text_lower, "vl", text_biases, keep, layers=upper))
        outputs["vl_image_embeds"] = original.projected("itc_vl_image_proj", vl_image)
        outputs["vl_text_embeds"] = original.projected("itc_vl_text_proj", vl_text)
    if "itm_logits" in names:
        outputs["itm_logits"] = F.linear(outputs["fused_pooled"], original._get("itm_score.fc.weight"),
                                         original._get("itm_score.fc.bias"))
    if "mlm_logits" in names:
        outputs["mlm_logits"] = original.mlm(fused[:, :length])
    if "text_mlm_logits" in names:
        outputs["text_mlm_logits"] = original.mlm(text_feats)
    if "vqa_logits" in names:
        outputs["vqa_logits"] = original.classifier("vqa_classifier", outputs["fused_pooled"])
    if "nlvr2_logits" in names:
        second = original.pooled(original.fused(ids, keep, inputs["pixel_values_2"], row=2))
        outputs["nlvr2_logits"] = original.classifier(
            "nlvr2_classifier", torch.cat([outputs["fused_pooled"], second], dim=-1)
        )
    return {name: outputs[name] for name in names}


@torch.no_grad()
def converted_outputs(
    model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The converted model's ``names`` outputs on ``inputs`` (see :func:`output_names`)."""
    base = model if isinstance(model, VlpVlmoModel) else model.vlmo
    ids, keep, pixels = inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"]
    image = base.encode_image(pixels, keep_vl_input=True)
    text = base.encode_text(ids, keep, keep_vl_input=True)
    fused = base.encode_fused(ids, keep, pixels)
    outputs = {"image_feats": image.last_hidden_state, "text_feats": text.last_hidden_state,
               "fused_feats": fused.last_hidden_state, "fused_pooled": fused.pooler_output}
    if "image_embeds" in names:
        outputs["image_embeds"], outputs["text_embeds"] = base.contrastive_embeds(
            image.last_hidden_state, text.last_hidden_state
        )
    if "vl_image_embeds" in names:
        vl_image = base.encode_vl_expert(image.vl_input, "image")
        vl_text = base.encode_vl_expert(text.vl_input, "text", keep)
        outputs["vl_image_embeds"] = F.normalize(model.vl_image_projection(vl_image[:, 0]), dim=-1)
        outputs["vl_text_embeds"] = F.normalize(model.vl_text_projection(vl_text[:, 0]), dim=-1)
    if "itm_logits" in names:
        outputs["itm_logits"] = model.itm_head(fused.pooler_output)
    if "mlm_logits" in names:  # the fused MLM of pre-training (and of the masked-LM head given images)
        outputs["mlm_logits"] = model.mlm_head(fused.last_hidden_state[:, : ids.shape[1]])
    if "text_mlm_logits" in names:  # the text-only MLM of the second stage: the masked-LM head without images
        outputs["text_mlm_logits"] = model(ids, keep).logits
    if "vqa_logits" in names:
        outputs["vqa_logits"] = model(ids, keep, pixels).logits
    if "nlvr2_logits" in names:
        outputs["nlvr2_logits"] = model(ids, keep, pixels, pixel_values_2=inputs["pixel_values_2"]).logits
    return {name: outputs[name] for name in names}


__all__ = ["OriginalVlmo", "converted_outputs", "output_names", "random_inputs", "reference_outputs"]
