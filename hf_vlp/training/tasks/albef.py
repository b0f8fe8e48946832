"""ALBEF's tasks for ``hf-vlp train albef --task pretrain|retrieval|vqa|nlvr2|snli-ve``.

Each starts from the tiny recipe model, from ``--vision-init``/``--text-init`` (transformers ViT/DeiT + BERT, through
``from_pretrained_towers``), or from ``--from-pretrained DIR`` (the task's own saved model, or a pre-trained ALBEF,
which feeds every task). All are momentum models: ``MomentumCallback`` runs the EMA step and ramps the distillation
weight over the first epoch (SNLI-VE: no ramp, ``warm_up: False`` in VE.yaml).

Augmentation (``--augment paper``, the default on real data) is the originals' (RandomResizedCrop with scale (0.2, 1)
for pre-training, (0.5, 1) for fine-tuning, bicubic; horizontal flip; RandAugment(2, 7)) with one change: the flip
exchanges "left" and "right" in the text (captions, questions and answers, hypotheses), so that a caption such as
"a red circle on the left" stays true of the mirrored image; NLVR2 is not flipped at all, since its statements use
"left"/"right" for the order of the two images as well. On ``synthetic-shapes`` the default is the flip alone
(``--augment flip``): its captions count and place the shapes, which a crop can cut away.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...models.albef import (
    VlpAlbefForImageTextRetrieval,
    VlpAlbefForMaskedLM,
    VlpAlbefForPretraining,
    VlpAlbefForQuestionAnswering,
    VlpAlbefForVisualEntailment,
    VlpAlbefForVisualReasoning,
)
from ...models.albef.modeling_albef_reasoning import ALBEF_PRETRAINED_ARCHITECTURES
from ..collators import AlbefPretrainingCollator, VisualEntailmentCollator, answer_strings
from ..job import JobArguments
from ..recipes import get_recipe
from ..transforms import PRETRAIN_CROP_SCALE, albef_train_transform
from .albef_models import (
    albef_processor,
    load_albef_model,
    question_answering_from_saved,
    tiny_albef_config,
    tower_albef_config,
)
from .base import register_task, saved_model_class
from .fusion import (
    ClassificationEvaluation,
    FusionTask,
    QuestionAnsweringTask,
    RetrievalEvaluation,
    RetrievalTask,
    VisualReasoningTask,
)
from .fusion_models import bert_tokenizer, load_processor


class AlbefTask(FusionTask):
    """What every ALBEF task shares: building (tiny / towers / saved), augmentation, momentum callbacks."""

    architecture = "albef"
    alpha_warmup_epochs = 1.0
    paper_transform = staticmethod(albef_train_transform)

    # ------------------------------------------------------------------------------------------------ model

    def build(self, job: JobArguments) -> tuple[nn.Module, Any]:
        if job.preset:
            raise ValueError("--preset selects a released CLIP size; ALBEF starts from the tiny recipe, from "
                             "--vision-init/--text-init or from --from-pretrained.")
        if job.from_pretrained:
            model = self.from_saved(job.from_pretrained)
            processor = load_processor(job.from_pretrained)
            if job.queue_size is not None and job.queue_size != model.config.queue_size:
                raise ValueError(
                    f"--queue-size {job.queue_size}: the saved model's queues hold {model.config.queue_size} entries "
                    "and are kept; drop --queue-size (or start from --vision-init/--text-init)."
                )
        else:
            tokenizer = bert_tokenizer(job)
            if job.vision_init:
                config = tower_albef_config(self.recipe, tokenizer, job)
                model = self.from_towers(config, job.vision_init, job.text_init)
            else:
                config = tiny_albef_config(self.recipe, tokenizer, job)
                model = self.model_classes[0](config)
            processor = albef_processor(tokenizer, config.vision_config.image_size, self.recipe.context_length)
        return model, self.adapt_processor(processor, model, job)

    def check_source(self, directory: str) -> str:
        """The class that saved ``directory``; an error unless it is this task's or holds pre-trained ALBEF towers."""
        saved = saved_model_class(directory)
        accepted = {cls.__name__ for cls in self.model_classes} | set(ALBEF_PRETRAINED_ARCHITECTURES)
        if saved not in accepted:
            raise ValueError(
                f"{directory} holds a {saved}; albef --task {self.name} starts from one of {sorted(accepted)}."
            )
        return saved

    def from_saved(self, directory: str) -> nn.Module:
        """The task model from a saved model directory (this task's, or a pre-trained ALBEF)."""
        self.check_source(directory)
        return load_albef_model(self.model_classes[0], directory)


# --------------------------------------------------------------------------------------------- retrieval-style


class AlbefPretrainTask(RetrievalEvaluation, AlbefTask):
    """ALBEF pre-training: ITC with momentum distillation, ITM on hard negatives, distilled MLM."""

    name = "pretrain"
    recipe = get_recipe("albef", "pretrain")
    model_classes = (VlpAlbefForPretraining, VlpAlbefForMaskedLM)
    crop_scale = PRETRAIN_CROP_SCALE
    collator_class = AlbefPretrainingCollator

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        config = model.config
        return {
            "vocab_size": config.text_config.vocab_size,
            "mlm_probability": config.mlm_probability,
            "mlm_seed": seed,
        }


class AlbefRetrievalTask(RetrievalTask, AlbefTask):
    """ALBEF image-text retrieval fine-tuning: ITC with image-id positives (in-batch and queued) and ITM."""

    recipe = get_recipe("albef", "retrieval")
    model_classes = (VlpAlbefForImageTextRetrieval,)


# ---------------------------------------------------------------------------------------------------------- VQA


class AlbefVqaTask(QuestionAnsweringTask, AlbefTask):
    """ALBEF VQA: answer decoder over the fused question states, weighted answers, momentum distillation;
    scored against every (human) answer of a question."""

    recipe = get_recipe("albef", "vqa")
    model_classes = (VlpAlbefForQuestionAnswering,)

    def from_saved(self, directory: str) -> nn.Module:
        self.check_source(directory)
        return question_answering_from_saved(directory)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        source = self.load_towers(VlpAlbefForMaskedLM, config, vision, text)
        return VlpAlbefForQuestionAnswering.from_pretraining(source)

    def scored_answers(self, value: Any, index: int) -> str | list[str]:
        return answer_strings(value, index)


# ---------------------------------------------------------------------------------------- NLVR2 and SNLI-VE


class AlbefClassificationTask(ClassificationEvaluation, AlbefTask):
    """What NLVR2 and SNLI-VE share: start from a pre-trained ALBEF with ``from_albef_pretrained``, evaluate
    accuracy with the (un-augmented) collator."""

    def from_saved(self, directory: str) -> nn.Module:
        cls = self.model_classes[0]
        if saved_model_class(directory) in cls.compatible_architectures:
            return cls.from_pretrained(directory, dtype=torch.float32)
        return cls.from_albef_pretrained(directory, dtype=torch.float32)

    def from_towers(self, config: Any, vision: str, text: str) -> nn.Module:
        return self.model_classes[0].from_albef_pretrained(self.load_towers(VlpAlbefForMaskedLM, config, vision, text))


class AlbefNlvr2Task(VisualReasoningTask, AlbefClassificationTask):
    """ALBEF NLVR2: is the statement true of the image pair? (No text-assignment pre-training step here.)"""

    recipe = get_recipe("albef", "nlvr2")
    model_classes = (VlpAlbefForVisualReasoning,)


class AlbefSnliVeTask(AlbefClassificationTask):
    """ALBEF SNLI-VE: does the image entail, contradict or leave open the hypothesis?"""

    name = "snli-ve"
    recipe = get_recipe("albef", "snli-ve")
    model_classes = (VlpAlbefForVisualEntailment,)
    synthetic_task = "snli-ve"
    text_column_candidates = ("hypothesis", "sentence2", "text")
    optional_columns = ("gold_label",)
    alpha_warmup_epochs = 0.0
    collator_class = VisualEntailmentCollator

    def collator_options(self, model: nn.Module, processor: Any, seed: int) -> dict[str, Any]:
        return {"label2id": dict(model.config.label2id), "label_key": "gold_label"}


register_task(AlbefPretrainTask(), default=True)
for _task in (AlbefRetrievalTask(), AlbefVqaTask(), AlbefNlvr2Task(), AlbefSnliVeTask()):
    register_task(_task)
