"""BLIP for NLVR2 (``models/blip_nlvr.py``, ``models/nlvr_encoder.py``): is a statement true of a pair of images?

The image-grounded encoder (``[ENC]`` first) cross-attends to both images in every layer: each layer's cross-attention
sub-layer holds two attentions, one per image (the original's ``crossattention.self0``/``self1`` with output
projections ``dense0``/``dense1``), whose outputs are averaged in layers 0-5 and concatenated then projected by a new
``merge`` ``Linear(2D, D)`` in layers >= 6 (hard-coded ``layer_num >= 6`` in the original), before the layer's one
residual LayerNorm. ``cls_head`` (``Linear -> ReLU -> Linear(2)``) classifies the ``[ENC]`` state; the loss is plain
cross-entropy (no momentum model).

The layers stay :class:`hf_vlp.modules.text.PostNormBlock`; only their ``cross_attn`` module is replaced by a
:class:`PairedCrossAttention`, which reads the two images' tokens concatenated along the sequence.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ...utils.classification import NLVR2_LABELS, check_class_labels, flatten_image_pairs, set_task_labels
from ...modules.attention import Attention
from ...modules.heads import MlpClassifierHead
from ...modules.transformer import BlockOptions
from ...modules.vision import interpolate_grid_embeddings
from ...modules.towers import text_block_options
from ..modeling_utils import OutputKwargs
from ..towers import ImageTextClassifierOutput
from .configuration_blip import VlpBlipConfig
from .modeling_blip import (
    BlipTowersMixin,
    VlpBlipModel,
    VlpBlipPreTrainedModel,
    VlpBlipTextModel,
    check_no_token_types,
    with_first_token,
)

MERGE_FROM_LAYER = 6  # models/nlvr_encoder.py: BertSelfOutput(merge=(is_cross_attention and layer_num >= 6))
# the classes whose save_pretrained directories hold the pre-trained image-grounded encoder NLVR2 starts from
BLIP_ENCODER_ARCHITECTURES = ("VlpBlipModel", "VlpBlipForPretraining", "VlpBlipForImageTextRetrieval")


class PairedCrossAttention(nn.Module):
    """Cross-attention to two images, a drop-in for a :class:`~hf_vlp.modules.text.PostNormBlock`'s ``cross_attn``.

    ``encoder_hidden_states`` ``[B, 2N, D_v]`` are the first image's tokens followed by the second's; ``attn0`` attends
    the first half, ``attn1`` the second (each with its own ``q``, ``kv`` and output projection ``out_proj``). Their
    outputs are averaged, or with ``merge`` concatenated and projected by ``merge`` ``Linear(2D, D)``.
    """

    def __init__(self, options: BlockOptions, kv_size: int, *, merge: bool, config: Any = None) -> None:
        super().__init__()

        def attention() -> Attention:
            return Attention(
                options.hidden_size,
                options.num_heads,
                config=config,
                cross_attention=True,
                kv_size=kv_size,
                qkv_bias=options.qkv_bias,
                dropout=options.attention_dropout,
            )

        self.attn0 = attention()
        self.attn1 = attention()
        self.merge = nn.Linear(2 * options.hidden_size, options.hidden_size) if merge else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``attention_mask``: additive ``[B, 1, 1, 2N]`` over both images' tokens, or None. Returns the combined
        output and, with ``output_attentions``, both probability maps side by side ``[B, H, L, 2N]`` (each half sums
        to one over its image)."""
        if encoder_hidden_states.shape[1] % 2:
            raise ValueError(
                "the paired cross-attention reads two images' tokens concatenated along the sequence: got an odd "
                f"length {encoder_hidden_states.shape[1]}"
            )
        first, second = encoder_hidden_states.chunk(2, dim=1)
        masks = attention_mask.chunk(2, dim=-1) if attention_mask is not None else (None, None)
        out0, weights0 = self.attn0(hidden_states, first, attention_mask=masks[0], output_attentions=output_attentions)
        out1, weights1 = self.attn1(hidden_states, second, attention_mask=masks[1], output_attentions=output_attentions)
        combined = self.merge(torch.cat([out0, out1], dim=-1)) if self.merge is not None else (out0 + out1) / 2
        weights = torch.cat([weights0, weights1], dim=-1) if output_attentions else None
        return combined, weights


def pair_cross_attentions(text_model: VlpBlipTextModel, merge_from_layer: int = MERGE_FROM_LAYER) -> None:
    """Replace every layer's ``cross_attn`` of ``text_model`` by a fresh :class:`PairedCrossAttention` (merging from
    layer ``merge_from_layer`` on)."""
    config = text_model.config
    options = text_block_options(config)
    for index, layer in enumerate(text_model.transformer.encoder.layers):
        layer.cross_attn = PairedCrossAttention(
            options, config.encoder_width, merge=index >= merge_from_layer, config=config
        )


def paired_text_state_dict(text_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An NLVR2 text model's state from a pre-trained BLIP text model's: every ``cross_attn.*`` tensor copied into
    both ``cross_attn.attn0.*`` and ``cross_attn.attn1.*`` (the original's loader duplicates ``crossattention.self``
    into ``self0``/``self1`` and ``output.dense`` into ``dense0``/``dense1``); the decoder's self-attention dropped."""
    paired: dict[str, torch.Tensor] = {}
    for key, value in text_state.items():
        if ".causal_attn." in key or ".norm_causal." in key:
            continue
        if ".cross_attn." in key:
            head, tail = key.split(".cross_attn.", 1)
            paired[f"{head}.cross_attn.attn0.{tail}"] = value
            paired[f"{head}.cross_attn.attn1.{tail}"] = value
        else:
            paired[key] = value
    return paired


@dataclass
class VlpBlipForVisualReasoningOutput(ImageTextClassifierOutput):
    """NLVR2 outputs: ``logits`` ``[B, 2]`` (0 = False, 1 = True), ``loss`` only with ``labels``. With
    ``output_hidden_states``: ``last_hidden_state`` the encoder states ``[B, L, D]`` and ``image_hidden_states`` the ViT
    tokens ``[B, 2, N, D_v]``."""


class VlpBlipForVisualReasoning(BlipTowersMixin, VlpBlipPreTrainedModel):
    """BLIP for NLVR2 (``models/blip_nlvr.py``).

    ``forward(input_ids, pixel_values [B, 2, C, H, W], attention_mask, labels)`` returns ``logits`` ``[B, 2]`` (labels
    0 = False, 1 = True, ``config.id2label``) and the cross-entropy ``loss``. ``input_ids`` are the processor's
    ``[CLS] statement [SEP]``; ``[ENC]`` is put first here. Weights: ``vision_model``, ``text_model`` (encoder role,
    every layer's ``cross_attn`` a :class:`PairedCrossAttention`) and ``cls_head``. Start from pre-trained BLIP with
    :meth:`from_blip_pretrained` (cross-attention duplicated per image, ``merge`` and ``cls_head`` new, drop path 0.1
    as the original builds the ViT), or convert a released NLVR2 checkpoint (``convert_blip.py --head nlvr2``).
    """

    text_roles = ("encoder",)
    task_labels = NLVR2_LABELS
    merge_from_layer = MERGE_FROM_LAYER
    model_card_pipeline_tag = None  # no transformers pipeline classifies an image pair against a statement
    model_card_task = "visual-reasoning"

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        set_task_labels(config, self.task_labels)
        self.build_towers(config)
        pair_cross_attentions(self.text_model, self.merge_from_layer)
        self.cls_head = MlpClassifierHead(config.text_config.hidden_size, len(self.task_labels))
        self.post_init()

    def encode_image_pairs(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **flags: bool
    ) -> BaseModelOutputWithPooling:
        """The image tower over both images of every example in one pass over the ``2B`` images: its output, whose
        ``last_hidden_state`` is ``[B, 2, N, D_v]`` (the other fields keep the flat ``2B`` rows)."""
        outputs = self.encode_image(flatten_image_pairs(pixel_values), interpolate_pos_encoding, **flags)
        states = outputs.last_hidden_state
        outputs.last_hidden_state = states.view(pixel_values.shape[0], 2, *states.shape[1:])
        return outputs

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpBlipForVisualReasoningOutput | tuple:
        """Is statement ``b`` true of image pair ``b``? ``logits`` ``[B, 2]``; with ``labels`` ``[B]`` (0/1) the
        cross-entropy ``loss``, as the original's ``train=True`` forward. ``output_hidden_states`` also returns the
        fused text states and the image tokens; the towers' outputs hold the per-layer states/attentions asked for."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        check_no_token_types(token_type_ids)
        vision_outputs = self.encode_image_pairs(pixel_values, interpolate_pos_encoding, **kwargs)
        image_states = vision_outputs.last_hidden_state
        if image_states.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"pass one image pair per statement: got {image_states.shape[0]} pairs and {input_ids.shape[0]} texts"
            )
        if labels is not None:
            labels = check_class_labels(labels.to(input_ids.device), input_ids.shape[0], self.task_labels)
        text_outputs = self.text_model(
            with_first_token(input_ids, self._special_id("enc_token_id")),
            attention_mask,
            encoder_hidden_states=image_states.flatten(1, 2),  # [B, 2N, D_v]: first image's tokens, then the second's
            mode="multimodal",
            return_dict=True,
            **kwargs,
        )
        text_states = text_outputs.last_hidden_state
        logits = self.cls_head(text_states[:, 0])
        loss = nn.functional.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return VlpBlipForVisualReasoningOutput.from_states(
            loss, logits, text_states, image_states, kwargs["output_hidden_states"], vision_outputs, text_outputs
        )

    @classmethod
    def from_blip_pretrained(
        cls,
        source: Any,
        *,
        image_size: int | None = None,
        drop_path_rate: float = 0.1,
        **from_pretrained_kwargs: Any,
    ) -> "VlpBlipForVisualReasoning":
        """Start NLVR2 fine-tuning from pre-trained BLIP as ``blip_nlvr.py``'s loader does: the ViT and the text
        encoder copied, each layer's cross-attention copied into both per-image attentions, ``merge`` layers and
        ``cls_head`` new.

        ``source``: a BLIP model holding the encoder role (``VlpBlipModel``, ``VlpBlipForPretraining``,
        ``VlpBlipForImageTextRetrieval``) or the directory of one (``from_pretrained_kwargs`` go to
        ``VlpBlipModel.from_pretrained``). ``image_size`` (384 in ``nlvr.yaml``) resizes the position embeddings
        bicubically; ``drop_path_rate`` is the ViT's stochastic depth (the original builds it with 0.1). Returned in
        eval mode, like ``from_pretrained``.
        """
        if isinstance(source, (str, os.PathLike)):
            directory = source
            source = VlpBlipModel.from_pretrained(directory, **from_pretrained_kwargs)
            architectures = source.config.architectures or []
            if architectures and not set(architectures) & set(BLIP_ENCODER_ARCHITECTURES):
                raise ValueError(
                    f"{directory} holds {architectures}, not BLIP's image-grounded encoder "
                    f"({', '.join(BLIP_ENCODER_ARCHITECTURES)}); start NLVR2 from a pre-training or retrieval model"
                )
        elif from_pretrained_kwargs:
            raise TypeError(
                f"from_pretrained keyword arguments {sorted(from_pretrained_kwargs)} only apply when `source` is a "
                "directory"
            )
        text_model = getattr(source, "text_model", None)
        if not isinstance(source, VlpBlipPreTrainedModel) or not isinstance(text_model, VlpBlipTextModel) or (
            "encoder" not in text_model.text_roles
        ):
            raise TypeError(
                "source must be a BLIP model holding the image-grounded encoder (VlpBlipModel, VlpBlipForPretraining, "
                f"VlpBlipForImageTextRetrieval) or the directory of one, got {type(source).__name__}"
            )
        if isinstance(source, cls):
            raise TypeError("source is already an NLVR2 model; load its directory with from_pretrained")
        config = copy.deepcopy(source.config)
        config.architectures = None
        vision = config.vision_config
        source_grid = vision.image_size // vision.patch_size
        if image_size is not None:
            vision.image_size = image_size
        vision.drop_path_rate = drop_path_rate
        vision.validate_architecture()
        model = cls(config)
        vision_state = dict(source.vision_model.state_dict())
        grid = vision.image_size // vision.patch_size
        if grid != source_grid:
            key = "transformer.position_embedding"
            vision_state[key] = interpolate_grid_embeddings(vision_state[key], 1, source_grid, (grid, grid))
        model.vision_model.load_state_dict(vision_state)
        missing, unexpected = model.text_model.load_state_dict(
            paired_text_state_dict(text_model.state_dict()), strict=False
        )
        new = [key for key in missing if ".cross_attn.merge." not in key]
        if new or unexpected:
            raise ValueError(f"the pre-trained text model does not fit the NLVR2 encoder: missing {new}, unexpected "
                             f"{unexpected}")
        return model.to(device=source.device, dtype=source.dtype).eval()


__all__ = [
    "PairedCrossAttention",
    "VlpBlipForVisualReasoning",
    "VlpBlipForVisualReasoningOutput",
    "pair_cross_attentions",
    "paired_text_state_dict",
]
