"""Visual question answering as a transformers pipeline, under hf_vlp's own task name.

transformers 5 removed its ``visual-question-answering`` task (and refuses to register another pipeline under that
name), so hf_vlp registers :data:`VQA_TASK` on ``import hf_vlp``::

    answerer = transformers.pipeline("vlp-visual-question-answering", model="path/to/vqa-model")
    answerer(image, "what colour is the square?", top_k=3)
    # [{"answer": "red", "score": 0.91}, {"answer": "blue", "score": 0.05}, ...]

The model loads with ``AutoModelForVisualQuestionAnswering`` (ALBEF's, BLIP's and ViLT's VQA heads) and the processor
saved next to it. Answers come from one of three strategies (``mode``):

- ``"rank"`` (the default when an answer list is known): the model ranks a fixed candidate list - ``answer_list`` of
  the call, else the ``answer_list`` saved with the processor - as the originals evaluate VQAv2. A score is the
  answer's probability among the ``rank_k`` candidates that survive the first-token pruning: the softmax of the
  model's ranking scores over them (ALBEF's ranking already is that softmax; BLIP's scores are summed log-likelihoods).
- ``"generate"`` (the default without an answer list): the answer decoder generates free answers with the model's
  generation settings (``generate_kwargs`` override them; ``top_k > 1`` returns that many beams). A score is the
  probability of the whole answer under the decoder (its tokens and the end token, teacher-forced, with the question
  padding mask applied); answers are sorted by it, so for ``top_k > 1`` the order can differ from beam search's
  length-normalised one. Beams that decode to the same text are merged (fewer than ``top_k`` answers then).
- ``"classify"`` (the only one of a classifier head, ViLT's): the model scores its fixed answer vocabulary
  (``config.id2label``, VQAv2's 3,129 answers for the released ViLT); a score is the answer's sigmoid probability.

A new VQA head plugs in through what the pipeline calls on the model (:mod:`hf_vlp.integrations.vqa_strategies`):

- ranking: ``rank_answers(pixel_values, input_ids, answer_input_ids, attention_mask=, answer_attention_mask=, k=)``
  returning ``answer_indices`` and ``scores`` (``[Q, k]``, best first) over candidates tokenised by the processor's
  ``encode_answers``; a class attribute ``answer_ranking_scores = "probabilities"`` says the scores already are
  probabilities (otherwise they are log-scores the pipeline softmaxes);
- generating: a :class:`~hf_vlp.models.question_answering.QuestionAnsweringHeadMixin` (``generate`` from the
  question inputs, ``forward`` over ``answer_input_ids`` and precomputed ``question_states``).

Another kind of head (e.g. a classifier over a fixed answer vocabulary) is one more entry of ``ANSWER_STRATEGIES``.
The processor is called as ``processor(images=..., text=question, text_kind="question", return_tensors="pt")``
(``text_kind`` only when it takes one).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import Pipeline

from ..utils.text_processing import checked_answers
from .vqa_strategies import ANSWER_STRATEGIES

__all__ = [
    "VQA_TASK",
    "VlpVisualQuestionAnsweringPipeline",
    "register_vqa_pipeline",
]

VQA_TASK = "vlp-visual-question-answering"
MODEL_INPUTS = ("pixel_values", "input_ids", "attention_mask", "pixel_mask")
ImageAndQuestion = dict[str, Any]


def _is_single_image(image: Any) -> bool:
    return not isinstance(image, (list, tuple))


def image_question_pairs(image: Any, question: str | Sequence[str] | None) -> tuple[list[ImageAndQuestion], bool]:
    """The call's inputs as ``[{"image", "question"}, ...]`` and whether it asked one question: one image with one
    question or a list of questions (the image asked each), a list of images with one question or as many questions,
    or ``{"image", "question"}`` dicts."""
    if question is None:
        items = [image] if isinstance(image, dict) else image
        if not isinstance(items, (list, tuple)) or not all(isinstance(item, dict) for item in items):
            raise ValueError(
                "Pass an image and a question (pipe(image, 'what is ...?')), or {'image': ..., 'question': ...} "
                "dicts (one, or a list)."
            )
        return list(items), isinstance(image, dict)
    questions = [question] if isinstance(question, str) else list(question)
    images = [image] if _is_single_image(image) else list(image)
    if len(images) == 1 and len(questions) > 1:
        images = images * len(questions)
    elif len(questions) == 1 and len(images) > 1:
        questions = questions * len(images)
    elif len(images) != len(questions):
        raise ValueError(
            f"Got {len(images)} images and {len(questions)} questions: pass one image per question, one image for "
            "all questions, or one question for all images."
        )
    pairs = [{"image": item, "question": text} for item, text in zip(images, questions)]
    return pairs, _is_single_image(image) and isinstance(question, str)


# --------------------------------------------------------------------------------------------------- pipeline


class VlpVisualQuestionAnsweringPipeline(Pipeline):
    """Answers questions about images with an hf_vlp VQA head, by ranking a candidate list or by generating (see the
    module docstring). Returns ``[{"answer": str, "score": float}, ...]`` best first for one question, a list of
    those for several.

    Call parameters (also accepted by ``pipeline(...)``): ``top_k`` (answers returned, default 1), ``mode``
    (``"rank"``/``"generate"``; default ``"rank"`` when an answer list is known), ``answer_list`` (candidates for
    ranking; default the processor's), ``rank_k`` (candidates kept after the first-token pruning, default 128),
    ``generate_kwargs`` (``generate`` settings) and ``timeout`` (for loading images from URLs).
    """

    _load_processor = None  # loaded when saved with the model; see __init__
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check_model()
        if self.processor is None:
            self.processor = self._saved_processor()
        self.tokenizer = self.tokenizer or getattr(self.processor, "tokenizer", None)
        self.image_processor = self.image_processor or getattr(self.processor, "image_processor", None)
        self._takes_text_kind = "text_kind" in inspect.signature(self.processor.__call__).parameters
        self._answer_cache: tuple[tuple[str, ...], torch.Tensor, torch.Tensor] | None = None

    # ---------------------------------------------------------------------------------------------- set-up

    def _check_model(self) -> None:
        """A VQA head, and not one loaded from another head's save (whose answer decoder would be random)."""
        model = self.model
        supported = [mode for mode, (supports, _) in ANSWER_STRATEGIES.items() if supports(model)]
        if not supported:
            raise TypeError(
                f"{type(model).__name__} has no VQA head: the {VQA_TASK} pipeline needs a model that ranks candidate "
                "answers (rank_answers) or generates them (a QuestionAnsweringHeadMixin), e.g. "
                "VlpAlbefForQuestionAnswering or VlpBlipForQuestionAnswering - load a VQA model's directory or pass "
                "such a model."
            )
        saved = list(getattr(model.config, "architectures", None) or [])
        if saved and not {cls.__name__ for cls in type(model).__mro__} & set(saved):
            build = getattr(type(model), "from_pretraining", None)
            fix = f" or build one with {type(model).__name__}.from_pretraining(directory)" if build else ""
            raise ValueError(
                f"{model.name_or_path or 'The model'} was saved from a {saved[0]}, not a {type(model).__name__}: its "
                f"VQA answer decoder would start untrained. Fine-tune a VQA model first (hf-vlp train ... --task vqa)"
                f"{fix}."
            )

    def _saved_processor(self) -> Any:
        """The processor saved next to the model; an in-memory model without one needs ``processor=``."""
        source = getattr(self.model, "name_or_path", "")
        if source:
            try:
                return AutoProcessor.from_pretrained(source)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"Could not load the processor saved with {source!r} ({error}); pass processor=... (the model's "
                    "VlpAlbefProcessor / VlpBlipProcessor)."
                ) from error
        raise ValueError(
            f"The {VQA_TASK} pipeline needs the model's processor: pass processor=... (e.g. the VlpAlbefProcessor / "
            "VlpBlipProcessor it was trained with), or load the model from a directory that holds one."
        )

    def encoded_answers(self, candidates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``processor.encode_answers(candidates)`` ids and mask, cached for the last candidate list."""
        key = tuple(candidates)
        if self._answer_cache is None or self._answer_cache[0] != key:
            encoded = self.processor.encode_answers(list(candidates), return_tensors="pt")
            self._answer_cache = (key, encoded["input_ids"], encoded["attention_mask"])
        return self._answer_cache[1], self._answer_cache[2]

    def resolve_mode(self, mode: str | None, answer_list: Sequence[str] | None) -> str:
        """``mode``, or the default: ranking when the model ranks and an answer list is known, else generation."""
        supports = {name: check(self.model) for name, (check, _) in ANSWER_STRATEGIES.items()}
        if mode is None and supports["classify"]:
            mode = "classify"
        elif mode is None:
            mode = "rank" if supports["rank"] and (answer_list is not None or not supports["generate"]) else "generate"
        if mode not in ANSWER_STRATEGIES:
            raise ValueError(f"mode must be one of {sorted(ANSWER_STRATEGIES)}, got {mode!r}.")
        if not supports[mode]:
            raise TypeError(f"{type(self.model).__name__} cannot answer with mode={mode!r}; it supports "
                            f"{[name for name, ok in supports.items() if ok]}.")
        if mode == "rank" and answer_list is None:
            raise ValueError(
                f"{type(self.model).__name__} ranks a candidate answer list, but none is known: pass "
                "answer_list=[...] to the call, or store one with the processor (processor.answer_list = [...]; "
                "processor.save_pretrained(model_directory))"
                + (", or answer freely with mode='generate'." if supports["generate"] else ".")
            )
        return mode

    # ------------------------------------------------------------------------------------------- pipeline

    def __call__(
        self, image: Any = None, question: str | Sequence[str] | None = None, **kwargs: Any
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Answer ``question`` about ``image`` (a PIL image, a path or URL, or ``{"image", "question"}`` dicts; lists
        of either, or a dataset/generator of dicts). One question gives ``[{"answer", "score"}, ...]`` best first,
        several a list of those."""
        if question is None and not isinstance(image, (dict, list, tuple)):
            return super().__call__(image, **kwargs)  # a dataset or generator of dicts: streamed results
        pairs, single = image_question_pairs(image, question)
        results = super().__call__(pairs, **kwargs)
        return results[0] if single else results

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        mode: str | None = None,
        answer_list: Sequence[str] | None = None,
        rank_k: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        **unknown: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unknown:
            raise TypeError(f"Unknown {VQA_TASK} parameters {sorted(unknown)}; see VlpVisualQuestionAnsweringPipeline.")
        forward: dict[str, Any] = {}
        for name, value in (("top_k", top_k), ("rank_k", rank_k)):
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
                forward[name] = value
        if mode is not None:
            forward["mode"] = mode
        if answer_list is not None:
            forward["answer_list"] = checked_answers(answer_list, "answer_list")
        if generate_kwargs is not None:
            forward["generate_kwargs"] = dict(generate_kwargs)
        preprocess = {} if timeout is None else {"timeout": timeout}
        return preprocess, forward, {}

    def preprocess(self, inputs: ImageAndQuestion, timeout: float | None = None) -> dict[str, Any]:
        if not isinstance(inputs, dict) or "image" not in inputs or "question" not in inputs:
            raise ValueError(f"Each input needs an 'image' and a 'question'; got {inputs!r}.")
        question = inputs["question"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"A question must be a non-empty string, got {question!r}.")
        image = load_image(inputs["image"], timeout=timeout)
        options = {"text_kind": "question"} if self._takes_text_kind else {}
        encoded = self.processor(images=image, text=question, return_tensors="pt", **options)
        model_inputs = {name: encoded[name] for name in MODEL_INPUTS if name in encoded}
        if "attention_mask" not in model_inputs:
            model_inputs["attention_mask"] = torch.ones_like(model_inputs["input_ids"])
        model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)  # pixel_mask stays integer
        return {**model_inputs, "question": question}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        top_k: int = 1,
        mode: str | None = None,
        answer_list: Sequence[str] | None = None,
        rank_k: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        # one question arrives as a string, a batch (batch_size > 1) as a list: answers follow the same shape so that
        # the pipeline hands postprocess one question's answers either way
        batched = isinstance(model_inputs["question"], list)
        candidates = answer_list if answer_list is not None else getattr(self.processor, "answer_list", None)
        mode = self.resolve_mode(mode, candidates)
        options = {"answer_list": candidates, "rank_k": rank_k, "generate_kwargs": generate_kwargs}
        inputs = {name: model_inputs[name] for name in MODEL_INPUTS if name in model_inputs}
        from ..evaluation.embeddings import eval_mode  # hf_vlp.evaluation loads on first use, not on import hf_vlp

        with eval_mode(self.model):
            answers, scores = ANSWER_STRATEGIES[mode][1](self, inputs, top_k, options)
        return {"answers": answers if batched else answers[0], "scores": scores if batched else scores[0]}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"answer": answer, "score": float(score)}
            for answer, score in zip(model_outputs["answers"], model_outputs["scores"])
        ]


def register_vqa_pipeline() -> None:
    """Register :data:`VQA_TASK` with transformers' pipeline registry (idempotent)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(VQA_TASK, {}).get("impl")
    if registered is VlpVisualQuestionAnsweringPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        VQA_TASK,
        pipeline_class=VlpVisualQuestionAnsweringPipeline,
        pt_model=AutoModelForVisualQuestionAnswering,
        type="multimodal",
    )
