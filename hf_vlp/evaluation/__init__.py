"""Evaluation of vision-language models: zero-shot classification, image-text retrieval (dual encoders, and fusion
models with ITM re-ranking), VQA answer ranking and image-text classification accuracy.

Retrieval recall@K, VQA accuracy and the COCO caption metrics are computed by ``evaluate`` metric modules shipped in
the package (:mod:`hf_vlp.metrics`); :func:`load_metric` loads one offline, e.g. ``load_metric("vqa_accuracy")``."""

from .classification import classification_accuracy
from .embeddings import embed_images, embed_texts, iter_image_embeddings, iter_text_embeddings
from .itm_retrieval import itm_retrieval_metrics
from .metric_modules import METRIC_NAMES, compute_metric, load_metric, metric_path
from .retrieval import (
    RetrievalComputeMetrics,
    image_to_text_ranks,
    make_compute_metrics,
    ranks_from_scores,
    recall_at_k,
    recall_at_k_from_scores,
    recall_metrics,
    recall_metrics_from_ranks,
    retrieval_metrics_from_model,
    retrieval_recall,
    text_to_image_ranks,
)
from .vqa import answer_score, majority_answer, vqa_accuracy
from .vqa_answers import normalize_vqa_answer, vqa_score
from .zero_shot import DEFAULT_TEMPLATES, build_zero_shot_classifier, class_prompts, zero_shot_accuracy

__all__ = [
    # the packaged evaluate metric modules
    "METRIC_NAMES",
    "compute_metric",
    "load_metric",
    "metric_path",
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
    "recall_metrics_from_ranks",
    "recall_at_k_from_scores",
    # VQA and classification
    "answer_score",
    "majority_answer",
    "normalize_vqa_answer",
    "vqa_accuracy",
    "vqa_score",
    "classification_accuracy",
]
