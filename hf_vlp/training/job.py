"""The arguments of an ``hf-vlp train`` / ``hf-vlp evaluate`` job that are not ``TrainingArguments``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .data.sources import DEFAULT_EVAL_SPLIT_RATIO

AUGMENT_CHOICES = ("auto", "paper", "flip", "none")
# VLMo's stage-wise pre-training (image-only, text-only, image-text), then fine-tuning
STAGE_CHOICES = ("image", "text", "image-text", "fine")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class JobArguments:
    """What to train on, which task, and which model to start from (Trainer arguments are separate)."""

    task: str | None = field(
        default=None,
        metadata=_help("the architecture's task (default: its first; `hf-vlp train --help` lists them)"),
    )
    dataset: str = field(
        default="synthetic-shapes:n=8000",
        metadata=_help(
            "training data: synthetic-shapes[:n=8000,size=64,seed=0], an imagefolder with metadata.jsonl/.csv, a folder "
            "or file with captions.csv, webdataset shards (shards/{000..009}.tar) or a hub dataset id"
        ),
    )
    eval_dataset: str | None = field(default=None, metadata=_help("evaluation dataset spec (default: --dataset)"))
    train_split: str = field(default="train", metadata=_help("the split of --dataset to train on"))
    eval_split: str = field(
        default="validation", metadata=_help("the split of the evaluation dataset evaluated before and after training")
    )
    image_column: str | None = field(
        default=None, metadata=_help("the dataset's image column (default: the task's usual one, e.g. image)")
    )
    text_column: str | None = field(
        default=None,
        metadata=_help("the dataset's text column (default: the first of the task's usual names it has, e.g. caption)"),
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata=_help("skip and count corrupt images instead of stopping at the first (which names file and row)"),
    )
    stage: str | None = field(
        default=None,
        metadata=_help(
            "VLMo's stage-wise training: image (stage 1: the image experts from a BEiT, --vision-init BEIT_DIR; trains "
            "nothing), text (stage 2: text-only MLM, everything but the text experts frozen), image-text (stage 3, "
            "--task pretrain's default), fine (--task vqa/nlvr2/retrieval's default)"
        ),
    )
    preset: str | None = field(
        default=None,
        metadata=_help("a released size built from scratch (CLIP: ViT-B/32, ViT-B/16, RN50, ...; VLMo: base, large, "
                       "base_plus; CoCa: coca_ViT-B-32, coca_ViT-L-14, paper_base)"),
    )
    from_pretrained: str | None = field(
        default=None, metadata=_help("a saved hf_vlp model directory to fine-tune (a pre-trained ALBEF feeds every task)")
    )
    license: str | None = field(
        default=None,
        metadata=_help(
            "license of the trained weights for the model card, as a Hub license id (apache-2.0, mit, "
            "bsd-3-clause, ...); default: the license of the --from-pretrained model (or of both towers), none for a "
            "model trained from scratch"
        ),
    )
    vision_init: str | None = field(
        default=None,
        metadata=_help("a transformers ViT/DeiT directory initialising the image tower (with --text-init); VLMo's "
                       "--stage image: a BEiT directory, alone"),
    )
    text_init: str | None = field(
        default=None, metadata=_help("a transformers BERT directory initialising the text tower (with --vision-init)")
    )
    tokenizer: str | None = field(
        default=None, metadata=_help("tokenizer: CLIP BPE file, or BERT vocab.txt / tokenizer directory")
    )
    image_size: int | None = field(
        default=None,
        metadata=_help("input resolution (px) of a model built from scratch or towers (default: the recipe's)"),
    )
    queue_size: int | None = field(
        default=None, metadata=_help("feature-queue length of momentum models (a multiple of the global batch)")
    )
    augment: str = field(
        default="auto",
        metadata=_help(
            "fusion models' training augmentation: paper (as the originals: ALBEF/BLIP RandomResizedCrop + flip + "
            "RandAugment; ViLT RandAugment(2, 9) when fine-tuning), flip (the flip alone), none; auto = paper, but on "
            "synthetic-shapes, whose captions count and place the shapes, flip (ALBEF/BLIP) or none (ViLT)"
        ),
    )
    no_augment: bool = field(default=False, metadata=_help("no training augmentation at all (same as --augment none)"))
    eval_max_samples: int = field(default=1000, metadata=_help("evaluation rows (retrieval: gallery images)"))
    eval_split_ratio: float = field(default=DEFAULT_EVAL_SPLIT_RATIO, metadata=_help(
        "a dataset without --eval-split (and no other --eval-dataset): the fraction of its training rows held out "
        "for the before/after evaluation (at most --eval-max-samples); training leaves them out"))
    eval_rerank_k: int = field(default=16, metadata=_help("retrieval: ITC candidates per query re-ranked by ITM"))
    skip_eval: bool = field(default=False, metadata=_help("no evaluation before and after training"))
    overwrite_output_dir: bool = field(
        default=False,
        metadata=_help(
            "train into a non-empty --output-dir, replacing its model and removing its checkpoints (without it, such "
            "a folder is refused unless --resume-from-checkpoint continues its run)"
        ),
    )

    def __post_init__(self) -> None:
        if self.stage is not None and self.stage not in STAGE_CHOICES:
            raise ValueError(f"--stage must be one of {STAGE_CHOICES}, got {self.stage!r}.")
        self._check_towers()
        self._check_values()

    def _check_towers(self) -> None:
        if self.stage == "image":  # VLMo's first stage puts a BEiT alone into any VLMo (new or --from-pretrained)
            if self.text_init is not None:
                raise ValueError(
                    "--stage image takes only --vision-init (a BEiT): the text experts are trained by --stage text."
                )
            return
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

    def _check_values(self) -> None:
        if self.augment not in AUGMENT_CHOICES:
            raise ValueError(f"--augment must be one of {AUGMENT_CHOICES}, got {self.augment!r}.")
        if self.queue_size is not None and self.queue_size < 1:
            raise ValueError(
                f"--queue-size must be a positive multiple of the global batch (per-device batch x processes), got "
                f"{self.queue_size}."
            )
        if self.eval_max_samples < 1 or self.eval_rerank_k < 1:
            raise ValueError("--eval-max-samples and --eval-rerank-k must be positive.")
        if not 0.0 < self.eval_split_ratio < 1.0:
            raise ValueError(f"--eval-split-ratio must lie strictly between 0 and 1, got {self.eval_split_ratio}.")
