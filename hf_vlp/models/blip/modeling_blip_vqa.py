"""BLIP VQA (``models/blip_vqa.py:BLIP_VQA``, ``configs/vqa.yaml``): answers are generated, not classified.

    image -> ViT -> image tokens
    [ENC] question -> MED encoder role, cross-attending the image tokens -> question states
    [DEC] answer   -> answer decoder (MED decoder role, cross-attending the question states) -> answer_head -> logits

The question encoder is the BLIP text transformer (``text_model``, encoder role); the answer decoder is a second MED
stack with its own weights (``answer_decoder``, decoder role) whose cross-attention reads question states of the TEXT
width, and ``answer_head`` its BERT LM head tied to its word embeddings - the names ``conversion/convert_blip.py``'s
VQA rules write. Three uses:

- training (``forward`` with ``return_loss=True`` or ``labels``): each answer ``[DEC] a.. [SEP]`` is teacher-forced over
  its question's states; its loss is the summed label-smoothed token cross-entropy; ``loss = sum(weight * loss) / Q``.
- ranking (:meth:`VlpBlipForQuestionAnswering.rank_answers`, the original's ``inference='rank'``): the ``k`` candidates
  of highest first-token probability are teacher-forced and scored by minus their summed label-smoothed CE.
- generation (:meth:`VlpBlipForQuestionAnswering.generate`, ``inference='generate'``): beam search from ``[DEC]`` until
  ``[SEP]`` (beam 3, max_length 10, min_length 1), the question states seen through an all-ones mask as the original.

:meth:`VlpBlipForQuestionAnswering.from_pretraining` starts fine-tuning from a pre-trained BLIP as ``blip_vqa.py``'s
``load_checkpoint`` does.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions, BaseModelOutputWithPooling
from transformers.utils import logging

from ...generation.answers import AnswerRanking, QuestionAnsweringOutput
from ...generation.utils import (
    start_generation,
    uncached_tokens,
)
from ...generation.beam_scoring import OriginalBeamScoringMixin
from ...modules.attention import AttentionMemory
from ...modules.vision import check_finite_pixels
from ...objectives.lm import shifted_lm_loss
from ..question_answering import QuestionAnsweringHeadMixin
from ..towers import ImageTextInputs, MaskedLMOutputEmbeddingsMixin, bert_prediction_head
from .configuration_blip import VlpBlipConfig, VlpBlipTextConfig
from .modeling_blip import (
    BlipTowersMixin,
    VlpBlipPreTrainedModel,
    VlpBlipTextModel,
    check_memory_rows,
    check_no_token_types,
    with_first_token,
)
from .modeling_blip_pretraining import VlpBlipForPretraining

logger = logging.get_logger(__name__)

# configs/vqa.yaml and models/blip_vqa.py: k_test 128 candidates; generation beam 3, max_length 10, min_length 1
DEFAULT_RANK_K = 128
ANSWER_DECODING: dict[str, Any] = dict(num_beams=3, max_length=10, min_length=1)
# models/blip_vqa.py builds its ViT with drop_path_rate=0.1 (pre-training ViT-B uses 0)
VQA_DROP_PATH_RATE = 0.1
# weights of a pre-training directory that the VQA model does not copy (momentum towers, feature queues)
_NOT_COPIED_FROM_PRETRAINING = ("momentum_", "image_queue.", "text_queue.")


def answer_decoder_config(text: VlpBlipTextConfig) -> VlpBlipTextConfig:
    """The answer decoder's config: the text config with cross-attention over question states of the text width
    (``models/blip_vqa.py`` builds the decoder from the med json, whose ``encoder_width`` is the text width)."""
    config = copy.deepcopy(text)
    config.encoder_width = text.hidden_size
    return config


def copy_matching_weights(target: nn.Module, source_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``target``'s state dict from the same name in ``source_state``; names whose shape differs
    keep their initialisation and are returned, as the original's ``load_checkpoint`` drops shape-mismatched keys."""
    target_state = target.state_dict()
    absent = sorted(set(target_state) - set(source_state))
    if absent:
        raise KeyError(f"the source holds no {', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}")
    kept = {name: source_state[name] for name, tensor in target_state.items()
            if source_state[name].shape == tensor.shape}
    with torch.no_grad():
        for name, tensor in kept.items():
            target_state[name].copy_(tensor)
    return sorted(set(target_state) - set(kept))


def load_pretraining_directory(directory: str | os.PathLike, **from_pretrained_kwargs: Any) -> VlpBlipForPretraining:
    """A ``VlpBlipForPretraining`` from ``directory``, refusing one that lacks weights the VQA model copies (a
    directory of another BLIP head: ``VlpBlipModel`` has no decoder, a captioner no bidirectional encoder)."""
    model, info = VlpBlipForPretraining.from_pretrained(directory, output_loading_info=True, **from_pretrained_kwargs)
    missing = sorted(name for name in info["missing_keys"] if not name.startswith(_NOT_COPIED_FROM_PRETRAINING))
    if missing:
        raise ValueError(
            f"{os.fspath(directory)} lacks {len(missing)} weights a BLIP VQA model starts from (e.g. "
            f"{', '.join(missing[:3])}): pass a directory saved from VlpBlipForPretraining (or an original "
            "pre-training checkpoint converted with conversion/convert_blip.py --head pretraining); a fine-tuned VQA "
            "directory loads with VlpBlipForQuestionAnswering.from_pretrained"
        )
    return model


@dataclass
class VlpBlipForQuestionAnsweringOutput(QuestionAnsweringOutput):
    """``loss`` (with ``return_loss=True`` or ``labels``) = ``sum(answer_weights * answer_losses) / num_questions``;
    ``answer_losses`` ``[N]`` each answer's summed label-smoothed token CE; ``logits`` ``[N, La, vocab]`` the answer
    decoder's next-token logits (position t predicts token t + 1); ``question_states`` ``[Q, Lq, D]`` the
    image-grounded question encodings; ``cache`` the answer decoder's self-attention cache during generation."""


@dataclass
class VlpBlipAnswerRanking(AnswerRanking):
    """:meth:`VlpBlipForQuestionAnswering.rank_answers` result: ``answer_indices`` ``[Q, k]`` candidate indices best
    first, ``scores`` ``[Q, k]`` their scores (minus the summed label-smoothed CE, the original's ranking score; not
    normalised), ``first_token_probs`` ``[Q, A]`` every candidate's first-token probability after ``[DEC]``."""


class VlpBlipForQuestionAnswering(
    QuestionAnsweringHeadMixin,
    OriginalBeamScoringMixin, MaskedLMOutputEmbeddingsMixin, BlipTowersMixin, VlpBlipPreTrainedModel, GenerationMixin
):
    """BLIP VQA: ``vision_model`` + image-grounded question encoder ``text_model`` (``[ENC]`` first) + ``answer_decoder``
    (MED decoder role over the question states, ``[DEC]`` first) with its LM head ``answer_head``.

    The model puts ``[ENC]``/``[DEC]`` at position 0 itself, so questions and answers come from the processor as
    ``[CLS] .. [SEP]``. Fine-tuning uses label smoothing ``config.label_smoothing`` (0.1 in the original), which also
    enters the ranking score. :meth:`generate` decodes free answers with transformers' ``GenerationMixin`` (the question
    encoded once, its states' keys/values projected once per decoder layer and shared by the beams);
    :meth:`rank_answers` ranks a candidate list as the original's ``rank_answer``.
    """

    text_roles = ("encoder",)
    question_answering_output_class = VlpBlipForQuestionAnsweringOutput
    output_head_name = "answer_head"
    vocabulary_submodels = ("answer_decoder",)
    answer_bos_token = "bos_token"  # [DEC]
    model_card_pipeline_tag = "visual-question-answering"
    _tied_weights_keys = {"answer_head.decoder.weight": "answer_decoder.transformer.embeddings.word_embeddings.weight"}

    def __init__(self, config: VlpBlipConfig) -> None:
        super().__init__(config)
        self.build_towers(config)
        decoder = answer_decoder_config(config.text_config)
        self.answer_decoder = VlpBlipTextModel(decoder, roles=("decoder",))
        self.answer_head = bert_prediction_head(decoder)
        self.post_init()
        self.generation_config = self.default_generation_config()

    @classmethod
    def from_pretraining(
        cls,
        pretrained: VlpBlipForPretraining | str | os.PathLike,
        *,
        drop_path_rate: float | None = VQA_DROP_PATH_RATE,
        **from_pretrained_kwargs: Any,
    ) -> "VlpBlipForQuestionAnswering":
        """Build the VQA model from a pre-trained BLIP as ``models/blip_vqa.py`` loads one (``load_checkpoint`` with
        the pre-training file): ``vision_model`` <- the pre-trained ViT; the question encoder ``text_model`` <- the
        pre-trained MED in its encoder role (embeddings, bidirectional self-attention, cross-attention to the image,
        FFN); ``answer_decoder`` <- the pre-trained MED in its decoder role (embeddings, causal self-attention,
        cross-attention, FFN - the tensors the pre-trained encoder and decoder share are copied into both, which are
        separate parameters from then on); ``answer_head`` <- the pre-trained ``lm_head``.

        The answer decoder's cross-attention reads question states of the text width. When the pre-trained decoder's
        reads image tokens of another width (ViT-L with the BERT-base MED), its key/value projections keep their fresh
        initialisation, as the original drops shape-mismatched keys (a warning names them).

        ``pretrained`` is a ``VlpBlipForPretraining`` or a directory saved from one (``from_pretrained_kwargs`` go to
        its ``from_pretrained``). The config is the pre-trained one except the ViT's stochastic depth, set to
        ``drop_path_rate`` (0.1, the original VQA model's; ``None`` keeps the pre-trained value). A fine-tuning
        resolution other than the pre-training one (480 px in ``vqa.yaml``) needs ``interpolate_pos_encoding=True``
        in the forwards. Returned in eval mode on the source's device and dtype, like ``from_pretrained``.
        """
        if isinstance(pretrained, (str, os.PathLike)):
            pretrained = load_pretraining_directory(pretrained, **from_pretrained_kwargs)
        elif from_pretrained_kwargs:
            raise TypeError(
                f"from_pretrained keyword arguments {sorted(from_pretrained_kwargs)} only apply when `pretrained` is a "
                "directory"
            )
        if not isinstance(pretrained, VlpBlipForPretraining):
            raise TypeError(
                "pretrained must be a VlpBlipForPretraining (or a directory saved from one): the VQA model needs the "
                f"MED's encoder and decoder roles and the LM head; got {type(pretrained).__name__}"
            )
        config = copy.deepcopy(pretrained.config)
        if drop_path_rate is not None:
            config.vision_config.drop_path_rate = drop_path_rate
        model = cls(config)
        source_text = pretrained.text_model.state_dict()
        copy_matching_weights(model.vision_model, pretrained.vision_model.state_dict())
        copy_matching_weights(model.text_model, source_text)
        not_copied = copy_matching_weights(model.answer_decoder, source_text)
        copy_matching_weights(model.answer_head, pretrained.lm_head.state_dict())
        if not_copied:
            logger.warning(
                "The answer decoder's cross-attention reads question states of width "
                f"{config.text_config.hidden_size}, the pre-trained decoder's image tokens of width "
                f"{config.vision_config.hidden_size}: "
                f"{len(not_copied)} tensors keep their fresh initialisation ({', '.join(not_copied[:4])}"
                f"{', ...' if len(not_copied) > 4 else ''}), as the original drops shape-mismatched keys."
            )
        return model.to(device=pretrained.device, dtype=pretrained.dtype).eval()

    def default_generation_config(self) -> GenerationConfig:
        """``inference='generate'`` of ``models/blip_vqa.py``: beam 3, max_length 10 (``[DEC]`` included), min_length
        1; start ``[DEC]`` (``text_config.bos_token_id``), stop at ``[SEP]``, pad with ``[PAD]``."""
        text = self.config.text_config
        return GenerationConfig(
            bos_token_id=text.bos_token_id, eos_token_id=text.sep_token_id, pad_token_id=text.pad_token_id,
            **ANSWER_DECODING,
        )

    # ------------------------------------------------------------------------------------------- building blocks

    def run_question_encoder(
        self, questions: ImageTextInputs, **flags: bool
    ) -> tuple[BaseModelOutputWithPooling, BaseModelOutputWithPastAndCrossAttentions]:
        """The ViT, then the MED encoder role over the image tokens with ``[ENC]`` put at position 0
        (``text_encoder(question, encoder_hidden_states=image_embeds)`` in the original)."""
        image_outputs = self.encode_image(questions.pixel_values, questions.interpolate_pos_encoding, **flags)
        text_outputs = self.text_model(
            with_first_token(questions.input_ids, self._special_id("enc_token_id")),
            questions.attention_mask,
            token_type_ids=questions.token_type_ids,
            encoder_hidden_states=image_outputs.last_hidden_state,
            mode="multimodal",
            return_dict=True,
            **flags,
        )
        return image_outputs, text_outputs

    def decode_answers(
        self,
        answer_input_ids: torch.Tensor,
        question_states: torch.Tensor | AttentionMemory,
        answer_attention_mask: torch.Tensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[N, La, vocab]`` of answers ``[N, La]`` cross-attending row i of ``question_states``
        (or, through an ``AttentionMemory`` of ``Q`` questions, ``N / Q`` consecutive answers per question).

        Position 0 becomes ``[DEC]`` unless a ``cache`` already holds earlier positions; then ``answer_input_ids`` are
        the new tokens and ``answer_attention_mask`` covers cached + new positions. Masks are 1/0; ``None`` = all
        visible (the question mask has one row per question-states row)."""
        check_memory_rows(
            answer_input_ids.shape[0], question_states, "the answer decoder pairs answer row i with question row i",
            "repeat the question states per answer, or wrap them in an AttentionMemory",
        )
        if cache is None or cache.get_seq_length() == 0:
            answer_input_ids = with_first_token(answer_input_ids, self._special_id("bos_token_id"))
        hidden = self.answer_decoder(
            answer_input_ids,
            answer_attention_mask,
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_attention_mask,
            mode="decoder",
            cache=cache,
            use_cache=cache is not None,
            return_dict=True,
        ).last_hidden_state
        return self.answer_head(hidden)

    # ----------------------------------------------------------------------------------------------- generation

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        question_states: torch.Tensor | AttentionMemory | None = None,
        cache: Cache | None = None,
        next_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One decoding step's ``forward`` inputs: the answer tokens the cache has not seen and the question states
        (an ``AttentionMemory`` shared by the beams, or with ``use_cache=False`` the states repeated per beam), read
        without a mask as the original's generation does."""
        if question_states is None:
            raise ValueError(
                "VlpBlipForQuestionAnswering decodes from question states: call generate(pixel_values=..., "
                "input_ids=questions), which encodes the questions once"
            )
        return {
            "answer_input_ids": uncached_tokens(input_ids, next_sequence_length),
            "question_states": question_states,
            "cache": cache,
        }

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        interpolate_pos_encoding: bool = False,
        beam_scoring: str = "original",
        **kwargs: Any,
    ) -> Any:
        """Free answers to questions ``input_ids`` ``[Q, Lq]`` about ``pixel_values``: the question encoder runs once
        (with ``attention_mask``), then transformers' ``generate`` decodes ``[DEC] answer.. [SEP]`` over the question
        states seen through an all-ones mask, as the original (padded question positions included).

        ``kwargs`` are ``generate``'s; defaults come from ``self.generation_config`` (:meth:`default_generation_config`).
        ``beam_scoring`` as :meth:`VlpBlipForConditionalGeneration.generate`. Returns ``[Q * num_return_sequences, T]``
        ids starting with ``[DEC]``, ``[PAD]`` after ``[SEP]``.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("generate needs the images (pixel_values) and the tokenised questions (input_ids)")
        check_finite_pixels(pixel_values)
        generation_config = start_generation(self, kwargs, generation_config, "answer from [DEC]")
        check_no_token_types(kwargs.pop("token_type_ids", None))
        question_states = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        start_ids = torch.full(
            (input_ids.shape[0], 1), self._special_id("bos_token_id"), dtype=torch.long, device=question_states.device
        )
        return self.generate_over_states(
            beam_scoring, kwargs, generation_config, self.answer_decoder.config, start_ids, "question_states",
            question_states,
        )

    # ------------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def rank_answer_list(
        self,
        processor: Any,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_list: list[str] | None = None,
        k: int = DEFAULT_RANK_K,
        interpolate_pos_encoding: bool = False,
    ) -> list[str]:
        """The best answer to each question among ``answer_list`` (default ``processor.answer_list``, the candidates
        saved with a ``VlpBlipProcessor``) by :meth:`rank_answers` - the original's ``inference='rank'`` answers."""
        candidates = processor.encode_answers(answer_list, return_tensors="pt")
        answers = answer_list if answer_list is not None else processor.answer_list
        ranking = self.rank_answers(
            pixel_values.to(device=self.device, dtype=self.dtype),
            input_ids.to(self.device),
            candidates["input_ids"].to(self.device),
            attention_mask=None if attention_mask is None else attention_mask.to(self.device),
            answer_attention_mask=candidates["attention_mask"].to(self.device),
            k=k,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        return [answers[index] for index in ranking.answer_indices[:, 0].tolist()]

    @torch.no_grad()
    def rank_answers(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        answer_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        k: int = DEFAULT_RANK_K,
        interpolate_pos_encoding: bool = False,
    ) -> VlpBlipAnswerRanking:
        """Rank candidate answers ``[A, La]`` (``[CLS] a.. [SEP] [PAD]..``) for each question as BLIP's
        ``rank_answer``: the decoder fed ``[DEC]`` alone gives every candidate's first-token probability; the ``k``
        most probable candidates are teacher-forced and scored by minus their summed label-smoothed CE - no
        first-token term, no softmax (unlike ALBEF). ``k`` is capped at the number of candidates (``k_test`` 128 in
        ``vqa.yaml``); the question mask applies throughout, as in the original."""
        if k < 1:
            raise ValueError(f"k (candidates kept after first-token pruning) must be >= 1, got {k}")
        if answer_input_ids.ndim != 2 or answer_input_ids.shape[1] < 2:
            raise ValueError("answer_input_ids must be [A, La] rows [CLS] answer [SEP]: at least 2 tokens per candidate")
        num_candidates = answer_input_ids.shape[0]
        k = min(k, num_candidates)
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        question_states = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        num_questions = question_states.shape[0]
        start_ids = answer_input_ids.new_full((num_questions, 1), self._special_id("bos_token_id"))
        start_logits = self.decode_answers(start_ids, question_states, None, attention_mask)[:, 0]
        first_token_probs = nn.functional.softmax(start_logits, dim=-1).index_select(1, answer_input_ids[:, 1])
        _, topk_ids = first_token_probs.topk(k, dim=1)
        flat = topk_ids.reshape(-1)
        candidates, candidate_mask = answer_input_ids[flat], answer_attention_mask[flat]
        logits = self.decode_answers(candidates, AttentionMemory(question_states), candidate_mask, attention_mask)
        losses = shifted_lm_loss(logits, self.answer_labels(candidates), self.config.label_smoothing, per_sequence=True)
        scores = -losses.view(num_questions, k)
        order = scores.argsort(dim=1, descending=True, stable=True)
        return VlpBlipAnswerRanking(topk_ids.gather(1, order), scores.gather(1, order), first_token_probs)


__all__ = [
    "ANSWER_DECODING",
    "VQA_DROP_PATH_RATE",
    "VlpBlipAnswerRanking",
    "VlpBlipForQuestionAnswering",
    "VlpBlipForQuestionAnsweringOutput",
    "answer_decoder_config",
    "copy_matching_weights",
    "load_pretraining_directory",
]
