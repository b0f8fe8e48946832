"""Evaluation of vision-language models: zero-shot classification, image-text retrieval (dual encoders, and fusion
models with ITM re-ranking), VQA answer ranking and image-text classification accuracy."""

from .classification import classification_accuracy
from .embeddings import embed_images, embed_texts, iter_image_embeddings, iter_text_embeddings
from .itm_retrieval import itm_retrieval_metrics
from .retrieval import (
    RetrievalComputeMetrics,
    image_to_text_ranks,
    make_compute_metrics,
    ranks_from_scores,
    recall_at_k,
    recall_at_k_from_scores,
    recall_metrics,
    retrieval_metrics_from_model,
    retrieval_recall,
    text_to_image_ranks,
)
from .vqa import answer_score, vqa_accuracy
from .zero_shot import DEFAULT_TEMPLATES, build_zero_shot_classifier, class_prompts, zero_shot_accuracy

__all__ = [
    # zero-shot classification
    "DEFAULT_TEMPLATES",
    "build_zero_shot_classifier",
    "class_prompts",
    "zero_shot_accuracy",
    # embeddings of dual encoders
    "embed_images",
    "embed_texts",
    "iter_image_embeddings",
    "iter_text_embeddings",
    # retrieval: dual encoders, fusion models' ITM re-ranking, ranks and recall@K
    "retrieval_recall",
    "retrieval_metrics_from_model",
    "make_compute_metrics",
    "RetrievalComputeMetrics",
    "itm_retrieval_metrics",
    "image_to_text_ranks",
    "text_to_image_ranks",
    "ranks_from_scores",
    "recall_at_k",
    "recall_metrics",
    "recall_at_k_from_scores",
    # VQA and classification
    "answer_score",
    "vqa_accuracy",
    "classification_accuracy",
]
