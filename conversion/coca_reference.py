"""The original CoCa's outputs for ``convert_coca.py --verify``: open_clip's own ``CoCa`` when open_clip is installed,
else an independent plain-torch forward of the ORIGINAL tensors under their open_clip names.

The plain forward follows open_clip 3.3.0's code path for the released layout (``attentional_pool: true``), written
with tensor products only (no hf_vlp module, no ``nn.MultiheadAttention``): ViT (bias-free patch conv, class token,
learned positions, ``ln_pre``, pre-norm blocks with exact GELU), one attentional pooler (``ln_k`` on every token,
``ln_q`` on the learned queries, one multi-head cross-attention with separate ``q/k/v_proj_weight`` or one
``in_proj_weight``), ``ln_post``, query 0 @ ``proj`` = the image features and queries 1.. = the decoder's image tokens;
the text tower with its class token appended last, a causal mask plus open_clip 3.x's pad mask (key ``j`` visible to
every query iff ``j == 0`` or ``text[j - 1] != pad_id``), ``ln_final`` on the class token @ ``text_projection``; the
multimodal decoder (per layer a causal self-attention block, then a cross-attention block with ``ln_1_kv`` on the image
tokens), ``ln_final`` @ ``text_projection`` on the text tokens but the last (open_clip 3.x's teacher forcing).

:func:`reference_outputs` and :func:`converted_outputs` give the same named outputs (:data:`OUTPUT_NAMES`), both in
float64 so that the tolerance measures the mapping and not float32 rounding.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-5  # every LayerNorm of open_clip's CoCa
OUTPUT_NAMES = ("image_features", "image_tokens", "text_features", "text_tokens", "logits_per_image")
CAPTION_LOGITS = "caption_logits"
OPEN_CLIP = "open_clip's own CoCa (the original code, float64)"
PLAIN = "an independent plain-torch forward of the original tensors (conversion/coca_reference.py, float64)"
# open_clip's defaults of the fields the forward reads (CLIPVisionCfg, CLIPTextCfg, MultimodalCfg)
VISION_DEFAULTS = {"head_width": 64, "attn_pooler_heads": 8, "patch_size": 16}
TEXT_DEFAULTS = {"heads": 8, "pad_id": 0}


def open_clip_available() -> bool:
    """Whether open_clip (the package of the original) is installed."""
    return importlib.util.find_spec("open_clip") is not None


def random_inputs(
    image_size: int, context_length: int, bos_token_id: int, eos_token_id: int, pad_token_id: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Two random images and two texts as open_clip's tokenizer writes them: ``[SOT] ids [EOT]`` padded after half the
    context in the first row, filling the whole context in the second; the ids avoid the special and pad ids."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, image_size, image_size, generator=generator)
    ordinary = [token for token in range(min(bos_token_id, eos_token_id)) if token != pad_token_id]
    picks = torch.randint(len(ordinary), (2, context_length), generator=generator)
    input_ids = torch.tensor(ordinary)[picks]
    input_ids[:, 0] = bos_token_id
    half = max(2, context_length // 2)
    input_ids[0, half - 1], input_ids[0, half:] = eos_token_id, pad_token_id
    input_ids[1, -1] = eos_token_id
    return {"pixel_values": pixel_values, "input_ids": input_ids}


# --------------------------------------------------------------------------------------------------- open_clip


@torch.no_grad()
def open_clip_outputs(
    state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any], inputs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """open_clip's ``CoCa(**model_cfg)`` holding ``state_dict`` (loaded strictly), run in float64: its
    ``_encode_image``/``_encode_text`` (un-normalised features and tokens), the similarity logits and ``forward``'s
    caption logits."""
    import open_clip

    settings = {key: value for key, value in model_cfg.items() if key != "custom_text"}  # read by open_clip's factory
    model = open_clip.CoCa(**settings).eval()
    model.load_state_dict({key: value.reshape(model.state_dict()[key].shape) for key, value in state_dict.items()})
    model.double()
    pixel_values, input_ids = inputs["pixel_values"].double(), inputs["input_ids"]
    image_features, image_tokens = model._encode_image(pixel_values, normalize=False)
    text_features, text_tokens = model._encode_text(input_ids, normalize=False)
    return {
        "image_features": image_features,
        "image_tokens": image_tokens,
        "text_features": text_features,
        "text_tokens": text_tokens,
        "logits_per_image": _similarity(image_features, text_features, model.logit_scale),
        CAPTION_LOGITS: model(pixel_values, input_ids)["logits"],
    }


def _similarity(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    return logit_scale.exp().reshape(()) * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()


# --------------------------------------------------------------------------------------------------- plain torch


class PlainCoca:
    """open_clip's CoCa forward on its state dict (original names), tensor products only, float64."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any]) -> None:
        self.tensors = {key: value.double() for key, value in state_dict.items()}
        vision = {**VISION_DEFAULTS, **model_cfg["vision_cfg"]}
        text = {**TEXT_DEFAULTS, **model_cfg["text_cfg"]}
        self.vision_heads = vision["width"] // vision["head_width"]
        self.pooler_heads = vision["attn_pooler_heads"]
        self.patch_size = vision["patch_size"]
        self.text_heads = text["heads"]
        self.pad_id = text["pad_id"]
        self.decoder_heads = model_cfg.get("multimodal_cfg", {}).get("heads", TEXT_DEFAULTS["heads"])

    def layers(self, prefix: str) -> int:
        """How many blocks ``{prefix}{i}.`` the state dict holds."""
        return len({key[len(prefix) :].split(".")[0] for key in self.tensors if key.startswith(prefix)})

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        t = self.tensors
        return F.layer_norm(x, x.shape[-1:], t[f"{name}.weight"], t[f"{name}.bias"], LAYER_NORM_EPS)

    def attention(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        name: str,
        heads: int,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``nn.MultiheadAttention(batch_first=True)`` of ``name``'s tensors: scaled dot product per head, additive
        ``mask``, output projection."""
        t = self.tensors
        width = t[f"{name}.out_proj.weight"].shape[0]
        if f"{name}.in_proj_weight" in t:
            weights = t[f"{name}.in_proj_weight"].split(width)
        else:
            weights = tuple(t[f"{name}.{part}_proj_weight"] for part in "qkv")
        biases = t[f"{name}.in_proj_bias"].split(width)
        q, k, v = (
            (x @ weight.t() + bias).unflatten(-1, (heads, -1)).transpose(1, 2)
            for x, weight, bias in zip((queries, context, context), weights, biases)
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + mask
        mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
        return mixed @ t[f"{name}.out_proj.weight"].t() + t[f"{name}.out_proj.bias"]

    def mlp(self, x: torch.Tensor, name: str) -> torch.Tensor:
        t = self.tensors
        hidden = F.gelu(x @ t[f"{name}.c_fc.weight"].t() + t[f"{name}.c_fc.bias"])
        return hidden @ t[f"{name}.c_proj.weight"].t() + t[f"{name}.c_proj.bias"]

    def block(
        self,
        x: torch.Tensor,
        name: str,
        heads: int,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """open_clip's ``ResidualAttentionBlock``: self-attention, or cross-attention to ``memory`` (``ln_1_kv``)."""
        queries = self.norm(x, f"{name}.ln_1")
        context = queries if memory is None else self.norm(memory, f"{name}.ln_1_kv")
        x = x + self.attention(queries, context, f"{name}.attn", heads, mask)
        return x + self.mlp(self.norm(x, f"{name}.ln_2"), f"{name}.mlp")

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features (query 0, ``ln_post``, ``@ proj``) and the decoder's image tokens (queries 1..)."""
        t = self.tensors
        x = F.conv2d(pixel_values.double(), t["visual.conv1.weight"], stride=self.patch_size).flatten(2).transpose(1, 2)
        x = torch.cat([t["visual.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
        x = self.norm(x + t["visual.positional_embedding"], "visual.ln_pre")
        for index in range(self.layers("visual.transformer.resblocks.")):
            x = self.block(x, f"visual.transformer.resblocks.{index}", self.vision_heads)
        queries = self.norm(t["visual.attn_pool.query"], "visual.attn_pool.ln_q").expand(x.shape[0], -1, -1)
        context = self.norm(x, "visual.attn_pool.ln_k")
        pooled = self.attention(queries, context, "visual.attn_pool.attn", self.pooler_heads)
        pooled = self.norm(pooled, "visual.ln_post")
        return pooled[:, 0] @ t["visual.proj"], pooled[:, 1:]

    def encode_text(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features (the appended class token, ``ln_final``, ``@ text_projection``) and the text tokens' states."""
        t = self.tensors
        batch, length = input_ids.shape
        x = torch.cat([t["text.token_embedding.weight"][input_ids], t["text.cls_emb"].expand(batch, 1, -1)], dim=1)
        x = x + t["text.positional_embedding"][: length + 1]
        visible = torch.cat([torch.ones(batch, 1, dtype=torch.bool), input_ids != self.pad_id], dim=1)
        mask = _causal_mask(length + 1) + torch.zeros(batch, 1, 1, length + 1, dtype=x.dtype).masked_fill(
            ~visible[:, None, None, :], -math.inf
        )
        for index in range(self.layers("text.transformer.resblocks.")):
            x = self.block(x, f"text.transformer.resblocks.{index}", self.text_heads, mask)
        return self.norm(x[:, -1], "text.ln_final") @ t["text.text_projection"], x[:, :-1]

    def decode(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits of the text tokens but the last (open_clip 3.x's ``forward`` with labels)."""
        x = text_tokens[:, :-1]
        mask = _causal_mask(x.shape[1])
        for index in range(self.layers("text_decoder.resblocks.")):
            x = self.block(x, f"text_decoder.resblocks.{index}", self.decoder_heads, mask)
            x = self.block(x, f"text_decoder.cross_attn.{index}", self.decoder_heads, memory=image_tokens)
        return self.norm(x, "text_decoder.ln_final") @ self.tensors["text_decoder.text_projection"]


def _causal_mask(length: int) -> torch.Tensor:
    return torch.full((length, length), -math.inf, dtype=torch.float64).triu(1)


@torch.no_grad()
def plain_outputs(
    state_dict: Mapping[str, torch.Tensor], model_cfg: Mapping[str, Any], inputs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """:class:`PlainCoca`'s outputs under the names of :func:`open_clip_outputs`."""
    coca = PlainCoca(state_dict, model_cfg)
    image_features, image_tokens = coca.encode_image(inputs["pixel_values"])
    text_features, text_tokens = coca.encode_text(inputs["input_ids"])
    outputs = {
        "image_features": image_features,
        "image_tokens": image_tokens,
        "text_features": text_features,
        "text_tokens": text_tokens,
        "logits_per_image": _similarity(image_features, text_features, coca.tensors["logit_scale"]),
    }
    if "text_decoder.text_projection" in coca.tensors:
        outputs[CAPTION_LOGITS] = coca.decode(text_tokens, image_tokens)
    return outputs


def reference_outputs(
    state_dict: Mapping[str, torch.Tensor],
    model_cfg: Mapping[str, Any],
    inputs: Mapping[str, torch.Tensor],
    use_open_clip: bool | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The original's outputs on ``inputs`` and what computed them: open_clip when ``use_open_clip`` (default: when it
    is installed), else :class:`PlainCoca`."""
    if use_open_clip is None:
        use_open_clip = open_clip_available()
    if use_open_clip:
        return open_clip_outputs(state_dict, model_cfg, inputs), OPEN_CLIP
    return plain_outputs(state_dict, model_cfg, inputs), PLAIN


# --------------------------------------------------------------------------------------------------- converted


@torch.no_grad()
def converted_outputs(
    model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], caption_length: int | None
) -> dict[str, torch.Tensor]:
    """The converted model's outputs under the reference's names, in float64 (the model is cast there and back, which
    is exact); ``caption_length`` positions of the caption logits (``None``: a dual encoder, none)."""
    dtype = model.dtype
    model.to(torch.float64)
    try:
        pixel_values, input_ids = inputs["pixel_values"].double(), inputs["input_ids"]
        output = model(pixel_values=pixel_values, input_ids=input_ids)
        outputs = {
            "image_features": model.get_image_features(pixel_values=pixel_values).pooler_output,
            "image_tokens": output.vision_model_output.image_tokens,
            "text_features": model.get_text_features(input_ids=input_ids).pooler_output,
            "text_tokens": output.text_model_output.last_hidden_state,
            "logits_per_image": output.logits_per_image,
        }
        if caption_length is not None:
            outputs[CAPTION_LOGITS] = output.logits[:, :caption_length]
        return outputs
    finally:
        model.to(dtype)


__all__ = [
    "CAPTION_LOGITS",
    "OUTPUT_NAMES",
    "PlainCoca",
    "converted_outputs",
    "open_clip_available",
    "open_clip_outputs",
    "plain_outputs",
    "random_inputs",
    "reference_outputs",
]
