"""ALBEF visual question answering (``models/model_vqa.py`` + ``VQA.py``): a question encoder (text and fusion layers
over the image tokens) and a causal BERT answer decoder cross-attending to the question states, trained on weighted
answers with momentum distillation; it ranks a candidate list (as the original) or generates free answers with
transformers' ``generate``."""

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Cache, GenerationConfig, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithCrossAttentions, BaseModelOutputWithPooling

from ...generation.answers import AnswerRanking, QuestionAnsweringOutput
from ...generation.utils import (
    finish_generation_kwargs,
    resolved_generation_value,
    start_generation,
    uncached_tokens,
)
from ...modules.attention import padding_mask
from ...modules.vision import check_finite_pixels
from ...objectives.lm import summed_answer_losses
from ...objectives.momentum import ModulePair, MomentumModelMixin
from ..question_answering import AnswerInputs, QuestionAnsweringHeadMixin
from ..towers import DualTowerHeadMixin, ImageTextInputs, MaskedLMOutputEmbeddingsMixin, bert_prediction_head
from .configuration_albef import VlpAlbefConfig, VlpAlbefTextConfig
from .modeling_albef import VlpAlbefForMaskedLM, VlpAlbefPreTrainedModel, VlpAlbefTextModel, VlpAlbefVisionModel
from .modeling_albef_pretraining import VlpAlbefForPretraining

logger = logging.getLogger(__name__)


@dataclass
class VlpAlbefForQuestionAnsweringOutput(QuestionAnsweringOutput):
    """ALBEF VQA training outputs. ``loss`` (set only with ``return_loss=True``) is
    ``sum(answer_weights * answer_losses) / num_questions``; ``answer_losses`` ``[N]`` is each answer's summed
    (distilled) token loss. ``logits`` ``[N, La, vocab]`` are the answer decoder's next-token logits over
    ``answer_input_ids`` (position ``t`` predicts token ``t + 1``); ``question_states`` ``[Q, Lq, D]`` the fused
    question states the decoder attends to. ``cache`` is the answer decoder's key/value cache when one was passed
    (generation)."""



@dataclass
class VlpAlbefAnswerRanking(AnswerRanking):
    """``rank_answers`` result: ``answer_indices`` ``[Q, k]`` candidate indices best first, ``scores`` ``[Q, k]``
    their softmax-normalised scores, ``first_token_probs`` ``[Q, A]`` every candidate's first-token probability."""


def answer_decoder_config(text: VlpAlbefTextConfig, num_layers: int) -> VlpAlbefTextConfig:
    """The answer decoder's config: the text encoder's with ``num_layers`` layers, all cross-attending (fusion layer
    0) to question states of the text width (``models/model_vqa.py`` hard-codes 6 layers and fusion layer 0)."""
    config = copy.deepcopy(text)
    config.num_hidden_layers = num_layers
    config.fusion_layer = 0
    config.encoder_width = text.hidden_size
    return config



class VlpAlbefForQuestionAnswering(
    QuestionAnsweringHeadMixin,
    MaskedLMOutputEmbeddingsMixin, DualTowerHeadMixin, MomentumModelMixin, VlpAlbefPreTrainedModel, GenerationMixin
):
    """ALBEF VQA (``models/model_vqa.py`` + ``VQA.py``): a question encoder (text layers, then fusion layers over the
    image tokens) and an answer decoder - a causal BERT whose every layer cross-attends to the question states - with
    its own embeddings and LM head. Answers are ``[CLS] answer [SEP]`` (``[CLS]`` is the decoder's BOS).

    Training (``forward`` with ``return_loss=True``): each question's states are repeated for each of its
    ``answers_per_question``; every answer's loss is its summed token CE distilled from the momentum towers
    (``(1 - alpha) * CE + alpha * soft-CE``); ``loss = sum(answer_weights * answer_loss) / num_questions``. The EMA
    step runs in ``hf_vlp.MomentumCallback`` (the original runs it at the start of every training forward).
    Inference (:meth:`rank_answers`): rank a fixed candidate list as the original's ``rank_answer``; or
    (:meth:`generate`, transformers' ``GenerationMixin``) decode free answers greedily or by beam search, the
    question encoded once and the decoder run with a KV cache, from ``[CLS]`` until ``[SEP]``
    (``model.generate(**processor(images=..., text=questions, text_kind="question", return_tensors="pt"))``;
    :meth:`generate_answers` returns the decoded strings). :meth:`from_pretraining` starts from a pretrained ALBEF
    as ``VQA.py`` does.

    Weights: ``vision_model``, ``text_model``, ``answer_decoder``, ``answer_head`` (decoder tied to the answer
    decoder's word embeddings) and their frozen ``momentum_*`` copies.
    """

    accepts_loss_kwargs = False
    question_answering_output_class = VlpAlbefForQuestionAnsweringOutput
    output_head_name = "answer_head"
    vocabulary_submodels = ("answer_decoder",)
    answer_decoder_layers = 6  # hard-coded in the original
    answer_ranking_scores = "probabilities"  # rank_answers' scores are a softmax over the kept candidates (pipelines)
    _tied_weights_keys = {
        "answer_head.decoder.weight": "answer_decoder.transformer.embeddings.word_embeddings.weight",
        "momentum_answer_head.decoder.weight": "momentum_answer_decoder.transformer.embeddings.word_embeddings.weight",
    }

    def __init__(self, config: VlpAlbefConfig) -> None:
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        if text.encoder_width != text.hidden_size:
            raise ValueError(
                f"ALBEF VQA's answer decoder cross-attends with the text config's encoder_width "
                f"({text.encoder_width}) to question states of the text width ({text.hidden_size}); the vision "
                "width must equal the text width (set vision_config.hidden_size = text_config.hidden_size)."
            )
        decoder = answer_decoder_config(text, self.answer_decoder_layers)
        self.vision_model = VlpAlbefVisionModel(vision)
        self.text_model = VlpAlbefTextModel(text)
        self.answer_decoder = VlpAlbefTextModel(decoder)
        self.answer_head = bert_prediction_head(text)
        self.momentum_vision_model = VlpAlbefVisionModel(vision)
        self.momentum_text_model = VlpAlbefTextModel(text)
        self.momentum_answer_decoder = VlpAlbefTextModel(decoder)
        self.momentum_answer_head = bert_prediction_head(text)
        self.post_init()
        self.init_momentum()
        self.generation_config = self.default_generation_config()

    def default_generation_config(self) -> GenerationConfig:
        """Answer decoding defaults: start at ``[CLS]`` (``text_config.cls_token_id``), stop at ``[SEP]``
        (``text_config.sep_token_id``), pad with ``text_config.pad_token_id``; beam search with 3 beams and at most
        10 new tokens (about BLIP's VQA ``generate`` settings; ALBEF itself only ranks a candidate list)."""
        text = self.config.text_config
        return GenerationConfig(
            bos_token_id=text.cls_token_id,
            eos_token_id=text.sep_token_id,
            pad_token_id=text.pad_token_id,
            num_beams=3,
            max_new_tokens=10,
        )

    @classmethod
    def from_pretraining(
        cls,
        pretrained: "VlpAlbefForPretraining | VlpAlbefForMaskedLM | str | os.PathLike",
        **from_pretrained_kwargs: Any,
    ) -> "VlpAlbefForQuestionAnswering":
        """Build the VQA model from a pretrained ALBEF as the original ``VQA.py`` does: the image tower and the
        question encoder (text and fusion layers) copy the pretrained ones; answer-decoder layer ``j`` copies
        pretrained fusion layer ``fusion_layer + j``; the decoder's embeddings and the answer head copy the pretrained
        text embeddings and MLM head; the momentum towers start equal to the online ones.

        ``pretrained`` is a ``VlpAlbefForPretraining`` (or ``VlpAlbefForMaskedLM``) instance or a directory saved
        from one (``from_pretrained_kwargs`` go to its ``from_pretrained``). The config is the pretrained one; a
        different fine-tuning resolution needs ``interpolate_pos_encoding=True`` in the forwards. Returned in eval
        mode, like ``from_pretrained``.
        """
        if isinstance(pretrained, (str, os.PathLike)):
            pretrained = VlpAlbefForPretraining.from_pretrained(pretrained, **from_pretrained_kwargs)
        elif from_pretrained_kwargs:
            raise TypeError(
                f"from_pretrained keyword arguments {sorted(from_pretrained_kwargs)} only apply when `pretrained` "
                "is a directory"
            )
        if not isinstance(pretrained, (VlpAlbefForPretraining, VlpAlbefForMaskedLM)):
            raise TypeError(
                "pretrained must be a VlpAlbefForPretraining or VlpAlbefForMaskedLM (or a directory saved from one), "
                f"got {type(pretrained).__name__}"
            )
        config = copy.deepcopy(pretrained.config)
        text = config.text_config
        fusion_layers = text.num_hidden_layers - text.fusion_layer
        if fusion_layers < cls.answer_decoder_layers:
            logger.warning(
                "The answer decoder has %d layers but the pretrained text encoder only %d fusion layers; decoder "
                "layers %d-%d keep their initialisation (the original always has 6 fusion layers).",
                cls.answer_decoder_layers, fusion_layers, fusion_layers, cls.answer_decoder_layers - 1,
            )
        model = cls(config)
        source = pretrained
        source_text = source.text_model.transformer
        decoder = model.answer_decoder.transformer
        with torch.no_grad():
            model.vision_model.load_state_dict(source.vision_model.state_dict())
            model.text_model.load_state_dict(source.text_model.state_dict())
            decoder.embeddings.load_state_dict(source_text.embeddings.state_dict())
            for index, layer in enumerate(decoder.encoder.layers[:fusion_layers]):
                layer.load_state_dict(source_text.encoder.layers[text.fusion_layer + index].state_dict())
            if pretrained.mlm_head is None:
                logger.warning("The pretrained model has no MLM head; the answer head keeps its initialisation.")
            else:
                model.answer_head.load_state_dict(pretrained.mlm_head.state_dict())
        model.tie_weights()
        model.init_momentum()
        return model.to(device=pretrained.device, dtype=pretrained.dtype).eval()

    def momentum_pairs(self) -> list[ModulePair]:
        """(online, momentum) pairs for the EMA; decoder and LM head form one pair so the tied weight counts once."""
        return [
            (self.vision_model, self.momentum_vision_model),
            (self.text_model, self.momentum_text_model),
            (nn.ModuleList([self.answer_decoder, self.answer_head]),
             nn.ModuleList([self.momentum_answer_decoder, self.momentum_answer_head])),
        ]

    # ------------------------------------------------------------------------------------------- building blocks

    def run_question_encoder(
        self, questions: ImageTextInputs, momentum: bool = False, **flags: bool
    ) -> tuple[BaseModelOutputWithPooling, BaseModelOutputWithCrossAttentions]:
        """The ViT, then all text-encoder layers over its tokens (``momentum`` uses the EMA towers)."""
        vision = self.momentum_vision_model if momentum else self.vision_model
        text = self.momentum_text_model if momentum else self.text_model
        image_outputs = vision(
            questions.pixel_values, interpolate_pos_encoding=questions.interpolate_pos_encoding, return_dict=True, **flags
        )
        text_outputs = text(
            questions.input_ids, questions.attention_mask, questions.token_type_ids,
            encoder_hidden_states=image_outputs.last_hidden_state, mode="full", return_dict=True, **flags,
        )
        return image_outputs, text_outputs

    def decode_answers(
        self,
        answer_input_ids: torch.Tensor,
        question_states: torch.Tensor,
        answer_attention_mask: torch.Tensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        momentum: bool = False,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[N, La, vocab]`` of answers ``[N, La]`` under a causal mask, each cross-attending to
        its row of ``question_states`` ``[N, Lq, D]`` (1/0 masks; ``None`` = all visible).

        With a key/value ``cache`` holding the first ``t`` tokens, ``answer_input_ids`` are the tokens that follow
        (positions ``t, t + 1, ...``) and are appended to it; an ``answer_attention_mask`` must then cover all
        ``t + La`` tokens."""
        decoder = self.momentum_answer_decoder if momentum else self.answer_decoder
        head = self.momentum_answer_head if momentum else self.answer_head
        if answer_input_ids.shape[0] != question_states.shape[0]:
            raise ValueError(
                f"decode_answers pairs answer row i with question row i: got {answer_input_ids.shape[0]} answers "
                f"and {question_states.shape[0]} question states (repeat the states per answer)"
            )
        transformer = decoder.transformer
        past_length = cache.get_seq_length() if cache is not None else 0
        hidden = transformer.embeddings(answer_input_ids, position_offset=past_length)
        dtype = hidden.dtype
        self_mask = padding_mask(answer_attention_mask, dtype)
        cross_mask = padding_mask(question_attention_mask, dtype)
        hidden = transformer.encoder(
            hidden, self_mask, question_states, cross_mask, mode="full", is_causal=True, cache=cache
        ).last_hidden_state
        return head(hidden)

    # ------------------------------------------------------------------------------------------------- training

    def teacher_answer_logits(
        self, alpha: float | None, questions: ImageTextInputs | None, answers: AnswerInputs
    ) -> tuple[torch.Tensor | None, float]:
        """The momentum towers' answer logits (the distillation teacher) when ``alpha`` (default
        ``self.distill_alpha``) is positive; the answers' summed token loss is then ``(1 - alpha) * CE +
        alpha * soft-CE``."""
        alpha = self.distill_alpha if alpha is None else float(alpha)
        if alpha <= 0:
            return None, alpha
        if questions is None or answers.answers_per_question is None:
            raise ValueError(
                "distillation (alpha > 0) runs the momentum towers on input_ids and pixel_values: pass them, or alpha=0"
            )
        with torch.no_grad():
            momentum_states = self.run_question_encoder(questions, momentum=True)[1].last_hidden_state
            logits = self.decode_answers(
                answers.input_ids,
                momentum_states.repeat_interleave(answers.answers_per_question, dim=0),
                answers.attention_mask,
                answers.question_mask,
                momentum=True,
            )
        return logits, alpha

    # ----------------------------------------------------------------------------------------------- generation

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        question_states: torch.Tensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        next_sequence_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One decoding step's ``forward`` inputs: the answer tokens the cache has not seen, the question states
        (repeated per beam by ``generate``) and their mask. ``input_ids`` are the answers generated so far;
        ``attention_mask`` is ``generate``'s mask over them (all ones: answers hold no padding) and is dropped."""
        if question_states is None:
            raise ValueError(
                "VlpAlbefForQuestionAnswering decodes from question states: call generate(pixel_values=..., "
                "input_ids=questions, attention_mask=...), which encodes the questions once"
            )
        return {
            "answer_input_ids": uncached_tokens(input_ids, next_sequence_length),
            "question_states": question_states,
            "attention_mask": question_attention_mask,
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
        **kwargs: Any,
    ) -> Any:
        """Generate free answers to ``Q`` questions ``input_ids`` ``[Q, Lq]`` about ``pixel_values``: the question
        encoder runs once, then transformers' ``generate`` decodes ``[CLS] answer.. [SEP]`` with the answer decoder
        cross-attending to the question states (repeated per beam) and a KV cache.

        ``kwargs`` are ``generate``'s (``max_new_tokens``, ``num_beams``, ``do_sample``, ``return_dict_in_generate``,
        ...); defaults come from ``self.generation_config`` (see :meth:`default_generation_config`). Returns what
        ``generate`` returns: ``[Q * num_return_sequences, T]`` ids starting with ``[CLS]`` by default.
        """
        if pixel_values is None or input_ids is None:
            raise ValueError("generate needs the images (pixel_values) and the tokenised questions (input_ids)")
        check_finite_pixels(pixel_values)
        generation_config = start_generation(self, kwargs, generation_config, "answer from [CLS]")
        bos_token_id = resolved_generation_value("bos_token_id", kwargs, generation_config, self.generation_config)
        if bos_token_id is None:
            raise ValueError(
                "answers start with [CLS]: set config.text_config.cls_token_id (the tokenizer's [CLS] id) or pass "
                "bos_token_id; generate_answers(processor, ...) takes the special tokens from the tokenizer"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        question_states = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        start_ids = torch.full((input_ids.shape[0], 1), int(bos_token_id), dtype=torch.long, device=input_ids.device)
        kwargs = finish_generation_kwargs(kwargs, generation_config, self.generation_config, self.answer_decoder.config)
        return super().generate(
            input_ids=start_ids, question_states=question_states, question_attention_mask=attention_mask, **kwargs
        )

    # ------------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def rank_answers(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        answer_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        k: int = 128,
        interpolate_pos_encoding: bool = False,
    ) -> VlpAlbefAnswerRanking:
        """Rank the candidate answers ``[A, La]`` for each question as ALBEF's ``rank_answer``: keep the ``k``
        candidates of highest first-token probability under the decoder fed ``[CLS]`` alone, teacher-force them,
        score ``log p_first - summed CE`` (the first token counts twice, as in the original), softmax over the
        ``k`` and sort. ``k`` is capped at the number of candidates (128 in ``VQA.yaml``)."""
        if k < 1:
            raise ValueError(f"k (candidates kept after first-token pruning) must be >= 1, got {k}")
        num_candidates = answer_input_ids.shape[0]
        if answer_input_ids.shape[1] < 2:
            raise ValueError("answer_input_ids must be [CLS] answer [SEP]: at least 2 tokens per candidate")
        k = min(k, num_candidates)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        question_states = self.encode_question(
            pixel_values, input_ids, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding
        )
        num_questions = question_states.shape[0]
        start_ids = answer_input_ids[:1, :1].expand(num_questions, 1)
        start_logits = self.decode_answers(start_ids, question_states, None, attention_mask)[:, 0]
        first_token_probs = nn.functional.softmax(start_logits, dim=-1).index_select(1, answer_input_ids[:, 1])
        topk_probs, topk_ids = first_token_probs.topk(k, dim=1)
        candidate_ids = answer_input_ids[topk_ids.reshape(-1)]
        candidate_mask = answer_attention_mask[topk_ids.reshape(-1)]
        labels = candidate_ids.masked_fill(candidate_ids == self.config.text_config.pad_token_id, -100)
        logits = self.decode_answers(
            candidate_ids,
            question_states.repeat_interleave(k, dim=0),
            candidate_mask,
            attention_mask.repeat_interleave(k, dim=0),
        )
        sequence_losses = summed_answer_losses(logits, labels).view(num_questions, k)
        scores = nn.functional.softmax(topk_probs.log() - sequence_losses, dim=-1)
        scores, order = scores.topk(k, dim=1)
        return VlpAlbefAnswerRanking(torch.gather(topk_ids, 1, order), scores, first_token_probs)


__all__ = [
    "VlpAlbefAnswerRanking",
    "VlpAlbefForQuestionAnswering",
    "VlpAlbefForQuestionAnsweringOutput",
    "answer_decoder_config",
]
