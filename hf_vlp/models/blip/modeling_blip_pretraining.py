"""BLIP pre-training (``models/blip_pretrain.py``) and image-text retrieval (``models/blip_retrieval.py`` +
``train_retrieval.py``): the heads with momentum towers and feature queues.

Both run the momentum-contrastive step of :mod:`hf_vlp.objectives.contrastive` (online features against ``[momentum batch ;
queue]``, soft targets distilled from the momentum towers) and image-text matching over
``[positives ; (text b, negative image) ; (negative text, image b)]``, the negatives' token ids re-run through the MED
in its image-grounded encoder role with ``[ENC]`` first. Pre-training adds the captioning LM loss through the MED's
decoder role (``[DEC]`` first, label smoothing 0.1); retrieval ranks a gallery by ITC top-k then ITM + cosine.

The momentum text tower is an encoder-only MED: the original's ``text_encoder_m`` is a ``BertModel`` whose
cross-attention is an EMA of the (decoder-shared) online one, so the EMA pairs every encoder-role module of the online
MED - not the decoder's causal self-attention - with the momentum copy (:func:`encoder_role_modules`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from ...objectives.contrastive import (
    ImageTextRetrievalOutput,
    MomentumContrastiveStep,
    RetrievalFeatures,
    RetrievalScores,
    check_image_ids,
    check_matching_pairs,
    check_negative_indices,
    clamp_temperature_,
    contrastive_output_fields,
    diagonal_targets,
    distilled_itc,
    enqueue_momentum_features,
    itm_triplets,
    momentum_contrastive_step,
    rerank_top_k,
    retrieval_queue_update,
    same_id_mask,
    sample_itm_negatives,
)
from ...objectives.losses import id_match_targets, sample_hard_negatives
from ...objectives.momentum import FeatureQueue, ModulePair, MomentumModelMixin
from .configuration_blip import VlpBlipConfig
from .modeling_blip import (
    IGNORE_INDEX,
    VlpBlipPreTrainedModel,
    VlpBlipTextModel,
    VlpBlipVisionModel,
    check_no_token_types,
    shifted_lm_loss,
    with_first_token,
)


def encoder_role_modules(text_model: VlpBlipTextModel) -> nn.ModuleList:
    """The MED modules the encoder role runs, in a fixed order: the embeddings, then per layer the bidirectional
    self-attention ``attn``/``norm1``, the cross-attention ``cross_attn``/``norm_cross`` and the MLP ``mlp``/``norm2``.

    Pairs an online MED that also holds the decoder role (pre-training) with its encoder-only momentum copy for the
    EMA: both give the same parameters in the same order."""
    transformer = text_model.transformer
    if "encoder" not in transformer.roles:
        raise ValueError(f"the text model holds no encoder role (roles {transformer.roles}); nothing to pair")
    modules: list[nn.Module] = [transformer.embeddings]
    for layer in transformer.encoder.layers:
        modules += [layer.attn, layer.norm1, layer.cross_attn, layer.norm_cross, layer.mlp, layer.norm2]
    return nn.ModuleList(modules)


# --------------------------------------------------------------------------------------------------- shared base


class VlpBlipMomentumModel(MomentumModelMixin, VlpBlipPreTrainedModel):
    """Base of the BLIP heads with frozen momentum towers and feature queues (pre-training, retrieval).

    Builds the online towers (``vision_model``, ``text_model`` with the head's ``text_roles``, ``vision_proj``,
    ``text_proj``, ``itm_head``, ``temp``), their momentum copies (``momentum_vision_model``, ``momentum_vision_proj``,
    ``momentum_text_model`` - encoder role only - and ``momentum_text_proj``) and the ``image_queue``/``text_queue``.
    The EMA step runs in ``hf_vlp.MomentumCallback`` once per optimizer step (the original runs it at the start of every
    forward); the callback also ramps ``distill_alpha``. :class:`~hf_vlp.objectives.momentum.MomentumModelMixin` re-freezes the
    momentum towers on load.
    """

    main_input_name = "pixel_values"
    accepts_loss_kwargs = False

    def _build_momentum(self, config: VlpBlipConfig) -> None:
        """Momentum towers and the two feature queues (call after the online towers, before ``post_init``)."""
        self.momentum_vision_model = VlpBlipVisionModel(config.vision_config)
        self.momentum_vision_proj = nn.Linear(config.vision_config.hidden_size, config.embed_dim)
        self.momentum_text_model = VlpBlipTextModel(config.text_config, roles=("encoder",))
        self.momentum_text_proj = nn.Linear(config.text_config.hidden_size, config.embed_dim)
        self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) module pairs for the EMA, the original's ``model_pairs``; the text pair is the
        encoder role's modules (:func:`encoder_role_modules`)."""
        return [
            (self.vision_model, self.momentum_vision_model),
            (self.vision_proj, self.momentum_vision_proj),
            (encoder_role_modules(self.text_model), encoder_role_modules(self.momentum_text_model)),
            (self.text_proj, self.momentum_text_proj),
        ]

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_model.set_input_embeddings(value)

    def _contrastive_step(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor,
        interpolate_pos_encoding: bool,
    ) -> tuple[torch.Tensor, MomentumContrastiveStep]:
        """Clamp ``temp``; encode the images (ViT tokens, returned) and the texts (unimodal role, ``[CLS]`` kept) with
        the online and momentum towers; score the online features against [momentum batch ; queue]."""
        clamp_temperature_(self.temp, self.config.temp_min, self.config.temp_max)
        image_states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        text_states = self.text_model(input_ids, attention_mask, mode="text", return_dict=True).last_hidden_state
        with torch.no_grad():
            momentum_image_states = self.momentum_vision_model(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, return_dict=True
            ).last_hidden_state
            momentum_text_states = self.momentum_text_model(
                input_ids, attention_mask, mode="text", return_dict=True
            ).last_hidden_state
        step = momentum_contrastive_step(
            image_states[:, 0],
            text_states[:, 0],
            momentum_image_states[:, 0],
            momentum_text_states[:, 0],
            vision_proj=self.vision_proj,
            text_proj=self.text_proj,
            momentum_vision_proj=self.momentum_vision_proj,
            momentum_text_proj=self.momentum_text_proj,
            image_queue=self.image_queue,
            text_queue=self.text_queue,
            temp=self.temp,
        )
        return image_states, step

    def _itm_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_states: torch.Tensor
    ) -> torch.Tensor:
        """ITM logits ``[N, 2]`` (column 1 = match) of pairs (text row n, image row n): the image-grounded encoder with
        ``[ENC]`` put first, ``itm_head`` on its first state."""
        encoder_ids = with_first_token(input_ids, self._special_id("enc_token_id"))
        states = self.text_model(
            encoder_ids, attention_mask, encoder_hidden_states=image_states, mode="multimodal", return_dict=True
        ).last_hidden_state
        return self.itm_head(states[:, 0])

    def _itm_on_triplets(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_states: torch.Tensor,
        negative_image_indices: torch.Tensor,
        negative_text_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITM logits and labels over ``[positives ; (text b, negative image) ; (negative text, image b)]``."""
        triplets = itm_triplets(
            (input_ids, attention_mask), (image_states,), negative_image_indices, negative_text_indices
        )
        (texts, masks), (images,) = triplets.text, triplets.image
        logits = self._itm_logits(texts, masks, images)
        return logits, triplets.labels.to(logits.device)


# --------------------------------------------------------------------------------------------------- pre-training


@dataclass
class VlpBlipForPretrainingOutput(ModelOutput):
    """BLIP pre-training outputs. The losses are set only with ``return_loss=True``; ``loss`` is their sum.

    ``logits_per_image`` ``[B, B + Q]``: online image features against the momentum text features of the batch
    followed by the text queue, divided by ``temp`` (``logits_per_text`` the reverse). ``itm_logits`` ``[3B, 2]`` score
    ``[positives ; (text b, negative image) ; (negative text, image b)]`` with ``itm_labels`` 1/0/0. ``lm_logits``
    ``[B, L, vocab]`` are the decoder's next-token logits over ``[DEC]`` + the caption (position t predicts t + 1).
    """

    loss: torch.Tensor | None = None
    loss_itc: torch.Tensor | None = None
    loss_itm: torch.Tensor | None = None
    loss_lm: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    momentum_image_embeds: torch.Tensor | None = None
    momentum_text_embeds: torch.Tensor | None = None
    itm_logits: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    itm_negative_image_indices: torch.Tensor | None = None
    itm_negative_text_indices: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None


class VlpBlipForPretraining(VlpBlipMomentumModel):
    """BLIP pre-training (``models/blip_pretrain.py``): ITC with momentum distillation against feature queues, ITM on
    hard negatives, and the captioning LM loss; ``loss = loss_itc + loss_itm + loss_lm``.

    One MED serves the three text roles (``text_model`` holds the encoder's and the decoder's self-attention, every
    other tensor shared, as the original's encoder/decoder tie); ``lm_head`` is tied to its word embeddings. Weight
    names are those of every BLIP head (``vision_model``, ``text_model``, ``vision_proj``, ``text_proj``, ``itm_head``,
    ``temp``, ``lm_head``), so a saved directory also loads into ``VlpBlipModel``,
    ``VlpBlipForConditionalGeneration`` and ``VlpBlipForImageTextRetrieval``. ITM hard negatives are drawn with the
    weights ``softmax(s) + config.itm_negative_eps`` (1e-4 in the original), the diagonal zeroed.

    Train with ``hf_vlp.MomentumCallback(alpha_warmup_epochs=2)``: the original ramps alpha over two epochs
    (``alpha = 0.4 * min(1, step / (2 * steps_per_epoch))``). Queues are filled by training-mode forwards
    (``update_queues`` overrides) with all-gathered momentum features, identical on every rank.
    """

    text_roles = ("encoder", "decoder")
    _tied_weights_keys = {"lm_head.decoder.weight": "text_model.transformer.embeddings.word_embeddings.weight"}

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self._build_towers(config)
        self._build_contrastive_heads(config)
        self._build_lm_head(config)
        self._build_momentum(config)
        self.post_init()
        self.init_momentum()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head.decoder = value

    def lm_labels(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The original's decoder targets: the ids with ``[PAD]`` set to -100 (``[DEC]`` at 0 is dropped by the
        shift)."""
        return input_ids.masked_fill(input_ids == self._special_id("pad_token_id"), IGNORE_INDEX)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool | None = None,
        lm_labels: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> VlpBlipForPretrainingOutput | tuple:
        """One pre-training step's forward on ``B`` matching (image, caption) pairs; ``input_ids`` are the processor's
        ``[CLS] caption [SEP]`` (the model puts ``[ENC]``/``[DEC]`` first for the ITM and LM passes itself).

        Args:
            return_loss: compute ``loss_itc``/``loss_itm``/``loss_lm`` and their sum ``loss``.
            lm_labels: ``[B, L]`` LM targets aligned with ``input_ids`` (shifted here); default ``input_ids`` with
                ``[PAD]`` ignored, as the original.
            itm_negative_image_indices: ``[B]`` in-batch index of each text's negative image, and
                ``itm_negative_text_indices`` of each image's negative text (both or neither); otherwise drawn from
                ``softmax(in-batch logits) + config.itm_negative_eps`` with the diagonal zeroed.
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features; default ``self.training``.
            generator: random generator for the hard negatives.
            token_type_ids: accepted when all zero (BERT tokenizers emit them; BLIP has no token types).
        """
        check_matching_pairs(input_ids, pixel_values, "pre-training")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        check_no_token_types(token_type_ids)
        if lm_labels is not None and lm_labels.shape != input_ids.shape:
            raise ValueError(
                f"lm_labels must align with input_ids (shape {tuple(input_ids.shape)}), got {tuple(lm_labels.shape)}; "
                "the model shifts them itself"
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        alpha = self.distill_alpha if alpha is None else float(alpha)
        update_queues = self.training if update_queues is None else update_queues
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_states, itc = self._contrastive_step(input_ids, pixel_values, attention_mask, interpolate_pos_encoding)
        loss_itc = distilled_itc(itc, diagonal_targets(itc), alpha, self.temp) if return_loss else None
        if update_queues:
            enqueue_momentum_features(itc, self.image_queue, self.text_queue)

        if itm_negative_image_indices is None:
            itm_negative_image_indices, itm_negative_text_indices = sample_itm_negatives(
                itc, None, generator, eps=self.itm_negative_eps
            )
        itm_logits, itm_labels = self._itm_on_triplets(
            input_ids, attention_mask, image_states, itm_negative_image_indices, itm_negative_text_indices
        )

        decoder_ids = with_first_token(input_ids, self._special_id("bos_token_id"))
        decoded = self.text_model(
            decoder_ids, attention_mask, encoder_hidden_states=image_states, mode="decoder", return_dict=True
        ).last_hidden_state
        lm_logits = self.lm_head(decoded)

        loss = loss_itm = loss_lm = None
        if return_loss:
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            labels = self.lm_labels(decoder_ids) if lm_labels is None else lm_labels
            loss_lm = shifted_lm_loss(lm_logits, labels, self.config.label_smoothing)
            loss = loss_itc + loss_itm + loss_lm
        output = VlpBlipForPretrainingOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_lm=loss_lm,
            **contrastive_output_fields(itc),
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            itm_negative_image_indices=itm_negative_image_indices,
            itm_negative_text_indices=itm_negative_text_indices,
            lm_logits=lm_logits,
        )
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------------- retrieval


@dataclass
class VlpBlipForImageTextRetrievalOutput(ImageTextRetrievalOutput):
    """BLIP retrieval fine-tuning outputs (the fields of :class:`hf_vlp.objectives.contrastive.ImageTextRetrievalOutput`)."""


# one features type serves ALBEF and BLIP; the BLIP name stays importable
VlpBlipRetrievalFeatures = RetrievalFeatures


class VlpBlipForImageTextRetrieval(VlpBlipMomentumModel):
    """BLIP image-text retrieval (``models/blip_retrieval.py`` + ``train_retrieval.py``).

    Training (``forward`` with ``image_ids``): ITC with momentum distillation against the feature queues, every column
    showing the same image id - in the batch or in ``idx_queue`` - a positive (targets uniform over them); plus ITM on
    hard negatives drawn from the ONLINE in-batch similarities (``softmax``, same-id entries zeroed, no added constant);
    ``loss = loss_itc + loss_itm``. Inference (:meth:`score_matrices`): ITC cosine top-``k`` per query, re-scored by
    the ITM match logit of the image-grounded encoder (``[ENC]`` first) PLUS the cosine, every other entry -100.

    Two switches (class attributes, overridable per instance) cover the released code's details:

    - ``itc_positives = "image_id"`` (the paper's and LAVIS's targets). The released ``blip_retrieval.py`` computes the
      id targets and then overwrites them with the diagonal (salesforce/BLIP issue #41): set ``"diagonal"`` to train
      exactly as it does (``idx_queue`` is still filled).
    - ``itm_negative_eps = 0.0`` as the original (``config.itm_negative_eps`` is pre-training's 1e-4); a positive value
      keeps every negative reachable when the softmax underflows (tiny models, very low ``temp``).

    Negatives come from this rank's batch (the original's ``negative_all_rank: False``, its Flickr30k setting).
    Weights: as ``VlpBlipModel`` plus ``momentum_*`` (frozen EMA copies; train with ``hf_vlp.MomentumCallback``, alpha
    ramped over one epoch) and ``image_queue``/``text_queue``/``idx_queue``. A ``VlpBlipForPretraining`` directory loads
    too (decoder and LM head ignored, ``idx_queue`` starting at -100 at the feature queues' pointer), as the original
    fine-tuning starts.
    """

    text_roles = ("encoder",)
    itc_positives: str = "image_id"
    itm_negative_eps: float = 0.0
    _keys_to_ignore_on_load_unexpected = [r"\.causal_attn\.", r"\.norm_causal\.", r"^lm_head\."]
    _keys_to_ignore_on_load_missing = [r"^idx_queue\."]

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self._build_towers(config)
        self._build_contrastive_heads(config)
        self._build_momentum(config)
        self.idx_queue = FeatureQueue(1, config.queue_size, dtype=torch.long, fill_value=IGNORE_INDEX)
        self.post_init()
        self.init_momentum()

    @torch.no_grad()
    def _itc_hard_targets(self, step: MomentumContrastiveStep, image_ids: torch.Tensor) -> torch.Tensor:
        if self.itc_positives == "image_id":
            return id_match_targets(image_ids, self.idx_queue.with_batch(image_ids)[0])
        if self.itc_positives == "diagonal":
            return diagonal_targets(step)
        raise ValueError(f"itc_positives must be 'image_id' or 'diagonal', got {self.itc_positives!r}")

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_ids: torch.Tensor | None = None,
        itm_negative_image_indices: torch.Tensor | None = None,
        itm_negative_text_indices: torch.Tensor | None = None,
        alpha: float | None = None,
        update_queues: bool | None = None,
        generator: torch.Generator | None = None,
        token_type_ids: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
    ) -> VlpBlipForImageTextRetrievalOutput | tuple:
        """One fine-tuning step's forward on ``B`` matching (image, caption) pairs (``[CLS] caption [SEP]`` ids).

        Args:
            image_ids: ``[B]`` integer id of each pair's image (captions of one image share it; ids must be >= 0
                because the empty queue slots hold -100). Given, the losses are computed and the hard negatives
                drawn; without them only the contrastive logits and the positives' ITM logits are returned.
            itm_negative_image_indices: ``[B]`` in-batch index of each text's negative image, and
                ``itm_negative_text_indices`` of each image's negative text (both or neither); otherwise drawn from
                the softmaxed online in-batch similarities with same-id entries zeroed.
            alpha: distillation weight; default ``self.distill_alpha`` (ramped by ``MomentumCallback``).
            update_queues: enqueue the batch's momentum features and ids (needs ``image_ids``); default
                ``self.training and image_ids is not None``.
            generator: random generator for the hard negatives.
        """
        check_matching_pairs(input_ids, pixel_values, "retrieval training")
        check_negative_indices(itm_negative_image_indices, itm_negative_text_indices)
        check_no_token_types(token_type_ids)
        image_ids = check_image_ids(image_ids, input_ids.shape[0], input_ids.device)
        update_queues = retrieval_queue_update(update_queues, self.training, image_ids)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        alpha = self.distill_alpha if alpha is None else float(alpha)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        image_states, itc = self._contrastive_step(input_ids, pixel_values, attention_mask, interpolate_pos_encoding)
        loss = loss_itc = loss_itm = itm_labels = None
        if image_ids is not None:
            loss_itc = distilled_itc(itc, self._itc_hard_targets(itc, image_ids), alpha, self.temp)
        if update_queues:
            enqueue_momentum_features(itc, self.image_queue, self.text_queue, image_ids, self.idx_queue)

        if image_ids is None:  # only the positives
            itm_logits = self._itm_logits(input_ids, attention_mask, image_states)
        else:
            if itm_negative_image_indices is None:
                with torch.no_grad():
                    online = itc.image_embeds @ itc.text_embeds.T / self.temp
                itm_negative_image_indices, itm_negative_text_indices = sample_hard_negatives(
                    online.detach(), online.T.detach(), same_id_mask(image_ids), generator,
                    eps=float(self.itm_negative_eps),
                )
            itm_logits, itm_labels = self._itm_on_triplets(
                input_ids, attention_mask, image_states, itm_negative_image_indices, itm_negative_text_indices
            )
            loss_itm = nn.functional.cross_entropy(itm_logits, itm_labels)
            loss = loss_itc + loss_itm
        output = VlpBlipForImageTextRetrievalOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            **contrastive_output_fields(itc),
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            itm_negative_image_indices=itm_negative_image_indices if image_ids is not None else None,
            itm_negative_text_indices=itm_negative_text_indices if image_ids is not None else None,
        )
        return output if return_dict else output.to_tuple()

    # ----------------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> RetrievalFeatures:
        """Gallery image features: ViT tokens and normalised ``vision_proj([CLS])`` (encode a gallery in chunks and
        :meth:`RetrievalFeatures.cat` them)."""
        states = self.encode_image(pixel_values, interpolate_pos_encoding).last_hidden_state
        embeds = nn.functional.normalize(self.vision_proj(states[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, hidden_states=states)

    @torch.no_grad()
    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> RetrievalFeatures:
        """Gallery text features: normalised ``text_proj`` of the unimodal ``[CLS]``, and the ids and mask the
        image-grounded encoder re-reads. Pad every chunk to one length (the original: ``max_length=35``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        states = self.text_model(input_ids, attention_mask, mode="text", return_dict=True).last_hidden_state
        embeds = nn.functional.normalize(self.text_proj(states[:, 0]), dim=-1)
        return RetrievalFeatures(embeds, input_ids=input_ids, attention_mask=attention_mask)

    @torch.no_grad()
    def score_matrices(
        self,
        images: RetrievalFeatures,
        texts: RetrievalFeatures,
        k: int = 256,
        fill_value: float = -100.0,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """BLIP's retrieval scores (``train_retrieval.py:evaluation``): for each image the ``k`` texts of highest ITC
        cosine (and for each text the ``k`` images) get ``itm_head(...)[:, 1] + cosine``, the ITM match logit of the
        image-grounded encoder (``[ENC]`` first) plus the similarity; every other entry is ``fill_value``. ``k`` is 256
        for COCO and 128 for Flickr30k in the original (``k_test``), capped at the gallery size. ``batch_size``
        queries are re-scored per encoder call (see :func:`~hf_vlp.objectives.contrastive.rerank_top_k`)."""
        images.require("images", "hidden_states", built_by="encode_images")
        texts.require("texts", "input_ids", "attention_mask", built_by="encode_texts")

        def match_logits(image_indices: torch.Tensor, text_indices: torch.Tensor) -> torch.Tensor:
            return self._itm_logits(
                texts.input_ids[text_indices], texts.attention_mask[text_indices], images.hidden_states[image_indices]
            )[:, 1]

        return rerank_top_k(
            images.embeds @ texts.embeds.T, match_logits, k, add_similarity=True, fill_value=fill_value,
            batch_size=batch_size,
        )

    @torch.no_grad()
    def rank(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        k: int = 256,
        batch_size: int = 8,
    ) -> RetrievalScores:
        """:meth:`score_matrices` of a gallery small enough to encode in one batch per modality."""
        return self.score_matrices(
            self.encode_images(pixel_values), self.encode_texts(input_ids, attention_mask), k=k, batch_size=batch_size
        )


__all__ = [
    "RetrievalScores",
    "VlpBlipForImageTextRetrieval",
    "VlpBlipForImageTextRetrievalOutput",
    "VlpBlipForPretraining",
    "VlpBlipForPretrainingOutput",
    "VlpBlipMomentumModel",
    "VlpBlipRetrievalFeatures",
    "encoder_role_modules",
    "rerank_top_k",
]
