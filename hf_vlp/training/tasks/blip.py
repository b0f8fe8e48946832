"""BLIP's tasks for ``hf-vlp train blip --task pretrain|retrieval|caption|vqa|nlvr2``.

Each starts from the tiny recipe model, from ``--vision-init``/``--text-init`` (transformers ViT/DeiT + BERT through
``from_pretrained_towers``), or from ``--from-pretrained DIR`` (the task's own saved model, or a pre-trained BLIP,
which feeds every task; see :mod:`.blip_models`). Pre-training and retrieval are momentum models:
``MomentumCallback`` runs the EMA step and ramps the distillation weight over two epochs (pre-training, as
``pretrain.py``) or one (retrieval). Captioning, VQA and NLVR2 have no momentum model, as in the original.

Augmentation (``--augment paper``, the default on real data) is BLIP's (``data/__init__.py``): RandomResizedCrop with
scale (0.2, 1) for pre-training and (0.5, 1) for fine-tuning, bicubic, horizontal flip, then RandomAugment(2, 5) -
ALBEF's operations at magnitude 5. As for ALBEF, the flip exchanges "left" and "right" in the text (captions,
questions and answers) so that positional captions stay true of the mirrored image. NLVR2 is neither flipped nor, as
BLIP's NLVR2 loader does, trained with the image order swapped and "left"/"right" exchanged: both break statements
that use "left"/"right" for positions inside an image. On ``synthetic-shapes`` the default is the flip alone
(``--augment flip``): its captions count, size and place the shapes, which a crop cuts away or enlarges.

Evaluation: pre-training and retrieval report recall@1/5/10 by ITC and after re-ranking each query's top ``k``
(``--eval-rerank-k``) with BLIP's score, ITM match logit + cosine; captioning BLEU-1..4 and CIDEr of the captions the
model's generation config decodes (the original's COCO decoding unless changed: beam 3, max_length 20, min_length 5)
against every reference caption of the image; VQA the accuracy of the best-ranked candidate of the processor's
``answer_list`` (``rank_answers``); NLVR2 accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers.utils import GENERATION_CONFIG_NAME

from ...evaluation.captioning import evaluate_captioner
from ...models.blip import (
    VlpBlipForConditionalGeneration,
    VlpBlipForImageTextRetrieval,
    VlpBlipForPretraining,
    VlpBlipForQuestionAnswering,
    VlpBlipForVisualReasoning,
    VlpBlipModel,
)
from ...models.blip.modeling_blip_reasoning import BLIP_ENCODER_ARCHITECTURES
from ..collators import BlipCaptionCollator, answer_strings, stable_image_id
from ..job import JobArguments
from ..recipes import get_recipe
from ..transforms import PRETRAIN_CROP_SCALE, blip_train_transform
from .base import register_task, saved_model_class
from .blip_models import (
    blip_processor,
    blip_tokenizer,
    load_task_model,
    question_answering_from_saved,
    tiny_blip_config,
    tower_blip_config,
    visual_reasoning_from_saved,
)
from .fusion import (
    FusionTask,
    QuestionAnsweringTask,
    RetrievalEvaluation,
    RetrievalTask,
    VisualReasoningTask,
)
from .fusion_models import load_processor


class BlipTask(FusionTask):
    """What every BLIP task shares: building (tiny / towers / saved), augmentation, callbacks."""

    architecture = "blip"
    paper_transform = staticmethod(blip_train_transform)
    # other BLIP heads whose saved directories this task starts from (--from-pretrained), besides its own
    source_classes: tuple[str, ...] = ("VlpBlipForPretraining",)

    # ------------------------------------------------------------------------------------------------ model

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        if job.preset:
            raise ValueError("--preset selects a released CLIP size; BLIP starts from the tiny recipe, from "
                             "--vision-init/--text-init or from --from-pretrained.")
        if job.queue_size is not None and self.alpha_warmup_epochs is None:
            raise ValueError(f"--queue-size: blip --task {self.name} has no momentum queues (only pretrain and "
                             "retrieval do); drop it.")
        if job.from_pretrained:
            self.check_source(job.from_pretrained)
            model = self.from_saved(job.from_pretrained, job)
            processor = load_processor(job.from_pretrained)
            self._check_saved_settings(model, job)
        else:
            tokenizer = blip_tokenizer(job)
            if job.vision_init:
                model = self.from_towers(tower_blip_config(self.recipe, tokenizer, job), job.vision_init, job.text_init)
            else:
                model = self.model_classes[0](tiny_blip_config(self.recipe, tokenizer, job))
            processor = blip_processor(tokenizer, model.config.vision_config.image_size, self.recipe.context_length)
        return model, self.adapt_processor(processor, model, job)

    def _check_saved_settings(self, model: nn.Module, job: JobArguments) -> None:
        size = model.config.vision_config.image_size
        if job.image_size and job.image_size != size:
            raise ValueError(f"--image-size {job.image_size}: the saved model works at {size} px; drop --image-size.")
        if job.queue_size is not None and job.queue_size != model.config.queue_size:
            raise ValueError(
                f"--queue-size {job.queue_size}: the saved model's queues hold {model.config.queue_size} entries "
                "and are kept; drop --queue-size (or start from --vision-init/--text-init)."
            )

    def check_source(self, directory: str) -> str:
        """The class that saved ``directory``; an error unless this task starts from it."""
        saved = saved_model_class(directory)
        accepted = list(dict.fromkeys([*(cls.__name__ for cls in self.model_classes), *self.source_classes]))
        if saved not in accepted:
            raise ValueError(f"{directory} holds a {saved}; blip --task {self.name} starts from one of {accepted}.")
        return saved

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        """The task model from a saved model directory (this task's, or a pre-trained BLIP)."""
        return load_task_model(self.model_classes[0], directory)

    def adapt_processor(self, processor: Any, model: nn.Module, job: JobArguments) -> Any:
        """The task's text length (the original's per task), within the model's positions."""
        processor.max_length = min(self.recipe.context_length, model.config.text_config.max_position_embeddings)
        return processor


# --------------------------------------------------------------------------------------------- retrieval-style


class BlipPretrainTask(RetrievalEvaluation, BlipTask):
    """BLIP pre-training: ITC with momentum distillation, ITM on hard negatives, captioning LM (label smoothing)."""

    name = "pretrain"
    recipe = get_recipe("blip", "pretrain")
    model_classes = (VlpBlipForPretraining,)
    crop_scale = PRETRAIN_CROP_SCALE
    alpha_warmup_epochs = 2.0

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"max_length": processor.max_length}


class BlipRetrievalTask(RetrievalTask, BlipTask):
    """BLIP image-text retrieval fine-tuning: ITC with image-id positives (in-batch and queued) and ITM."""

    recipe = get_recipe("blip", "retrieval")
    model_classes = (VlpBlipForImageTextRetrieval,)
    source_classes = ("VlpBlipForPretraining", "VlpBlipModel")


# --------------------------------------------------------------------------------------------------- captioning


def caption_references(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[list[str]]]:
    """Distinct images and each one's reference captions: a ``captions`` list when the rows carry one, else the
    ``text`` of every row sharing the image's ``image_id`` (each row its own image without ids)."""
    images: list[Any] = []
    references: list[list[str]] = []
    index_of: dict[int, int] = {}
    for position, row in enumerate(rows):
        image_id = stable_image_id(row.get("image_id"), row.get("sample_index", position))
        captions = row.get("captions")
        own = list(captions) if isinstance(captions, (list, tuple)) and captions else [row["text"]]
        if image_id in index_of:
            known = references[index_of[image_id]]
            known += [caption for caption in own if caption not in known]
            continue
        index_of[image_id] = len(images)
        images.append(row["image"])
        references.append(own)
    return images, references


class BlipCaptionTask(BlipTask):
    """BLIP image captioning (``BLIP_Decoder``): LM loss on ``"a picture of " + caption`` with the prompt's tokens
    left out of the loss; evaluated by BLEU-4 and CIDEr of beam-searched captions."""

    name = "caption"
    recipe = get_recipe("blip", "caption")
    model_classes = (VlpBlipForConditionalGeneration,)
    synthetic_task = "caption"
    optional_columns = ("captions", "image_id")
    collator_class = BlipCaptionCollator

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        """The captioner of ``directory``; one without ``generation_config.json`` (a pre-training directory) gets the
        original's COCO decoding instead of the bare config transformers derives from the model config."""
        model = load_task_model(VlpBlipForConditionalGeneration, directory)
        if not (Path(directory) / GENERATION_CONFIG_NAME).is_file():
            model.generation_config = model.default_generation_config()
        return model

    def evaluate(
        self, model: nn.Module, processor: Any, job: JobArguments, spec: str, split: str, batch_size: int
    ) -> dict[str, float]:
        """BLEU-1..4 and CIDEr (COCO's scorers) of one caption per image, decoded with the model's generation
        config (the original's COCO decoding by default), against all of the image's reference captions."""
        images, references = caption_references(self.usable_rows(spec, split, job))
        return evaluate_captioner(model, processor, images, references, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------- VQA


class BlipVqaTask(QuestionAnsweringTask, BlipTask):
    """BLIP VQA: image-grounded question encoder + answer decoder trained on weighted answers (the original's
    ``inference='rank'`` at evaluation); scored by the VQA accuracy against all of a question's human answers."""

    recipe = get_recipe("blip", "vqa")
    model_classes = (VlpBlipForQuestionAnswering,)

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        return question_answering_from_saved(directory)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        # encoder and answer decoder both start from the BERT, through a pre-training model as the original's VQA
        source = self.load_towers(VlpBlipForPretraining, config, vision, text)
        return VlpBlipForQuestionAnswering.from_pretraining(source)

    def scored_answers(self, value: Any, index: int) -> str | list[str]:
        return answer_strings(value, index)


# -------------------------------------------------------------------------------------------------------- NLVR2


class BlipNlvr2Task(VisualReasoningTask, BlipTask):
    """BLIP NLVR2: is the statement true of the image pair? The encoder cross-attends to both images per layer."""

    recipe = get_recipe("blip", "nlvr2")
    model_classes = (VlpBlipForVisualReasoning,)
    source_classes = BLIP_ENCODER_ARCHITECTURES

    def from_saved(self, directory: str, job: JobArguments) -> nn.Module:
        return visual_reasoning_from_saved(directory, image_size=job.image_size)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        # the encoder towers first, then from_blip_pretrained pairs the (fresh) cross-attentions
        return VlpBlipForVisualReasoning.from_blip_pretrained(self.load_towers(VlpBlipModel, config, vision, text))


register_task(BlipPretrainTask(), default=True)
for _task in (BlipRetrievalTask(), BlipCaptionTask(), BlipVqaTask(), BlipNlvr2Task()):
    register_task(_task)
