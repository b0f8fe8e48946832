"""The arguments of an ``hf-vlp train`` / ``hf-vlp evaluate`` job that are not ``TrainingArguments``."""

from __future__ import annotations

from dataclasses import dataclass, field


AUGMENT_CHOICES = ("auto", "paper", "flip", "none")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class JobArguments:
    """What to train on, which task, and which model to start from (Trainer arguments are separate)."""

    task: str | None = field(
        default=None, metadata=_help("the task (clip: contrastive; albef: pretrain, retrieval, vqa, nlvr2, snli-ve)")
    )
    dataset: str = field(default="synthetic-shapes:n=8000", metadata=_help("dataset spec (see hf_vlp.training.data)"))
    eval_dataset: str | None = field(default=None, metadata=_help("evaluation dataset spec (default: --dataset)"))
    train_split: str = "train"
    eval_split: str = "validation"
    image_column: str | None = None
    text_column: str | None = None
    skip_bad_samples: bool = False
    preset: str | None = field(default=None, metadata=_help("a released size built from scratch (CLIP)"))
    from_pretrained: str | None = field(
        default=None, metadata=_help("a saved hf_vlp model directory to fine-tune (a pre-trained ALBEF feeds every task)")
    )
    vision_init: str | None = field(
        default=None, metadata=_help("a transformers ViT/DeiT directory initialising the image tower (with --text-init)")
    )
    text_init: str | None = field(
        default=None, metadata=_help("a transformers BERT directory initialising the text tower (with --vision-init)")
    )
    tokenizer: str | None = field(
        default=None, metadata=_help("tokenizer: CLIP BPE file, or BERT vocab.txt / tokenizer directory")
    )
    image_size: int | None = None
    queue_size: int | None = field(
        default=None, metadata=_help("feature-queue length of momentum models (a multiple of the global batch)")
    )
    augment: str = field(
        default="auto",
        metadata=_help(
            "fusion models' training augmentation: paper (RandomResizedCrop + flip + RandAugment(2, 7), as the "
            "originals), flip (the flip alone), none; auto = paper, but flip on synthetic-shapes, whose captions count "
            "and place the shapes a crop can cut away"
        ),
    )
    no_augment: bool = field(default=False, metadata=_help("no training augmentation at all (same as --augment none)"))
    eval_max_samples: int = field(default=1000, metadata=_help("evaluation rows (retrieval: gallery images)"))
    eval_rerank_k: int = field(default=16, metadata=_help("retrieval: ITC candidates per query re-ranked by ITM"))
    skip_eval: bool = False
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help(
            "train into a non-empty --output-dir, replacing its model and removing its checkpoints (without it, such "
            "a folder is refused unless --resume-from-checkpoint continues its run)"
        ),
    )

    def __post_init__(self) -> None:
        if (self.vision_init is None) != (self.text_init is None):
            given, missing = ("--vision-init", "--text-init") if self.vision_init else ("--text-init", "--vision-init")
            raise ValueError(
                f"{given} was given without {missing}: tower initialisation needs both (a transformers ViT/DeiT "
                "directory for the image tower and a BERT directory for the text tower)."
            )
        if self.vision_init is not None and self.from_pretrained is not None:
            raise ValueError(
                "--from-pretrained cannot be combined with --vision-init/--text-init: start either from a saved "
                "hf_vlp model or from unimodal towers."
            )
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"--augment must be one of {AUGMENT_CHOICES}, got {self.augment!r}.")
        if self.queue_size is not None and self.queue_size < 1:
            raise ValueError(
                f"--queue-size must be a positive multiple of the global batch (per-device batch x processes), got "
                f"{self.queue_size}."
            )
        if self.eval_max_samples < 1 or self.eval_rerank_k < 1:
            raise ValueError("--eval-max-samples and --eval-rerank-k must be positive.")
