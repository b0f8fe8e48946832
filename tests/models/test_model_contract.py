"""The shared model contract (``tests/helpers/model_contract.py``) run on every head class of CLIP, ALBEF, BLIP, ViLT,
VLMo and CoCa.

A new head or architecture adds one :class:`ModelContractCase` to ``CASES`` (a tiny config factory, an inputs
factory, what it supports) and gets every check. A check a head fails today is listed in ``KNOWN_FAILURES`` with the
defect: it runs as a strict xfail, so fixing the defect turns it into a failure until the entry is removed.
``torch.compile``/``torch.export`` checks are ``slow``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)

import hf_vlp  # noqa: F401  (registers the Auto classes)
from hf_vlp.models.albef import (
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForTextAssignment,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
    VlpAlbefModel,
    VlpAlbefPairedTextModel,
    VlpAlbefTextModel,
    VlpAlbefVisionModel,
)
from hf_vlp.models.blip import (
    VlpBlipForConditionalGeneration,
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
    VlpBlipModel,
    VlpBlipTextModel,
    VlpBlipVisionModel,
)
from hf_vlp.models.clip import (
    VlpClipForImageClassification,
    VlpClipModel,
    VlpClipTextModel,
    VlpClipTextModelWithProjection,
    VlpClipVisionModel,
    VlpClipVisionModelWithProjection,
)
from hf_vlp.models.coca import (
    VlpCocaForConditionalGeneration,
    VlpCocaModel,
    VlpCocaTextModel,
    VlpCocaVisionModel,
)
from hf_vlp.models.modeling_utils import takes_output_kwargs
from hf_vlp.models.vlmo import (
    VlpVlmoForImageTextRetrieval,
    VlpVlmoForMaskedLM,
    VlpVlmoForPretraining,
    VlpVlmoForQuestionAnswering,
    VlpVlmoForVisualReasoning,
    VlpVlmoModel,
)
from hf_vlp.models.vilt import (
    VlpViltForImageTextRetrieval,
    VlpViltForMaskedLM,
    VlpViltForPretraining,
    VlpViltForQuestionAnswering,
    VlpViltForVisualReasoning,
    VlpViltModel,
)
from tests.helpers.model_contract import CHECKS, EncoderSpec, Inputs, ModelContractCase, StatesSpec
from tests.helpers.tiny_models import (
    CLS_ID,
    MASK_ID,
    NO_DROPOUT,
    SEP_ID,
    tiny_albef_config,
    tiny_batch,
    tiny_blip_batch,
    tiny_blip_config,
    tiny_clip_config,
    tiny_clip_inputs,
    tiny_coca_batch,
    tiny_coca_config,
    tiny_vilt_batch,
    tiny_vilt_config,
    tiny_vlmo_batch,
    tiny_vlmo_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHITECTURE_PACKAGES = (
    "hf_vlp.models.clip", "hf_vlp.models.albef", "hf_vlp.models.blip", "hf_vlp.models.vilt", "hf_vlp.models.vlmo",
    "hf_vlp.models.coca",
)


# --------------------------------------------------------------------------------------------------- inputs


def pick(inputs: Inputs, *names: str) -> Inputs:
    return {name: inputs[name] for name in names}


def noise(batch: int, seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed + 100))


def in_batch_negatives(inputs: Inputs) -> Inputs:
    """Each text's negative image and each image's negative text: the next pair (fixed, so forwards are
    reproducible; the head would draw them otherwise)."""
    batch = inputs["input_ids"].shape[0]
    shifted = (torch.arange(batch) + 1) % batch
    return {"itm_negative_image_indices": shifted, "itm_negative_text_indices": shifted.clone()}


def class_labels(num_classes: int) -> Callable[[PretrainedConfig, Inputs], Inputs]:
    return lambda config, inputs: {"labels": torch.arange(inputs["input_ids"].shape[0]) % num_classes}


def answers(inputs: Inputs) -> Inputs:
    """One answer ``[CLS] w w [SEP]`` per question (the question's words); odd rows end in padding instead."""
    ids = inputs["input_ids"][:, :4].clone()
    ids[:, 0], ids[:, 3] = CLS_ID, SEP_ID
    mask = torch.ones_like(ids)
    mask[1::2, 3] = 0
    ids[mask == 0] = 0
    return {"answer_input_ids": ids, "answer_attention_mask": mask}


def return_loss(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    return {"return_loss": True}


NEGATIVES = ("itm_negative_image_indices", "itm_negative_text_indices")


def masked_lm_labels(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return {"labels": labels}


def retrieval_loss(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    return {"image_ids": torch.arange(inputs["input_ids"].shape[0]), **in_batch_negatives(inputs)}


# --------------------------------------------------------------------------------------------------- CLIP


def clip_config() -> PretrainedConfig:
    return tiny_clip_config()


def clip_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_clip_inputs(config, batch, seed)


def clip_image_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return pick(tiny_clip_inputs(clip_config(), batch, seed), "pixel_values")


def clip_text_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return pick(tiny_clip_inputs(clip_config(), batch, seed), "input_ids")


def vit_states(path: str, vision: PretrainedConfig) -> StatesSpec:
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    return StatesSpec(path, vision.num_hidden_layers, vision.num_attention_heads, tokens, vision.hidden_size)


def text_states(path: str, text: PretrainedConfig, inputs: Inputs, num_layers: int | None = None) -> StatesSpec:
    layers = text.num_hidden_layers if num_layers is None else num_layers
    return StatesSpec(path, layers, text.num_attention_heads, inputs["input_ids"].shape[1], text.hidden_size)


def dual_states(config: PretrainedConfig, inputs: Inputs, text_layers: int | None = None) -> tuple[StatesSpec, ...]:
    return (
        vit_states("vision_model_output", config.vision_config),
        text_states("text_model_output", config.text_config, inputs, text_layers),
    )


BOTH_FLAGS = dict(output_hidden_states=True, output_attentions=True)
CONTRASTIVE_LOGITS = ("logits_per_image", "logits_per_text")
IMAGE_FEATURES = EncoderSpec("get_image_features", ("pixel_values",))

CLIP_CASES = [
    ModelContractCase(
        VlpClipModel, clip_config, clip_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModel, AutoModelForZeroShotImageClassification), has_text_embeddings=True, **BOTH_FLAGS,
        states=lambda config, inputs: dual_states(config, inputs), batch_coupled_outputs=CONTRASTIVE_LOGITS,
        encoders=(IMAGE_FEATURES, EncoderSpec("get_text_features", ("input_ids",))), projected_features=True,
    ),
    ModelContractCase(
        VlpClipVisionModel, lambda: clip_config().vision_config, clip_image_inputs, auto_classes=(AutoModel,),
        **BOTH_FLAGS, states=lambda config, inputs: (vit_states("", config),),
        encoders=(EncoderSpec("forward", ("pixel_values",)),),
    ),
    ModelContractCase(
        VlpClipTextModel, lambda: clip_config().text_config, clip_text_inputs, auto_classes=(AutoModel,),
        has_text_embeddings=True, **BOTH_FLAGS, states=lambda config, inputs: (text_states("", config, inputs),),
        encoders=(EncoderSpec("forward", ("input_ids",)),),
    ),
    ModelContractCase(
        VlpClipVisionModelWithProjection, lambda: clip_config().vision_config, clip_image_inputs, **BOTH_FLAGS,
        states=lambda config, inputs: (vit_states("", config),), encoders=(EncoderSpec("forward", ("pixel_values",)),),
        embeds_name="image_embeds",
    ),
    ModelContractCase(
        VlpClipTextModelWithProjection, lambda: clip_config().text_config, clip_text_inputs,
        has_text_embeddings=True, **BOTH_FLAGS, states=lambda config, inputs: (text_states("", config, inputs),),
        encoders=(EncoderSpec("forward", ("input_ids",)),), embeds_name="text_embeds",
    ),
    ModelContractCase(
        VlpClipForImageClassification, lambda: tiny_clip_config(num_labels=3), clip_image_inputs,
        loss_inputs=lambda config, inputs: {"labels": torch.arange(inputs["pixel_values"].shape[0]) % 3},
        auto_classes=(AutoModelForImageClassification,), **BOTH_FLAGS,
        states=lambda config, inputs: (vit_states("", config.vision_config),),
    ),
]


# --------------------------------------------------------------------------------------------------- ALBEF

ALBEF_TEXT = {**NO_DROPOUT, "cls_token_id": CLS_ID, "mask_token_id": MASK_ID, "sep_token_id": SEP_ID}


def albef_config() -> PretrainedConfig:
    """ViT 2 layers (width 24), BERT 3 layers fusing from layer 1 (width 16), vocabulary 40."""
    return tiny_albef_config(text=ALBEF_TEXT, embed_dim=8, queue_size=8)


def albef_vqa_config() -> PretrainedConfig:
    """The answer decoder cross-attends to question states with the image width: both towers 16 wide."""
    return tiny_albef_config(vision={"hidden_size": 16}, text=ALBEF_TEXT, embed_dim=8, queue_size=8)


def albef_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_batch(batch, seed)


def albef_pair_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_batch(batch, seed, image_shape=(2, 3, 16, 16))


def albef_image_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return pick(tiny_batch(batch, seed), "pixel_values")


def albef_text_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    """The full text encoder (text + fusion layers) over noise image tokens."""
    text = pick(tiny_batch(batch, seed), "input_ids", "attention_mask")
    return {**text, "encoder_hidden_states": noise(batch, seed, 5, 24)}


def albef_paired_text_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    images = (noise(batch, seed, 5, 24), noise(batch, seed + 1, 5, 24))
    return {**pick(tiny_batch(batch, seed), "input_ids", "attention_mask"), "encoder_hidden_states": images}


def albef_model_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return {**tiny_batch(batch, seed), "output_itm": True}


def albef_pretraining_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    """Fixed hard negatives and MLM masking (token 2 of every caption masked)."""
    inputs = tiny_batch(batch, seed)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    masked = inputs["input_ids"].clone()
    masked[:, 2] = MASK_ID
    return {**inputs, **in_batch_negatives(inputs), "mlm_input_ids": masked, "mlm_labels": labels}


def albef_vqa_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    inputs = tiny_batch(batch, seed)
    return {**inputs, **answers(inputs)}


def albef_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    """Text mode runs layers [0, fusion_layer); the ITM fusion pass the other layers over the same tokens."""
    text = config.text_config
    return (
        *dual_states(config, inputs, text_layers=text.fusion_layer),
        text_states("multimodal_output", text, inputs, text.num_hidden_layers - text.fusion_layer),
    )


def albef_unimodal_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    """The momentum-contrastive heads return the online towers: the ViT and the text layers [0, fusion_layer)."""
    return dual_states(config, inputs, text_layers=config.text_config.fusion_layer)


ALBEF_CASES = [
    ModelContractCase(
        VlpAlbefModel, albef_config, albef_model_inputs, auto_classes=(AutoModel,), has_text_embeddings=True,
        **BOTH_FLAGS, states=albef_states, batch_coupled_outputs=CONTRASTIVE_LOGITS,
        encoders=(IMAGE_FEATURES, EncoderSpec("get_text_features", ("input_ids", "attention_mask"))),
        projected_features=True,
    ),
    ModelContractCase(
        VlpAlbefVisionModel, lambda: albef_config().vision_config, albef_image_inputs, auto_classes=(AutoModel,),
        **BOTH_FLAGS, states=lambda config, inputs: (vit_states("", config),),
        encoders=(EncoderSpec("forward", ("pixel_values",)),),
    ),
    ModelContractCase(
        VlpAlbefTextModel, lambda: albef_config().text_config, albef_text_inputs, auto_classes=(AutoModel,),
        has_text_embeddings=True, **BOTH_FLAGS, states=lambda config, inputs: (text_states("", config, inputs),),
        encoders=(EncoderSpec("forward", ("input_ids", "attention_mask", "encoder_hidden_states")),),
    ),
    ModelContractCase(
        VlpAlbefPairedTextModel, lambda: albef_config().text_config, albef_paired_text_inputs,
        has_text_embeddings=True, **BOTH_FLAGS,
        states=lambda config, inputs: (
            text_states("", config, inputs, config.fusion_layer + 2 * (config.num_hidden_layers - config.fusion_layer)),
        ),
        encoders=(EncoderSpec("forward", ("input_ids", "attention_mask", "encoder_hidden_states")),),
    ),
    ModelContractCase(
        VlpAlbefForMaskedLM, albef_config, albef_inputs, loss_inputs=masked_lm_labels,
        auto_classes=(AutoModelForMaskedLM,), has_text_embeddings=True, **BOTH_FLAGS,
        states=lambda config, inputs: (text_states("", config.text_config, inputs),),
    ),
    ModelContractCase(
        VlpAlbefForPretraining, albef_config, albef_pretraining_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModelForPreTraining,), has_text_embeddings=True, can_batch_split=False,
        batch_relative_inputs=NEGATIVES, **BOTH_FLAGS, states=albef_unimodal_states,
    ),
    ModelContractCase(
        VlpAlbefForImageTextRetrieval, albef_config, albef_inputs, loss_inputs=retrieval_loss,
        has_text_embeddings=True, can_batch_split=False, batch_relative_inputs=NEGATIVES, **BOTH_FLAGS,
        states=albef_unimodal_states,
    ),
    ModelContractCase(
        VlpAlbefForQuestionAnswering, albef_vqa_config, albef_vqa_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModelForVisualQuestionAnswering,), has_text_embeddings=True, **BOTH_FLAGS,
        states=lambda config, inputs: dual_states(config, inputs),
    ),
    ModelContractCase(
        VlpAlbefForVisualReasoning, albef_config, albef_pair_inputs, loss_inputs=class_labels(2),
        has_text_embeddings=True, **BOTH_FLAGS,
    ),
    ModelContractCase(
        VlpAlbefForTextAssignment, albef_config, albef_pair_inputs, loss_inputs=class_labels(3),
        has_text_embeddings=True, **BOTH_FLAGS,
    ),
    ModelContractCase(
        VlpAlbefForVisualEntailment, albef_config, albef_inputs, loss_inputs=class_labels(3),
        has_text_embeddings=True, **BOTH_FLAGS, states=lambda config, inputs: dual_states(config, inputs),
    ),
]


# --------------------------------------------------------------------------------------------------- BLIP


def blip_config() -> PretrainedConfig:
    """ViT 2 layers (width 24), MED 2 layers (width 16), vocabulary 40 with [DEC] 38 and [ENC] 39."""
    return tiny_blip_config(queue_size=8)


def blip_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_blip_batch(batch, seed)


def blip_image_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return pick(tiny_blip_batch(batch, seed), "pixel_values")


def blip_text_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    """The image-grounded encoder role over noise image tokens."""
    inputs = pick(tiny_blip_batch(batch, seed), "input_ids", "attention_mask")
    return {**inputs, "encoder_hidden_states": noise(batch, seed, 5, 24), "mode": "multimodal"}


def blip_model_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return {**tiny_blip_batch(batch, seed), "output_itm": True}


def blip_pretraining_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    inputs = tiny_blip_batch(batch, seed)
    return {**inputs, **in_batch_negatives(inputs)}


def blip_vqa_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    inputs = tiny_blip_batch(batch, seed)
    return {**inputs, **answers(inputs)}


def blip_pair_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_blip_batch(batch, seed, image_shape=(2, 3, 16, 16))


def blip_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    return (*dual_states(config, inputs), text_states("multimodal_output", config.text_config, inputs))


BLIP_CASES = [
    ModelContractCase(
        VlpBlipModel, blip_config, blip_model_inputs, auto_classes=(AutoModel, AutoModelForZeroShotImageClassification),
        has_text_embeddings=True, **BOTH_FLAGS, states=blip_states, batch_coupled_outputs=CONTRASTIVE_LOGITS,
        encoders=(IMAGE_FEATURES, EncoderSpec("get_text_features", ("input_ids", "attention_mask"))),
        projected_features=True, multimodal_features=True,
    ),
    ModelContractCase(
        VlpBlipVisionModel, lambda: blip_config().vision_config, blip_image_inputs, auto_classes=(AutoModel,),
        **BOTH_FLAGS, states=lambda config, inputs: (vit_states("", config),),
        encoders=(EncoderSpec("forward", ("pixel_values",)),),
    ),
    ModelContractCase(
        VlpBlipTextModel, lambda: blip_config().text_config, blip_text_inputs, auto_classes=(AutoModel,),
        has_text_embeddings=True, **BOTH_FLAGS, states=lambda config, inputs: (text_states("", config, inputs),),
        encoders=(EncoderSpec("forward", ("input_ids", "attention_mask", "encoder_hidden_states", "mode")),),
    ),
    ModelContractCase(
        VlpBlipForConditionalGeneration, blip_config, blip_inputs,
        loss_inputs=lambda config, inputs: {"labels": inputs["input_ids"].clone()},
        auto_classes=(AutoModelForImageTextToText,), has_text_embeddings=True, **BOTH_FLAGS,
        states=lambda config, inputs: (text_states("", config.text_config, inputs),),
    ),
    ModelContractCase(
        VlpBlipForQuestionAnswering, blip_config, blip_vqa_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModelForVisualQuestionAnswering,), has_text_embeddings=True, **BOTH_FLAGS,
        states=lambda config, inputs: dual_states(config, inputs),
    ),
    ModelContractCase(
        VlpBlipForVisualReasoning, blip_config, blip_pair_inputs, loss_inputs=class_labels(2),
        has_text_embeddings=True, **BOTH_FLAGS,
    ),
    ModelContractCase(
        VlpBlipForPretraining, blip_config, blip_pretraining_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModelForPreTraining,), has_text_embeddings=True, can_batch_split=False,
        batch_relative_inputs=NEGATIVES, **BOTH_FLAGS, states=lambda config, inputs: dual_states(config, inputs),
    ),
    ModelContractCase(
        VlpBlipForImageTextRetrieval, blip_config, blip_inputs, loss_inputs=retrieval_loss,
        has_text_embeddings=True, can_batch_split=False, batch_relative_inputs=NEGATIVES, **BOTH_FLAGS,
        states=lambda config, inputs: dual_states(config, inputs),
    ),
]

# ViLT: every row's image has the same size (16 x 24 px: a 2 x 3 patch grid from the 2 x 2 position grid), so a batch
# split keeps the image-token count; mixed sizes are tested in tests/models/vilt
VILT_IMAGES = {"image_sizes": ((16, 24),)}


def vilt_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_vilt_batch(batch, seed, **VILT_IMAGES)


def vilt_pair_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    second = tiny_vilt_batch(batch, seed + 1, suffix="_2", **VILT_IMAGES)
    return {**vilt_inputs(config, batch, seed), **pick(second, "pixel_values_2", "pixel_mask_2")}


def vilt_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    """One stack over the text tokens, the image class token and the 2 x 3 patches."""
    seq_len = inputs["input_ids"].shape[1] + 1 + 6
    return (StatesSpec("", config.num_hidden_layers, config.num_attention_heads, seq_len, config.hidden_size),)


def vilt_pretraining_loss(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    batch = inputs["input_ids"].shape[0]
    return {**masked_lm_labels(config, inputs), "itm_labels": torch.arange(batch) % 2}


def vilt_answer_scores(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    batch = inputs["input_ids"].shape[0]
    return {"labels": torch.rand(batch, config.num_labels, generator=torch.Generator().manual_seed(batch))}


def vilt_ranking_groups(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    """Each image with its caption and the next row's as the negative: ``[B, 2, L]``."""
    def grouped(tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([tensor, tensor.roll(1, dims=0)], dim=1)

    return {"input_ids": grouped(inputs["input_ids"]), "attention_mask": grouped(inputs["attention_mask"])}


VILT_CASES = [
    ModelContractCase(
        VlpViltModel, tiny_vilt_config, vilt_inputs, auto_classes=(AutoModel,), has_text_embeddings=True,
        **BOTH_FLAGS, states=vilt_states,
    ),
    ModelContractCase(
        VlpViltForMaskedLM, tiny_vilt_config, vilt_inputs, loss_inputs=masked_lm_labels,
        auto_classes=(AutoModelForMaskedLM,), has_text_embeddings=True, **BOTH_FLAGS, states=vilt_states,
    ),
    ModelContractCase(
        VlpViltForPretraining, tiny_vilt_config, vilt_inputs, loss_inputs=vilt_pretraining_loss,
        auto_classes=(AutoModelForPreTraining,), has_text_embeddings=True, **BOTH_FLAGS, states=vilt_states,
    ),
    ModelContractCase(
        VlpViltForQuestionAnswering, tiny_vilt_config, vilt_inputs, loss_inputs=vilt_answer_scores,
        auto_classes=(AutoModelForVisualQuestionAnswering,), has_text_embeddings=True, **BOTH_FLAGS,
        states=vilt_states,
    ),
    ModelContractCase(
        VlpViltForVisualReasoning, tiny_vilt_config, vilt_pair_inputs, loss_inputs=class_labels(2),
        has_text_embeddings=True, **BOTH_FLAGS, states=vilt_states,
    ),
    ModelContractCase(
        VlpViltForImageTextRetrieval, tiny_vilt_config, vilt_inputs, loss_inputs=vilt_ranking_groups,
        has_text_embeddings=True, **BOTH_FLAGS,  # per-layer states of the B x T pairs, not of the B images
    ),
]


# --------------------------------------------------------------------------------------------------- VLMo


def vlmo_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_vlmo_batch(batch, seed)


def vlmo_pair_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return {**vlmo_inputs(config, batch, seed), "pixel_values_2": tiny_vlmo_batch(batch, seed + 1)["pixel_values"]}


def vlmo_pretraining_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    inputs = vlmo_inputs(config, batch, seed)
    masked = inputs["input_ids"].clone()
    masked[:, 2] = config.mask_token_id
    labels = torch.full_like(masked, -100)
    labels[:, 2] = inputs["input_ids"][:, 2]
    return {**inputs, **in_batch_negatives(inputs), "mlm_input_ids": masked, "mlm_labels": labels}


def vlmo_unimodal_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    """The image-only pass (class token + 4 patches) and the text-only pass, every block each."""
    layers, heads, width = config.num_hidden_layers, config.num_attention_heads, config.hidden_size
    patches = (config.image_size // config.patch_size) ** 2
    return (
        StatesSpec("vision_model_output", layers, heads, 1 + patches, width),
        StatesSpec("text_model_output", layers, heads, inputs["input_ids"].shape[1], width),
    )


def vlmo_fused_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    """One fused pass over the text tokens, the image class token and the 4 patches."""
    patches = (config.image_size // config.patch_size) ** 2
    seq_len = inputs["input_ids"].shape[1] + 1 + patches
    return (StatesSpec("", config.num_hidden_layers, config.num_attention_heads, seq_len, config.hidden_size),)


def vlmo_answer_scores(config: PretrainedConfig, inputs: Inputs) -> Inputs:
    batch = inputs["input_ids"].shape[0]
    return {"labels": torch.rand(batch, config.num_labels, generator=torch.Generator().manual_seed(batch))}


VLMO_CASES = [
    ModelContractCase(
        VlpVlmoModel, tiny_vlmo_config, vlmo_inputs,
        auto_classes=(AutoModel, AutoModelForZeroShotImageClassification), has_text_embeddings=True, **BOTH_FLAGS,
        states=vlmo_unimodal_states, batch_coupled_outputs=CONTRASTIVE_LOGITS,
        encoders=(IMAGE_FEATURES, EncoderSpec("get_text_features", ("input_ids", "attention_mask"))),
        projected_features=True, multimodal_features=True,
    ),
    ModelContractCase(
        VlpVlmoForMaskedLM, tiny_vlmo_config, vlmo_inputs, loss_inputs=masked_lm_labels,
        auto_classes=(AutoModelForMaskedLM,), has_text_embeddings=True, **BOTH_FLAGS, states=vlmo_fused_states,
    ),
    ModelContractCase(
        VlpVlmoForPretraining, tiny_vlmo_config, vlmo_pretraining_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModelForPreTraining,), has_text_embeddings=True, can_batch_split=False,
        batch_relative_inputs=NEGATIVES, **BOTH_FLAGS, states=vlmo_unimodal_states,
    ),
    ModelContractCase(
        VlpVlmoForQuestionAnswering, tiny_vlmo_config, vlmo_inputs, loss_inputs=vlmo_answer_scores,
        auto_classes=(AutoModelForVisualQuestionAnswering,), has_text_embeddings=True, **BOTH_FLAGS,
        states=vlmo_fused_states,
    ),
    ModelContractCase(
        VlpVlmoForVisualReasoning, tiny_vlmo_config, vlmo_pair_inputs, loss_inputs=class_labels(2),
        has_text_embeddings=True, **BOTH_FLAGS,
    ),
    ModelContractCase(
        VlpVlmoForImageTextRetrieval, tiny_vlmo_config, vlmo_inputs, loss_inputs=return_loss,
        has_text_embeddings=True, can_batch_split=False, **BOTH_FLAGS, states=vlmo_unimodal_states,
    ),
]


# --------------------------------------------------------------------------------------------------- CoCa


def coca_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return tiny_coca_batch(batch, seed)


def coca_image_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return pick(tiny_coca_batch(batch, seed), "pixel_values")


def coca_text_inputs(config: PretrainedConfig, batch: int, seed: int) -> Inputs:
    return pick(tiny_coca_batch(batch, seed), "input_ids", "attention_mask")


def coca_text_states(path: str, text: PretrainedConfig, inputs: Inputs) -> StatesSpec:
    """The unimodal text decoder runs over the text tokens and its appended class token."""
    seq_len = inputs["input_ids"].shape[1] + 1
    return StatesSpec(path, text.num_hidden_layers, text.num_attention_heads, seq_len, text.hidden_size)


def coca_dual_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    return vit_states("vision_model_output", config.vision_config), coca_text_states(
        "text_model_output", config.text_config, inputs
    )


def coca_captioning_states(config: PretrainedConfig, inputs: Inputs) -> tuple[StatesSpec, ...]:
    """Both towers, and at the top level the multimodal decoder over the text tokens (no class token)."""
    decoder = config.decoder_config
    return (*coca_dual_states(config, inputs), text_states("", decoder, inputs))


COCA_CASES = [
    ModelContractCase(
        VlpCocaModel, tiny_coca_config, coca_inputs, loss_inputs=return_loss,
        auto_classes=(AutoModel, AutoModelForZeroShotImageClassification), has_text_embeddings=True, **BOTH_FLAGS,
        states=coca_dual_states, batch_coupled_outputs=CONTRASTIVE_LOGITS,
        encoders=(IMAGE_FEATURES, EncoderSpec("get_text_features", ("input_ids", "attention_mask"))),
        projected_features=True,
    ),
    ModelContractCase(
        VlpCocaVisionModel, lambda: tiny_coca_config().vision_config, coca_image_inputs, auto_classes=(AutoModel,),
        **BOTH_FLAGS, states=lambda config, inputs: (vit_states("", config),),
        encoders=(EncoderSpec("forward", ("pixel_values",)),),
    ),
    ModelContractCase(
        VlpCocaTextModel, lambda: tiny_coca_config().text_config, coca_text_inputs, auto_classes=(AutoModel,),
        has_text_embeddings=True, **BOTH_FLAGS, states=lambda config, inputs: (coca_text_states("", config, inputs),),
        encoders=(EncoderSpec("forward", ("input_ids", "attention_mask")),),
    ),
    ModelContractCase(
        VlpCocaForConditionalGeneration, tiny_coca_config, coca_inputs,
        loss_inputs=lambda config, inputs: {"labels": inputs["input_ids"].clone()},
        auto_classes=(AutoModelForImageTextToText,), has_text_embeddings=True, **BOTH_FLAGS,
        states=coca_captioning_states, batch_coupled_outputs=CONTRASTIVE_LOGITS,
    ),
]

CASES: list[ModelContractCase] = [
    *CLIP_CASES, *ALBEF_CASES, *BLIP_CASES, *VILT_CASES, *VLMO_CASES, *COCA_CASES,
]


# --------------------------------------------------------------------------------------------------- known failures

# KNOWN_FAILURES maps (check, head class) -> the reason a defect is still open; each runs as a strict xfail, so a fix
# turns it into a failure until its entry is removed. Every defect the tester found at its introduction is fixed.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def contract_params(check: str) -> list:
    params = []
    for case in CASES:
        if not CHECKS[check].applies(case):
            continue
        marks = []
        reason = KNOWN_FAILURES.get((check, case.name))
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


def run_check(check: str, case: ModelContractCase, tmp_path: Path) -> None:
    CHECKS[check].function(case, tmp_path)


# --------------------------------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("case", contract_params("save_load"))
def test_save_load(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("save_load", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("auto_resolution"))
def test_auto_resolution(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("auto_resolution", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("return_dict_false"))
def test_return_dict_false(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("return_dict_false", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("output_hidden_states"))
def test_output_hidden_states(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("output_hidden_states", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("output_attentions"))
def test_output_attentions(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("output_attentions", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("sdpa_matches_eager"))
def test_sdpa_matches_eager(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("sdpa_matches_eager", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("gradient_checkpointing"))
def test_gradient_checkpointing(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("gradient_checkpointing", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("batching_equivalence"))
def test_batching_equivalence(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("batching_equivalence", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("determinism"))
def test_determinism(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("determinism", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("input_embeddings"))
def test_input_embeddings(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("input_embeddings", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("resize_token_embeddings"))
def test_resize_token_embeddings(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("resize_token_embeddings", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("trainer_step"))
def test_trainer_step(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("trainer_step", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("main_input_name"))
def test_main_input_name(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("main_input_name", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("projected_features"))
def test_projected_features(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("projected_features", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("projection_output_names"))
def test_projection_output_names(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("projection_output_names", case, tmp_path)


@pytest.mark.parametrize("case", contract_params("multimodal_features"))
def test_multimodal_features(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("multimodal_features", case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", contract_params("torch_compile"))
def test_torch_compile(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("torch_compile", case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", contract_params("torch_export"))
def test_torch_export(case: ModelContractCase, tmp_path: Path) -> None:
    run_check("torch_export", case, tmp_path)


# --------------------------------------------------------------------------------------------------- the table itself


def test_every_head_class_has_one_case() -> None:
    """Every model class an architecture exports (bases aside) is a case: a new head cannot skip the contract."""
    exported = set()
    for package in ARCHITECTURE_PACKAGES:
        module = importlib.import_module(package)
        for value in vars(module).values():
            if (
                isinstance(value, type) and issubclass(value, PreTrainedModel)
                and not value.__name__.endswith(("PreTrainedModel", "MomentumModel"))
            ):
                exported.add(value.__name__)
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "a head class has two cases"
    assert exported == set(names), (
        f"no case for {sorted(exported - set(names))}; not exported: {sorted(set(names) - exported)}"
    )


def test_every_check_is_tested_and_every_known_failure_applies() -> None:
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert set(CHECKS) <= tested, f"checks without a test function: {sorted(set(CHECKS) - tested)}"
    by_name = {case.name: case for case in CASES}
    stale = [key for key in KNOWN_FAILURES if key[0] not in CHECKS or key[1] not in by_name
             or not CHECKS[key[0]].applies(by_name[key[1]])]
    assert not stale, f"KNOWN_FAILURES entries that match no (check, case): {stale}"


def test_case_flags_match_forward_signatures() -> None:
    """A flag the forward names is declared by its case, and a declared flag reaches the forward (by name or
    ``**kwargs``): a case cannot silently skip the output-flag checks."""
    for case in CASES:
        parameters = inspect.signature(case.model_class.forward).parameters
        takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        for flag in ("output_hidden_states", "output_attentions"):
            declared = getattr(case, flag)
            named = flag in parameters or takes_output_kwargs(case.model_class.forward)
            assert declared or not named, f"{case.name}.forward takes {flag}: declare it in its case"
            assert not declared or flag in parameters or takes_kwargs, f"{case.name}.forward cannot take {flag}"
