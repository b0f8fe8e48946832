"""An independent ALBEF forward for ``convert_albef.py --verify``: the ORIGINAL checkpoint tensors, under their
original names, run through transformers' own modules that share ALBEF's layout.

- ViT (``models/vit.py``, timm): transformers' ``BlipVisionModel`` (BLIP's ViT is ALBEF's);
- the unimodal text layers ``[0, fusion_layer)`` of xbert: transformers' ``BertModel``;
- the fusion layers ``[fusion_layer, L)`` (self-attention, cross-attention to the image tokens, FFN): transformers'
  ``BlipTextModel`` fed the text states directly (``encoder_embeds``), whose layers keep xbert's names;
- projections and the ITM head: plain ``nn.Linear`` products.

It computes the fixture-like outputs (``image_embeds``, ``text_embeds``, ``fusion_hidden``, ``image_feat``,
``text_feat``, ``itm_logits``) that :func:`converted_outputs` reads from the converted model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from hf_vlp.models.albef.configuration_albef import VlpAlbefConfig

from conversion.common import ConversionError, filter_prefix
from conversion.rules import to_transformers_vit_name

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def random_inputs(config: VlpAlbefConfig, batch: int = 2, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images at the model's resolution and ``[CLS] words..`` rows (ALBEF's format, no ``[SEP]``), the second
    row padded after half its length."""
    vision, text = config.vision_config, config.text_config
    generator = torch.Generator().manual_seed(seed)
    length = min(length, text.max_position_embeddings)
    special = {getattr(text, name, None) for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")}
    words = torch.tensor([index for index in range(text.vocab_size) if index not in special])
    input_ids = words[torch.randint(len(words), (batch, length), generator=generator)]
    if text.cls_token_id is not None and text.cls_token_id < text.vocab_size:
        input_ids[:, 0] = text.cls_token_id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, length // 2 :] = 0
    pixel_values = torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    return {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def _text_layers(tensors: Mapping[str, torch.Tensor], first: int, stop: int) -> dict[str, torch.Tensor]:
    """The BERT layers ``[first, stop)`` of ``tensors`` renumbered from 0 (other keys left out)."""
    layers = {}
    for key, tensor in tensors.items():
        match = _LAYER.fullmatch(key)
        if match and first <= int(match.group(1)) < stop:
            layers[f"encoder.layer.{int(match.group(1)) - first}.{match.group(2)}"] = tensor
    return layers


def _load(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    expected = module.state_dict()
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise ConversionError(f"Verification: the checkpoint lacks tensors of the reference {what}: {missing[:5]}")
    module.load_state_dict({key: tensors[key].float() for key in expected}, strict=True)
    return module.eval()


@torch.no_grad()
def reference_outputs(
    state_dict: Mapping[str, torch.Tensor], config: VlpAlbefConfig, inputs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The original model's outputs on ``inputs``, computed from its state dict (online towers) with transformers."""
    from transformers import BertConfig, BertModel, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    vision, text = config.vision_config, config.text_config
    vit = BlipVisionModel(
        BlipVisionConfig(
            hidden_size=vision.hidden_size, intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_hidden_layers, num_attention_heads=vision.num_attention_heads,
            image_size=vision.image_size, patch_size=vision.patch_size, layer_norm_eps=vision.layer_norm_eps,
            hidden_act=vision.hidden_act,
        )
    )
    vision_tensors = {to_transformers_vit_name(key): value for key, value in state_dict.items()}
    _load(vit, filter_prefix(vision_tensors, "vision_model."), "ViT")
    prefix = "text_encoder.bert." if any(key.startswith("text_encoder.bert.") for key in state_dict) else "text_encoder."
    bert_tensors = filter_prefix(state_dict, prefix)
    embeddings = {key: value for key, value in bert_tensors.items() if key.startswith("embeddings.")}
    sizes = dict(
        vocab_size=text.vocab_size, hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
        num_attention_heads=text.num_attention_heads, max_position_embeddings=text.max_position_embeddings,
        layer_norm_eps=text.layer_norm_eps, hidden_act=text.hidden_act, pad_token_id=text.pad_token_id,
    )
    unimodal = BertModel(
        BertConfig(num_hidden_layers=text.fusion_layer, type_vocab_size=text.type_vocab_size, **sizes),
        add_pooling_layer=False,
    )
    _load(unimodal, {**embeddings, **_text_layers(bert_tensors, 0, text.fusion_layer)}, "text encoder")
    fusion_layers = text.num_hidden_layers - text.fusion_layer
    fusion = BlipTextModel(
        BlipTextConfig(
            num_hidden_layers=fusion_layers, encoder_hidden_size=vision.hidden_size, bos_token_id=None,
            sep_token_id=None, eos_token_id=None, **sizes,
        ),
        add_pooling_layer=False,
    )
    fusion_tensors = {key: value for key, value in embeddings.items() if "token_type" not in key}
    fusion_tensors.update(_text_layers(bert_tensors, text.fusion_layer, text.num_hidden_layers))
    _load(fusion, fusion_tensors, "fusion encoder")

    pixel_values, input_ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    image_embeds = vit(pixel_values=pixel_values).last_hidden_state
    text_embeds = unimodal(input_ids=input_ids, attention_mask=mask).last_hidden_state
    image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long)
    fusion_hidden = fusion(
        encoder_embeds=text_embeds, attention_mask=mask, encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask, is_decoder=False,
    ).last_hidden_state

    def linear(name: str, states: torch.Tensor) -> torch.Tensor:
        return F.linear(states, state_dict[f"{name}.weight"].float(), state_dict[f"{name}.bias"].float())

    return {
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "fusion_hidden": fusion_hidden,
        "image_feat": F.normalize(linear("vision_proj", image_embeds[:, 0]), dim=-1),
        "text_feat": F.normalize(linear("text_proj", text_embeds[:, 0]), dim=-1),
        "itm_logits": linear("itm_head", fusion_hidden[:, 0]),
    }


@torch.no_grad()
def converted_outputs(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same outputs from a converted ALBEF head with the online towers (pretraining, masked LM, retrieval)."""
    pixel_values, input_ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
    image_embeds = model.encode_image(pixel_values).last_hidden_state
    text_embeds = model.encode_text(input_ids, mask).last_hidden_state
    fusion_hidden = model.fuse(text_embeds, image_embeds, mask).last_hidden_state
    return {
        "image_embeds": image_embeds,
        "text_embeds": text_embeds,
        "fusion_hidden": fusion_hidden,
        "image_feat": F.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1),
        "text_feat": F.normalize(model.text_proj(text_embeds[:, 0]), dim=-1),
        "itm_logits": model.itm_head(fusion_hidden[:, 0]),
    }
