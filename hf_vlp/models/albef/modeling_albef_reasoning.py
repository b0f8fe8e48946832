"""ALBEF's visual-reasoning heads: NLVR2, its text-assignment pre-training, and SNLI-VE.

NLVR2 (``models/model_nlvr.py``) judges a statement about a *pair* of images. The text encoder keeps its
``fusion_layer`` text-only layers and turns every pre-trained fusion layer into a pair: with fusion layer ``f`` and
pair ``i``, layer ``f + 2i`` cross-attends to the first image and layer ``f + 2i + 1`` to the second; the two share
their cross-attention key/value projection (one ``kv`` parameter), everything else is separate:

    text -> text layers [0, f) -> (pair 0: image 0, image 1) -> ... -> (pair n-1) -> [CLS] -> cls_head -> [B, 2]

``config.text_config.num_hidden_layers`` keeps counting the pre-trained layers (12 for ALBEF-base); the paired
encoder has ``f + 2 * (num_hidden_layers - f)`` layers (18). Text assignment (``models/model_pretrain_nlvr.py``)
pre-trains that encoder for one epoch before NLVR2: each text gets its own image and a similar one in random order
(label 0/1: which one it describes) or two similar images (label 2: neither). SNLI-VE (``models/model_ve.py``) runs
the ordinary 12-layer multimodal encoder on (premise image, hypothesis) and classifies ``[CLS]`` into 3 classes.

NLVR2 and SNLI-VE train with momentum distillation: ``loss = (1 - alpha) * CE + alpha * soft-CE`` against the
frozen EMA copy of the whole model (``hf_vlp.MomentumCallback`` runs the EMA step and ramps ``alpha``).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling, ModelOutput

from ...integrations.compat import StructuralTiedWeightsMixin
from ...utils.classification import NLVR2_LABELS, check_class_labels, flatten_image_pairs, set_task_labels
from ...objectives.losses import soft_target_cross_entropy
from ...objectives.momentum import ModulePair, MomentumModelMixin
from ...modules.attention import padding_mask
from ...modules.transformer import LayerOutputs
from ...modules.heads import MlpClassifierHead
from ...modules.vision import interpolate_grid_embeddings
from ..modeling_utils import OutputKwargs
from ..towers import DualTowerHeadMixin, ImageTextClassifierOutput, ImageTextInputs, TextEmbeddingsMixin
from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig
from .modeling_albef import (
    VlpAlbefModel,
    VlpAlbefPreTrainedModel,
    VlpAlbefTextModel,
    VlpAlbefVisionModel,
    build_text_tower,
)

SNLI_VE_LABELS = ("contradiction", "neutral", "entailment")  # dataset/ve_dataset.py
TEXT_ASSIGNMENT_LABELS = ("first_image", "second_image", "neither")  # model_pretrain_nlvr.py
TEXT_ASSIGNMENT_TEMPERATURE = 0.07  # fixed in model_pretrain_nlvr.py (not the learned temp)
# architectures whose save_pretrained directories hold ALBEF's pre-trained towers (from_albef_pretrained sources)
ALBEF_PRETRAINED_ARCHITECTURES = (
    "VlpAlbefModel", "VlpAlbefForPretraining", "VlpAlbefForMaskedLM", "VlpAlbefForImageTextRetrieval",
)


# --------------------------------------------------------------------------------------------------- building blocks


def paired_num_layers(config: VlpAlbefTextConfig) -> int:
    """Layers of the NLVR2 encoder: the text layers plus two per pre-trained fusion layer (18 for ALBEF-base)."""
    return config.fusion_layer + 2 * (config.num_hidden_layers - config.fusion_layer)


def paired_layer_source(index: int, fusion_layer: int) -> int:
    """The pre-trained layer that paired layer ``index`` starts from (``Pretrain_nlvr.py``: 6 + 2i, 7 + 2i <- 6 + i)."""
    return index if index < fusion_layer else fusion_layer + (index - fusion_layer) // 2


AlbefClassifierHead = MlpClassifierHead  # the former name, still exported


class VlpAlbefPairedTextModel(StructuralTiedWeightsMixin, TextEmbeddingsMixin, VlpAlbefPreTrainedModel):
    """The NLVR2 text encoder: ``fusion_layer`` text layers, then each pre-trained fusion layer as a pair of layers
    cross-attending to the first and the second image, the pair sharing one ``cross_attn.kv`` parameter.

    ``config`` is the pre-trained ALBEF text config; the encoder builds :func:`paired_num_layers` layers. The tie is
    part of the architecture (declared in ``_tied_weights_keys`` whatever ``tie_word_embeddings`` says): only the
    first layer of a pair stores ``kv`` in a saved checkpoint and loading re-ties it.
    """

    config_class = VlpAlbefTextConfig  # the annotation alone is a string here (postponed annotations)
    input_modalities = ("text",)

    def __init__(self, config: VlpAlbefTextConfig) -> None:
        super().__init__(config)
        if config.fusion_layer >= config.num_hidden_layers:
            raise ValueError(
                f"the paired (NLVR2) encoder needs at least one fusion layer to turn into a pair of image layers: "
                f"fusion_layer {config.fusion_layer} must be below num_hidden_layers {config.num_hidden_layers}"
            )
        self.transformer = build_text_tower(config, num_layers=paired_num_layers(config))
        self._tied_weights_keys = self._shared_cross_attention_keys()
        self.post_init()

    def _shared_cross_attention_keys(self) -> dict[str, str]:
        """``{second layer's kv.<p>: first layer's kv.<p>}`` per pair (the original's ``share_cross_attention``)."""
        layers = self.transformer.encoder.layers
        fusion = self.config.fusion_layer
        tied = {}
        for first in range(fusion, len(layers), 2):
            for name, _ in layers[first].cross_attn.kv.named_parameters():
                prefix = "transformer.encoder.layers"
                tied[f"{prefix}.{first + 1}.cross_attn.kv.{name}"] = f"{prefix}.{first}.cross_attn.kv.{name}"
        return tied

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_hidden_states: Sequence[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        encoder_attention_mask: Sequence[torch.Tensor | None] | None = None,
        **kwargs: Unpack[OutputKwargs],
    ) -> BaseModelOutputWithCrossAttentions | tuple:
        """Encode ``input_ids`` ``[B, L]`` grounded on two images: ``encoder_hidden_states`` = (first image tokens,
        second image tokens), each ``[B, N, D_vision]``; ``encoder_attention_mask`` their optional 1/0 masks."""
        if len(encoder_hidden_states) != 2:
            raise ValueError(
                f"encoder_hidden_states must hold the tokens of exactly two images, got {len(encoder_hidden_states)}"
            )
        memory_masks = list(encoder_attention_mask) if encoder_attention_mask is not None else [None, None]
        if len(memory_masks) != 2:
            raise ValueError("encoder_attention_mask must hold one mask (or None) per image")
        transformer = self.transformer
        hidden_states = transformer.embeddings(input_ids, token_type_ids)
        dtype = hidden_states.dtype
        self_mask = padding_mask(attention_mask, dtype)
        cross_masks = [padding_mask(mask, dtype) for mask in memory_masks]
        fusion = transformer.encoder.fusion_layer
        collected = LayerOutputs(
            hidden_states, kwargs["output_hidden_states"], kwargs["output_attentions"], attention_kinds=2
        )
        for index, layer in enumerate(transformer.encoder.layers):
            image = (index - fusion) % 2 if index >= fusion else None
            hidden_states, self_weights, cross_weights = layer(
                hidden_states,
                self_mask,
                encoder_hidden_states[image] if image is not None else None,
                cross_masks[image] if image is not None else None,
                output_attentions=kwargs["output_attentions"],
            )
            collected.add(hidden_states, self_weights, cross_weights)
        return BaseModelOutputWithCrossAttentions(
            last_hidden_state=hidden_states,
            hidden_states=collected.hidden_states(),
            attentions=collected.attention_weights(0),
            cross_attentions=collected.attention_weights(1),
        )


def paired_text_state_dict(text_state: dict[str, torch.Tensor], fusion_layer: int, num_paired_layers: int) -> dict:
    """A paired encoder's state dict from a pre-trained ALBEF text tower's (``transformer.*`` keys): text layers
    copied, pre-trained fusion layer ``f + i`` copied into both layers ``f + 2i`` and ``f + 2i + 1``
    (``Pretrain_nlvr.py``)."""
    prefix = "transformer.encoder.layers."
    paired = {key: value for key, value in text_state.items() if not key.startswith(prefix)}
    for index in range(num_paired_layers):
        source = f"{prefix}{paired_layer_source(index, fusion_layer)}."
        for key, value in text_state.items():
            if key.startswith(source):
                paired[f"{prefix}{index}.{key[len(source):]}"] = value
    return paired


# --------------------------------------------------------------------------------------------------- labels and loss


def distilled_classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """``(1 - alpha) * CE(logits, labels) + alpha * soft-CE(logits, softmax(teacher_logits))`` (``model_nlvr.py``,
    ``model_ve.py``); plain CE without a teacher."""
    hard = nn.functional.cross_entropy(logits, labels)
    if teacher_logits is None:
        return hard
    soft = soft_target_cross_entropy(logits, nn.functional.softmax(teacher_logits.to(logits.dtype), dim=1))
    return (1 - alpha) * hard + alpha * soft


def _resolve_albef(source: Any, **kwargs: Any) -> VlpAlbefPreTrainedModel:
    """The pre-trained towers of ``source``: a model of :data:`ALBEF_PRETRAINED_ARCHITECTURES` (every one holds the
    flat ``vision_model``/``text_model``/``vision_proj``/``text_proj``/``itm_head``), or a directory / hub id saved from
    one."""
    if isinstance(source, VlpAlbefPreTrainedModel) and type(source).__name__ in ALBEF_PRETRAINED_ARCHITECTURES:
        return source
    if isinstance(source, (str, os.PathLike)):
        albef = VlpAlbefModel.from_pretrained(source, **kwargs)
        architectures = albef.config.architectures or []
        if architectures and not set(architectures) & set(ALBEF_PRETRAINED_ARCHITECTURES):
            raise ValueError(
                f"{source} holds {architectures}, not pre-trained ALBEF towers "
                f"({', '.join(ALBEF_PRETRAINED_ARCHITECTURES)}); load a task checkpoint with its own class's "
                "from_pretrained"
            )
        return albef
    raise TypeError(
        f"source must be one of {', '.join(ALBEF_PRETRAINED_ARCHITECTURES)} or the directory of one, got "
        f"{type(source).__name__}"
    )


def _task_config(albef: VlpAlbefPreTrainedModel, image_size: int | None) -> VlpAlbefConfig:
    config = VlpAlbefConfig.from_dict(albef.config.to_dict())
    config.architectures = None
    if image_size is not None:
        config.vision_config.image_size = image_size
        config.vision_config.validate_architecture()
    return config


def _vision_state(albef: VlpAlbefPreTrainedModel, image_size: int | None) -> dict[str, torch.Tensor]:
    """The pre-trained ViT's state, its position embeddings resized (bicubic, class token kept) to ``image_size``."""
    state = dict(albef.vision_model.state_dict())
    key = "transformer.position_embedding"
    tower = albef.vision_model.transformer
    if image_size is not None and image_size // tower.patch_size != tower.grid_size:
        grid = image_size // tower.patch_size
        state[key] = interpolate_grid_embeddings(state[key], 1, tower.grid_size, (grid, grid))
    return state


# --------------------------------------------------------------------------------------------------- outputs


@dataclass
class VlpAlbefClassifierOutput(ImageTextClassifierOutput):
    """NLVR2 / SNLI-VE outputs. ``loss`` only with ``labels``. With ``output_hidden_states``: ``last_hidden_state``
    the fused text states ``[B, L, D]`` and ``image_hidden_states`` the ViT tokens (``[B, 2, N, D_v]`` for NLVR2,
    ``[B, N, D_v]`` for SNLI-VE)."""


@dataclass
class VlpAlbefTextAssignmentOutput(ModelOutput):
    """Text-assignment outputs: ``logits`` ``[B, 3]``, the ``labels`` used (sampled or given; 0 = the text describes
    the first image, 1 = the second, 2 = neither), ``image_pair_indices`` ``[B, 2]`` the in-batch (first, second)
    image of each text (``None`` for given image pairs), ``loss`` whenever labels are known; with
    ``output_hidden_states`` the fused text states ``last_hidden_state``; the image tower's and the paired text
    encoder's outputs (per-layer states/attentions when asked for)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    image_pair_indices: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    vision_model_output: ModelOutput | None = None
    text_model_output: ModelOutput | None = None


# --------------------------------------------------------------------------------------------------- shared base


class VlpAlbefDistilledClassifier(DualTowerHeadMixin, MomentumModelMixin, VlpAlbefPreTrainedModel, abc.ABC):
    """Base of NLVR2 and SNLI-VE: online towers ``vision_model``/``text_model`` (``text_model_class``)/``cls_head``,
    their frozen ``momentum_*`` copies, and the distilled classification ``forward``. Subclasses set
    ``text_model_class`` and define ``run_towers`` (the pass :meth:`classify` runs on online or momentum towers).

    ``from_pretrained`` accepts the subclass's ``compatible_architectures`` only (a pre-trained ALBEF goes through
    ``from_albef_pretrained``); when the checkpoint has no momentum towers (text-assignment weights) they start as
    copies of the loaded online towers (``copy_momentum_when_missing``, see
    :class:`~hf_vlp.objectives.momentum.MomentumModelMixin`)."""

    accepts_loss_kwargs = False
    task_labels: tuple[str, ...] = ()
    compatible_architectures: tuple[str, ...] = ()
    _keys_to_ignore_on_load_missing = [r"^momentum_"]
    copy_momentum_when_missing = True
    # the text tower class (NLVR2: paired cross-attention layers; SNLI-VE: the plain encoder)
    text_model_class: type[VlpAlbefPreTrainedModel] = VlpAlbefTextModel

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        set_task_labels(config, self.task_labels)
        self.vision_model = VlpAlbefVisionModel(vision)
        self.text_model = self.text_model_class(text)
        self.cls_head = MlpClassifierHead(text.hidden_size, len(self.task_labels))
        self.momentum_vision_model = VlpAlbefVisionModel(vision)
        self.momentum_text_model = self.text_model_class(text)
        self.momentum_cls_head = MlpClassifierHead(text.hidden_size, len(self.task_labels))
        self.post_init()
        self.init_momentum()

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) pairs for the EMA, the original's ``model_pairs``."""
        return [
            (self.vision_model, self.momentum_vision_model),
            (self.text_model, self.momentum_text_model),
            (self.cls_head, self.momentum_cls_head),
        ]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        architectures = model.config.architectures or []
        if architectures and not set(architectures) & set(cls.compatible_architectures):
            raise ValueError(
                f"{cls.__name__}.from_pretrained loads {', '.join(cls.compatible_architectures)} checkpoints; this one "
                f"is {architectures}. Start from pre-trained ALBEF with {cls.__name__}.from_albef_pretrained(...)."
            )
        return loaded

    @abc.abstractmethod
    def run_towers(
        self, vision_model: nn.Module, text_model: nn.Module, inputs: ImageTextInputs, **flags: bool
    ) -> tuple[BaseModelOutputWithPooling, BaseModelOutputWithCrossAttentions]:
        """``(image tower output, fused text output)`` of the given (online or momentum) towers."""

    def classify(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        momentum: bool = False,
        interpolate_pos_encoding: bool = False,
        **flags: bool,
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling, BaseModelOutputWithCrossAttentions]:
        """``(logits, image tower output, fused text output)`` of the online (or ``momentum``) model; the head reads
        the fused ``[CLS]``. ``flags``: ``output_hidden_states``/``output_attentions`` of the towers."""
        prefix = "momentum_" if momentum else ""
        inputs = ImageTextInputs(input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding)
        vision_outputs, text_outputs = self.run_towers(
            getattr(self, prefix + "vision_model"), getattr(self, prefix + "text_model"), inputs, **flags
        )
        logits = getattr(self, prefix + "cls_head")(text_outputs.last_hidden_state[:, 0])
        return logits, vision_outputs, text_outputs

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        alpha: float | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpAlbefClassifierOutput | tuple:
        """Class logits; with ``labels`` the loss ``(1 - alpha) * CE + alpha * soft-CE`` against the momentum
        model's logits (``alpha`` defaults to ``self.distill_alpha``; 0 skips the momentum pass)."""
        if labels is not None:
            labels = check_class_labels(labels.to(input_ids.device), input_ids.shape[0], self.task_labels)
        logits, vision_outputs, text_outputs = self.classify(
            input_ids, pixel_values, attention_mask, token_type_ids, interpolate_pos_encoding=interpolate_pos_encoding,
            **kwargs,
        )
        loss = None
        if labels is not None:
            alpha = self.distill_alpha if alpha is None else float(alpha)
            teacher_logits = None
            if alpha > 0:
                with torch.no_grad():
                    teacher_logits = self.classify(
                        input_ids, pixel_values, attention_mask, token_type_ids, momentum=True,
                        interpolate_pos_encoding=interpolate_pos_encoding,
                    )[0]
            loss = distilled_classification_loss(logits, labels.to(logits.device), teacher_logits, alpha)
        return VlpAlbefClassifierOutput.from_states(
            loss, logits, text_outputs.last_hidden_state, vision_outputs.last_hidden_state,
            kwargs["output_hidden_states"], vision_outputs, text_outputs,
        )


def _check_batch(input_ids: torch.Tensor, pixel_values: torch.Tensor, what: str) -> None:
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(f"pass one {what} per text: got {pixel_values.shape[0]} and {input_ids.shape[0]} texts")


# --------------------------------------------------------------------------------------------------- NLVR2


class VlpAlbefForVisualReasoning(VlpAlbefDistilledClassifier):
    """ALBEF for NLVR2 (``models/model_nlvr.py``): is the statement true of the image pair?

    ``forward(input_ids, pixel_values [B, 2, C, H, W], ...)`` returns ``logits`` ``[B, 2]``; labels 0 = False,
    1 = True (``config.id2label``). Weights: ``vision_model``, ``text_model`` (:class:`VlpAlbefPairedTextModel`),
    ``cls_head`` and their ``momentum_*`` copies. Start from pre-trained ALBEF with :meth:`from_albef_pretrained`,
    or from text-assignment weights with ``from_pretrained(ta_directory)`` (the paper's route; ``cls_head`` is then
    new and the momentum towers copy the online ones).
    """

    task_labels = NLVR2_LABELS
    model_card_pipeline_tag = None  # no transformers pipeline classifies an image pair against a statement
    model_card_task = "visual-reasoning"
    compatible_architectures = ("VlpAlbefForVisualReasoning", "VlpAlbefForTextAssignment")
    # a text-assignment checkpoint also holds its similarity projection and 3-way head
    _keys_to_ignore_on_load_unexpected = [r"^vision_proj\.", r"^ta_head\."]
    text_model_class = VlpAlbefPairedTextModel

    def run_towers(
        self, vision_model: nn.Module, text_model: nn.Module, inputs: ImageTextInputs, **flags: bool
    ) -> tuple[BaseModelOutputWithPooling, BaseModelOutputWithCrossAttentions]:
        """Both images of every example through the ViT in one pass over the ``2B`` images (``last_hidden_state``
        reshaped to ``[B, 2, N, D_v]``), then the paired text encoder over (first, second) image tokens."""
        pixel_values = inputs.pixel_values
        flatten_image_pairs(pixel_values)
        _check_batch(inputs.input_ids, pixel_values, "image pair")
        vision_outputs = vision_model(
            flatten_image_pairs(pixel_values), interpolate_pos_encoding=inputs.interpolate_pos_encoding, return_dict=True,
            **flags,
        )
        states = vision_outputs.last_hidden_state
        vision_outputs.last_hidden_state = states = states.view(pixel_values.shape[0], 2, *states.shape[1:])
        text_outputs = text_model(
            inputs.input_ids, (states[:, 0], states[:, 1]), inputs.attention_mask, inputs.token_type_ids, return_dict=True,
            **flags,
        )
        return vision_outputs, text_outputs

    @classmethod
    def from_albef_pretrained(
        cls, source: Any, *, image_size: int | None = None, **kwargs: Any
    ) -> "VlpAlbefForVisualReasoning":
        """Start NLVR2 fine-tuning from pre-trained ALBEF (``source``: a ``VlpAlbefModel``, a model holding one as
        ``.albef``, or the directory of a ``VlpAlbefForPretraining``/``ForMaskedLM``/``Model``/retrieval save).

        As ``Pretrain_nlvr.py``: ViT and text layers copied, pre-trained fusion layer ``f + i`` copied into both
        layers of pair ``i``; ``cls_head`` new; momentum towers copy the result. ``image_size`` (e.g. 384, NLVR.yaml)
        resizes the position embeddings bicubically. ``kwargs`` go to ``from_pretrained`` for a directory.
        """
        albef = _resolve_albef(source, **kwargs)
        model = cls(_task_config(albef, image_size))
        model.vision_model.load_state_dict(_vision_state(albef, image_size))
        text = model.config.text_config
        model.text_model.load_state_dict(
            paired_text_state_dict(albef.text_model.state_dict(), text.fusion_layer, paired_num_layers(text))
        )
        model.init_momentum()
        return model.eval()


# --------------------------------------------------------------------------------------------------- text assignment


def sample_text_assignment(
    image_features: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build one text-assignment example per (image ``b``, text ``b``) pair as ``model_pretrain_nlvr.py`` does.

    ``image_features`` ``[B, E]`` are the normalised projected image ``[CLS]`` features; similar images are drawn
    from ``softmax(features @ features.T / 0.07)`` with the diagonal zeroed. Per row: with probability 2/3 pair
    image ``b`` with one similar image, in random order (label 0: ``b`` first, 1: ``b`` second); otherwise two
    similar images (label 2). The draws follow the original's order (coin, multinomial, coin) on one stream.

    Returns ``(image_pair_indices [B, 2], labels [B])``.
    """
    batch = image_features.shape[0]
    if batch < 3:
        raise ValueError(
            f"text assignment draws two other images for some texts: pass at least 3 (image, text) pairs, got {batch}"
        )
    with torch.no_grad():
        features = image_features.float()
        weights = nn.functional.softmax(features @ features.T / TEXT_ASSIGNMENT_TEMPERATURE, dim=1)
        weights.fill_diagonal_(0)
    coin_device = generator.device if generator is not None else torch.device("cpu")
    if generator is not None:
        weights = weights.to(generator.device)
    pairs, labels = [], []
    for row in range(batch):
        own = torch.tensor(row, device=weights.device)
        if torch.rand(1, generator=generator, device=coin_device) > 1 / 3:
            other = torch.multinomial(weights[row], 1, generator=generator)[0]
            if torch.rand(1, generator=generator, device=coin_device) > 0.5:
                pairs.append(torch.stack([own, other]))
                labels.append(0)
            else:
                pairs.append(torch.stack([other, own]))
                labels.append(1)
        else:
            pairs.append(torch.multinomial(weights[row], 2, generator=generator))
            labels.append(2)
    device = image_features.device
    return torch.stack(pairs).to(device), torch.tensor(labels, dtype=torch.long, device=device)


class VlpAlbefForTextAssignment(DualTowerHeadMixin, VlpAlbefPreTrainedModel):
    """ALBEF's text-assignment pre-training for NLVR2 (``models/model_pretrain_nlvr.py``, one epoch before NLVR2).

    The NLVR2 encoder (``vision_model``, ``text_model`` = :class:`VlpAlbefPairedTextModel`) plus ``vision_proj``
    (draws similar images) and ``ta_head`` ``Linear(D, 3)``; plain CE, no momentum. Labels: 0 = the text describes
    the first image, 1 = the second, 2 = neither. Its weights load into :class:`VlpAlbefForVisualReasoning` with
    ``from_pretrained`` (``vision_proj``/``ta_head`` ignored, ``cls_head`` new).
    """

    accepts_loss_kwargs = False
    task_labels = TEXT_ASSIGNMENT_LABELS
    model_card_pipeline_tag = None
    model_card_task = "text-assignment"

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        set_task_labels(config, self.task_labels)
        self.vision_model = VlpAlbefVisionModel(vision)
        self.text_model = VlpAlbefPairedTextModel(text)
        self.vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.ta_head = nn.Linear(text.hidden_size, len(self.task_labels))
        self.post_init()

    def image_features(self, image_states: torch.Tensor) -> torch.Tensor:
        """Normalised ``vision_proj`` of the ViT ``[CLS]`` tokens, ``[B, embed_dim]`` (no gradient needed)."""
        return nn.functional.normalize(self.vision_proj(image_states[:, 0]), dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_pair_indices: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpAlbefTextAssignmentOutput | tuple:
        """Text-assignment logits ``[B, 3]`` and CE loss.

        ``pixel_values`` ``[B, C, H, W]``: image ``b`` matches text ``b``; the (first, second) image of each text is
        sampled as the original does (:func:`sample_text_assignment`, ``generator`` for reproducible draws), or
        given as ``image_pair_indices`` ``[B, 2]`` in-batch indices with their ``labels``. ``pixel_values``
        ``[B, 2, C, H, W]``: the image pairs themselves (``labels`` optional, for the loss).
        """
        batch = input_ids.shape[0]
        if pixel_values.ndim == 5:
            flatten_image_pairs(pixel_values)
            _check_batch(input_ids, pixel_values, "image pair")
            if image_pair_indices is not None:
                raise ValueError("image_pair_indices index a batch of single images ([B, C, H, W] pixel_values)")
            vision_outputs = self.vision_model(
                pixel_values.flatten(0, 1), interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True,
                **kwargs,
            )
            states = vision_outputs.last_hidden_state.view(batch, 2, -1, self.config.vision_config.hidden_size)
            first, second = states[:, 0], states[:, 1]
        else:
            _check_batch(input_ids, pixel_values, "image")
            if (image_pair_indices is None) != (labels is None):
                raise ValueError(
                    "with one image per text, pass image_pair_indices together with their labels, or neither (the "
                    "pairs and labels are then sampled)"
                )
            vision_outputs = self.vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
            )
            states = vision_outputs.last_hidden_state
            if image_pair_indices is None:
                with torch.no_grad():
                    image_pair_indices, labels = sample_text_assignment(self.image_features(states), generator)
            else:
                image_pair_indices = image_pair_indices.to(device=states.device, dtype=torch.long)
                if tuple(image_pair_indices.shape) != (batch, 2) or bool(
                    ((image_pair_indices < 0) | (image_pair_indices >= batch)).any()
                ):
                    raise ValueError(
                        f"image_pair_indices must be [{batch}, 2] in-batch image indices, got shape "
                        f"{tuple(image_pair_indices.shape)}"
                    )
            first, second = states[image_pair_indices[:, 0]], states[image_pair_indices[:, 1]]
        if labels is not None:
            labels = check_class_labels(labels.to(input_ids.device), batch, self.task_labels)
        text_outputs = self.text_model(
            input_ids, (first, second), attention_mask, token_type_ids, return_dict=True, **kwargs
        )
        text_states = text_outputs.last_hidden_state
        logits = self.ta_head(text_states[:, 0])
        loss = nn.functional.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return VlpAlbefTextAssignmentOutput(
            loss=loss,
            logits=logits,
            labels=labels,
            image_pair_indices=image_pair_indices,
            last_hidden_state=text_states if kwargs["output_hidden_states"] else None,
            vision_model_output=vision_outputs,
            text_model_output=text_outputs,
        )

    @classmethod
    def from_albef_pretrained(
        cls, source: Any, *, image_size: int | None = None, **kwargs: Any
    ) -> "VlpAlbefForTextAssignment":
        """Start text-assignment pre-training from pre-trained ALBEF as ``Pretrain_nlvr.py`` does: ViT,
        ``vision_proj`` and text layers copied, fusion layer ``f + i`` into both layers of pair ``i``, ``ta_head``
        new. ``image_size`` resizes the position embeddings (NLVR_pretrain.yaml keeps 256)."""
        albef = _resolve_albef(source, **kwargs)
        model = cls(_task_config(albef, image_size))
        model.vision_model.load_state_dict(_vision_state(albef, image_size))
        model.vision_proj.load_state_dict(albef.vision_proj.state_dict())
        text = model.config.text_config
        model.text_model.load_state_dict(
            paired_text_state_dict(albef.text_model.state_dict(), text.fusion_layer, paired_num_layers(text))
        )
        return model.eval()


# --------------------------------------------------------------------------------------------------- SNLI-VE


class VlpAlbefForVisualEntailment(VlpAlbefDistilledClassifier):
    """ALBEF for SNLI-VE (``models/model_ve.py``): does the image entail the hypothesis?

    ``forward(input_ids, pixel_values [B, C, H, W], ...)`` returns ``logits`` ``[B, 3]``; labels as
    ``dataset/ve_dataset.py``: 0 = contradiction, 1 = neutral, 2 = entailment (``config.id2label``). The text
    encoder runs all its layers over the image tokens (mode ``full``). Weights: ``vision_model``, ``text_model``,
    ``cls_head`` and their ``momentum_*`` copies. Start from pre-trained ALBEF with :meth:`from_albef_pretrained`.
    """

    task_labels = SNLI_VE_LABELS
    model_card_pipeline_tag = None
    model_card_task = "visual-entailment"
    compatible_architectures = ("VlpAlbefForVisualEntailment",)
    text_model_class = VlpAlbefTextModel

    def run_towers(
        self, vision_model: nn.Module, text_model: nn.Module, inputs: ImageTextInputs, **flags: bool
    ) -> tuple[BaseModelOutputWithPooling, BaseModelOutputWithCrossAttentions]:
        """The premise image through the ViT, then every text-encoder layer over its tokens."""
        if inputs.pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be [batch, channels, height, width] (one premise image per hypothesis), got "
                f"shape {tuple(inputs.pixel_values.shape)}"
            )
        _check_batch(inputs.input_ids, inputs.pixel_values, "image")
        vision_outputs = vision_model(
            inputs.pixel_values, interpolate_pos_encoding=inputs.interpolate_pos_encoding, return_dict=True, **flags
        )
        text_outputs = text_model(
            inputs.input_ids, inputs.attention_mask, inputs.token_type_ids,
            encoder_hidden_states=vision_outputs.last_hidden_state, mode="full", return_dict=True, **flags,
        )
        return vision_outputs, text_outputs

    @classmethod
    def from_albef_pretrained(
        cls, source: Any, *, image_size: int | None = None, **kwargs: Any
    ) -> "VlpAlbefForVisualEntailment":
        """Start SNLI-VE fine-tuning from pre-trained ALBEF (``source`` as in
        :meth:`VlpAlbefForVisualReasoning.from_albef_pretrained`): ViT and text encoder copied, ``cls_head`` new,
        momentum towers copy the result (``VE.py`` loads the pre-trained momentum towers instead: an EMA of the same
        weights). ``image_size`` (384 in VE.yaml) resizes the position embeddings bicubically."""
        albef = _resolve_albef(source, **kwargs)
        model = cls(_task_config(albef, image_size))
        model.vision_model.load_state_dict(_vision_state(albef, image_size))
        model.text_model.load_state_dict(albef.text_model.state_dict())
        model.init_momentum()
        return model.eval()


__all__ = [
    "AlbefClassifierHead",
    "NLVR2_LABELS",
    "SNLI_VE_LABELS",
    "TEXT_ASSIGNMENT_LABELS",
    "VlpAlbefClassifierOutput",
    "VlpAlbefForTextAssignment",
    "VlpAlbefForVisualEntailment",
    "VlpAlbefForVisualReasoning",
    "VlpAlbefPairedTextModel",
    "VlpAlbefTextAssignmentOutput",
    "distilled_classification_loss",
    "paired_num_layers",
    "sample_text_assignment",
]
