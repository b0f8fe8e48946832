"""CLIP: a ViT or ModifiedResNet image tower and a causal text tower aligned by a symmetric contrastive loss.

    image -> vision tower -> pooled -> visual_projection -> image_features --\
                                                                            logit_scale * cos -> logits_per_image
    text  -> text tower (EOT pooling) -> text_projection -> text_features --/
"""


from dataclasses import dataclass, fields
from typing import Any, Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput, ModelOutput

from ...objectives.losses import contrastive_loss
from ...utils.classification import classification_loss
from ..modeling_utils import OutputKwargs, VlpPreTrainedModel, float_tensor, model_forward
from ...modules.pooling import AttentionPool2d
from ...modules.text import CausalTextTransformer
from ...modules.towers import block_options, build_vision_tower
from ...modules.vision import Bottleneck, ModifiedResNet, VisionTransformer
from ..towers import TextTowerMixin, VisionTowerMixin, check_both_modalities, with_pooled_features
from .configuration_clip import VlpClipConfig, VlpClipTextConfig, VlpClipVisionConfig


@dataclass
class VlpClipOutput(ModelOutput):
    """Contrastive outputs; ``image_embeds``/``text_embeds`` are L2-normalised projected features."""

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None


@dataclass
class VlpClipTextModelOutput(ModelOutput):
    """The text tower with its projection (transformers' ``CLIPTextModelOutput``): ``text_embeds`` are the projected,
    un-normalised features, then the tower's states."""

    text_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class VlpClipVisionModelOutput(ModelOutput):
    """The image tower with its projection (transformers' ``CLIPVisionModelOutput``): ``image_embeds`` are the
    projected, un-normalised features, then the tower's states."""

    image_embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def _normal_(module: nn.Module, std: float) -> None:
    """``init.normal_`` of ``module.weight`` when it is a floating-point tensor: a weight-less (deleted or ``None``)
    or quantized (integer) child keeps what it has."""
    weight = float_tensor(module, "weight")
    if weight is not None:
        init.normal_(weight, std=std)


def init_openai_tower(module: VisionTransformer | CausalTextTransformer) -> None:
    """OpenAI CLIP's initialisation of a tower (clip/model.py ``initialize_parameters``), which open_clip's CLIP and CoCa
    towers share: ViT class/position embeddings N(0, width^-1/2); text token embeddings N(0, 0.02), positions (and an
    appended class token) N(0, 0.01), and the blocks' projections scaled by width and depth."""
    if isinstance(module, VisionTransformer):
        width = module.class_embedding.shape[0]
        init.normal_(module.class_embedding, std=width**-0.5)
        init.normal_(module.position_embedding, std=width**-0.5)
        return
    init.normal_(module.token_embedding.weight, std=0.02)
    init.normal_(module.position_embedding, std=0.01)
    if getattr(module, "embed_cls", False):
        init.normal_(module.cls_embedding, std=0.01)
    width, depth = module.token_embedding.weight.shape[1], len(module.encoder.layers)
    for layer in module.encoder.layers:
        _normal_(layer.attn.qkv, std=width**-0.5)
        _normal_(layer.attn.out_proj, std=width**-0.5 * (2 * depth) ** -0.5)
        _normal_(layer.mlp.fc1, std=(2 * width) ** -0.5)
        _normal_(layer.mlp.fc2, std=width**-0.5 * (2 * depth) ** -0.5)


def build_tower_projection(config: VlpClipTextConfig | VlpClipVisionConfig) -> nn.Module:
    """A tower's projection: bias-free linear on the pooled token (text, ViT); none for a ResNet image tower (its
    attention pooling already projects)."""
    if getattr(config, "architecture", None) == "resnet":
        return nn.Identity()
    return nn.Linear(config.hidden_size, config.projection_dim, bias=False)


class VlpClipPreTrainedModel(VlpPreTrainedModel):
    config: VlpClipConfig
    base_model_prefix = "clip"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["PreNormBlock", "Bottleneck"]
    accepts_loss_kwargs = False
    model_card_template = "clip"
    model_card_pipeline_tag = "zero-shot-image-classification"

    def model_card_fields(self) -> dict[str, Any]:
        config = self.config
        vision = getattr(config, "vision_config", config if isinstance(config, VlpClipVisionConfig) else None)
        text = getattr(config, "text_config", config if isinstance(config, VlpClipTextConfig) else None)
        fields: dict[str, Any] = {"prompt_template": "a photo of a {}.", "logit_scale": "n/a"}
        if vision is not None:
            if vision.architecture == "resnet":
                fields["vision_description"] = (
                    f"ModifiedResNet ({'-'.join(map(str, vision.resnet_layers))} blocks, width {vision.resnet_width}, "
                    f"{vision.image_size}px, attention pooling)"
                )
            else:
                fields["vision_description"] = (
                    f"ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
                    f"{vision.image_size}px)"
                )
            fields["projection_dim"] = vision.projection_dim
        if text is not None:
            fields["text_description"] = (
                f"{text.num_hidden_layers}-layer, width-{text.hidden_size}, {text.max_position_embeddings}-token"
            )
            fields["projection_dim"] = text.projection_dim
        if hasattr(self, "logit_scale"):
            fields["logit_scale"] = f"{self.logit_scale.item():.4f}"
        return fields

    def _init_weights(self, module: nn.Module) -> None:
        """OpenAI's initialisation (clip/model.py ``initialize_parameters``) for every tower."""
        super()._init_weights(module)
        if isinstance(module, (VisionTransformer, CausalTextTransformer)):
            init_openai_tower(module)
        elif isinstance(module, AttentionPool2d):
            std = module.position_embedding.shape[1] ** -0.5
            init.normal_(module.position_embedding, std=std)
            for linear in (module.attn.q, module.attn.kv, module.attn.out_proj):
                _normal_(linear, std=std)
        elif isinstance(module, ModifiedResNet):
            for conv in module.modules():
                weight = float_tensor(conv, "weight")
                if isinstance(conv, nn.Conv2d) and weight is not None:
                    init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, Bottleneck):
            if getattr(module.bn3, "weight", None) is not None:
                init.zeros_(module.bn3.weight)
        elif isinstance(module, (VlpClipModel, VlpClipTextModelWithProjection, VlpClipVisionModelWithProjection)):
            for name in ("text_projection", "visual_projection"):
                projection = getattr(module, name, None)
                if isinstance(projection, nn.Linear):
                    _normal_(projection, std=projection.in_features**-0.5)
            if isinstance(module, VlpClipModel):
                init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class VlpClipVisionModel(VisionTowerMixin, VlpClipPreTrainedModel):
    """The image tower without projection: a ViT (``transformer``) or a ResNet (``trunk`` + ``attnpool``).

    ``pooler_output`` is the normalised class token (ViT) or the attention-pooled, already projected vector (ResNet).
    """

    config: VlpClipVisionConfig

    def build_tower(self, config: VlpClipVisionConfig) -> None:
        if config.architecture != "resnet":
            super().build_tower(config)
            return
        self.trunk = ModifiedResNet(config.resnet_layers, config.resnet_width, config.num_channels)
        self.attnpool = AttentionPool2d(
            config.image_size // 32,
            config.resnet_feature_size,
            config.resnet_attention_heads,
            config.projection_dim,
            config=config,
        )

    def build_transformer(self, config: VlpClipVisionConfig) -> VisionTransformer:
        return build_vision_tower(config, patch_bias=False, norm_pre=True, final_norm="cls")

    def get_input_embeddings(self) -> nn.Module:
        """The module embedding the pixels: the ViT's patch convolution, or the first convolution of the ResNet
        stem."""
        return self.trunk.conv1 if self.config.architecture == "resnet" else super().get_input_embeddings()

    def tower_output(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool, **flags: bool
    ) -> BaseModelOutputWithPooling:
        if self.config.architecture != "resnet":
            return super().tower_output(pixel_values, interpolate_pos_encoding, **flags)
        feature_map = self.trunk(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=feature_map, pooler_output=self.attnpool(feature_map))


# what CausalTextTransformer.forward takes by keyword; the text model ignores any other keyword argument
CLIP_TEXT_ARGUMENTS = ("input_ids", "attention_mask", "output_hidden_states", "output_attentions")


class VlpClipTextModel(TextTowerMixin, VlpClipPreTrainedModel):
    """The text tower without projection; ``pooler_output`` is the end-of-text token after the final norm.
    ``forward(input_ids, attention_mask=None, output_hidden_states=None, output_attentions=None, return_dict=None)``;
    other keyword arguments (e.g. a tokenizer's ``token_type_ids``) are ignored."""

    config: VlpClipTextConfig
    input_embeddings_path = "transformer.token_embedding"

    def build_transformer(self, config: VlpClipTextConfig) -> CausalTextTransformer:
        return CausalTextTransformer(
            block_options(config, attention_dropout=config.attention_dropout),
            num_layers=config.num_hidden_layers,
            vocab_size=config.vocab_size,
            context_length=config.max_position_embeddings,
            eos_token_id=config.eos_token_id,
            config=config,
            **self.pooling_options(config),
        )

    def pooling_options(self, config: VlpClipTextConfig) -> dict[str, Any]:
        """How the tower pools (:class:`CausalTextTransformer` options): CLIP's end-of-text token, no extra options."""
        return {}

    def tower_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in kwargs.items() if name in CLIP_TEXT_ARGUMENTS}


class VlpClipModel(VlpClipPreTrainedModel):
    """CLIP dual encoder: ``get_image_features``, ``get_text_features`` and contrastive ``forward``."""

    def __init__(self, config: VlpClipConfig) -> None:
        super().__init__(config)
        self.vision_model = VlpClipVisionModel(config.vision_config)
        self.text_model = VlpClipTextModel(config.text_config)
        self.visual_projection = build_tower_projection(config.vision_config)
        self.text_projection = build_tower_projection(config.text_config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The text tower's token embeddings."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    @model_forward
    def get_image_features(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Unpack[OutputKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        """The image tower's output with ``pooler_output`` = the projected, un-normalised image features
        ``[B, projection_dim]`` (transformers 5's convention)."""
        outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        return with_pooled_features(outputs, self.visual_projection(outputs.pooler_output))

    @model_forward
    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Unpack[OutputKwargs]
    ) -> BaseModelOutputWithPooling | tuple:
        """The text tower's output with ``pooler_output`` = the projected, un-normalised text features
        ``[B, projection_dim]`` (the end-of-text token's)."""
        outputs = self.text_model(input_ids, attention_mask, return_dict=True, **kwargs)
        return with_pooled_features(outputs, self.text_projection(outputs.pooler_output))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpClipOutput | tuple:
        """Similarity logits of every image against every text; the contrastive loss only when ``return_loss=True``.

        hf_vlp's collators put ``return_loss=True`` in every batch, so the stock ``Trainer`` trains and evaluates
        without labels. Across processes the loss gathers features (with gradient) from every rank: see
        :func:`hf_vlp.objectives.losses.contrastive_loss`.
        """
        check_both_modalities(self, input_ids, pixel_values)
        vision_outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        text_outputs = self.text_model(input_ids, attention_mask, return_dict=True, **kwargs)
        image_embeds = nn.functional.normalize(self.visual_projection(vision_outputs.pooler_output), dim=-1)
        text_embeds = nn.functional.normalize(self.text_projection(text_outputs.pooler_output), dim=-1)
        scale = self.logit_scale.exp()
        logits_per_image = scale * image_embeds @ text_embeds.t()
        loss = contrastive_loss(image_embeds, text_embeds, scale) if return_loss else None
        return VlpClipOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_image.t(),
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


class ProjectedTowerMixin:
    """One tower with its projection: ``forward`` takes the tower model's arguments and returns its states plus the
    projected, un-normalised features (``output_class``'s first field: ``text_embeds``/``image_embeds``).
    ``tower_name``/``projection_name`` are the attributes (and weight-name prefixes) of the two."""

    tower_name: str
    projection_name: str
    tower_class: type[VlpClipPreTrainedModel]
    output_class: type[ModelOutput]

    def __init__(self, config: VlpClipTextConfig | VlpClipVisionConfig) -> None:
        super().__init__(config)
        setattr(self, self.tower_name, self.tower_class(config))
        setattr(self, self.projection_name, build_tower_projection(config))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The tower's input embeddings (text: token embeddings; image: the patch embedding)."""
        return getattr(self, self.tower_name).get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        getattr(self, self.tower_name).set_input_embeddings(value)

    def projected(self, outputs: BaseModelOutputWithPooling) -> ModelOutput:
        """The tower's ``outputs`` with the projected, un-normalised features as ``output_class``'s first field."""
        embeds = getattr(self, self.projection_name)(outputs.pooler_output)
        return self.output_class(
            **{fields(self.output_class)[0].name: embeds},
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class VlpClipTextModelWithProjection(ProjectedTowerMixin, VlpClipPreTrainedModel):
    """The text tower alone (e.g. to embed label sets or caption galleries offline); ``forward`` takes
    :class:`VlpClipTextModel`'s arguments."""

    config: VlpClipTextConfig
    input_modalities = ("text",)
    tower_name = "text_model"
    projection_name = "text_projection"
    output_class = VlpClipTextModelOutput
    tower_class = VlpClipTextModel

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Unpack[OutputKwargs]
    ) -> VlpClipTextModelOutput | tuple:
        return self.projected(self.text_model(input_ids, attention_mask, return_dict=True, **kwargs))


class VlpClipVisionModelWithProjection(ProjectedTowerMixin, VlpClipPreTrainedModel):
    """The image tower alone (e.g. to embed large image galleries offline); ``forward`` takes
    :class:`VlpClipVisionModel`'s arguments."""

    config: VlpClipVisionConfig
    input_modalities = ("image",)
    tower_name = "vision_model"
    projection_name = "visual_projection"
    output_class = VlpClipVisionModelOutput
    tower_class = VlpClipVisionModel

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs: Unpack[OutputKwargs]
    ) -> VlpClipVisionModelOutput | tuple:
        outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        return self.projected(outputs)


@dataclass
class VlpClipImageClassifierOutput(ImageClassifierOutput):
    image_embeds: torch.Tensor | None = None


class VlpClipForImageClassification(VlpClipPreTrainedModel):
    """Linear classifier on the projected image features: a linear probe or a fine-tuning head.

    ``freeze_vision_tower=True`` (a config field read at init) keeps the tower fixed for linear probing.
    """

    config: VlpClipConfig
    input_modalities = ("image",)
    # loading a full CLIP checkpoint into the classifier drops the text side on purpose
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]

    def __init__(self, config: VlpClipConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vision_model = VlpClipVisionModel(config.vision_config)
        self.visual_projection = build_tower_projection(config.vision_config)
        self.classifier = nn.Linear(config.projection_dim, config.num_labels)
        if getattr(config, "freeze_vision_tower", False):
            for module in (self.vision_model, self.visual_projection):
                module.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.vision_model.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs: Unpack[OutputKwargs],
    ) -> VlpClipImageClassifierOutput | tuple:
        """Logits ``[B, num_labels]``; with ``labels`` the loss of ``config.problem_type`` (inferred as transformers
        does when unset: see :func:`hf_vlp.utils.classification.classification_loss`). ``hidden_states`` and
        ``attentions`` are the image tower's (unset flags: ``config.output_*``)."""
        vision_outputs = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True, **kwargs
        )
        image_embeds = self.visual_projection(vision_outputs.pooler_output)
        logits = self.classifier(image_embeds)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return VlpClipImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
            image_embeds=image_embeds,
        )


__all__ = [
    "VlpClipModel",
    "VlpClipOutput",
    "VlpClipPreTrainedModel",
    "VlpClipTextModelWithProjection",
    "VlpClipVisionModelWithProjection",
    "VlpClipForImageClassification",
    "VlpClipTextModelOutput",
    "VlpClipVisionModelOutput",
]

