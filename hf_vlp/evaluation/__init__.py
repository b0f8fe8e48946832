"""Evaluation of vision-language models: zero-shot classification, image-text retrieval (dual encoders, and fusion
models with ITM re-ranking), VQA answer ranking and image-text classification accuracy."""

from .classification import classification_accuracy
from .embeddings import embed_images, embed_texts, iter_image_embeddings, iter_text_embeddings
from .retrieval import (
    RetrievalComputeMetrics,
    image_to_text_ranks,
    make_compute_metrics,
    recall_at_k,
    retrieval_metrics_from_model,
    retrieval_recall,
    text_to_image_ranks,
)
from .itm_retrieval import ItmScorer, albef_itm_scorer, itm_retrieval_metrics, ranks_from_scores
from .vqa import answer_score, vqa_accuracy
from .zero_shot import DEFAULT_TEMPLATES, build_zero_shot_classifier, class_prompts, zero_shot_accuracy

__all__ = [
    "DEFAULT_TEMPLATES",
    "ItmScorer",
    "albef_itm_scorer",
    "answer_score",
    "classification_accuracy",
    "itm_retrieval_metrics",
    "ranks_from_scores",
    "vqa_accuracy",
    "RetrievalComputeMetrics",
    "build_zero_shot_classifier",
    "class_prompts",
    "embed_images",
    "embed_texts",
    "image_to_text_ranks",
    "iter_image_embeddings",
    "iter_text_embeddings",
    "make_compute_metrics",
    "recall_at_k",
    "retrieval_metrics_from_model",
    "retrieval_recall",
    "text_to_image_ranks",
    "zero_shot_accuracy",
]
