"""Image-text datasets from one spec string, the same in the CLI and in Python.

A spec is one of

- ``synthetic-shapes`` (optionally ``synthetic-shapes:n=2000,size=64,seed=0,task=caption``), the built-in dataset;
- a local folder in imagefolder layout with ``metadata.jsonl``/``metadata.csv`` (``file_name`` + a caption column),
  optionally with ``train/``, ``validation/`` sub-folders;
- a local folder with a captions table (``captions.csv``, ``captions.tsv`` or ``captions.jsonl``; per split
  ``<split>/captions.csv`` or ``captions_<split>.csv``), or the path of such a table;
- webdataset tar shards: a ``.tar`` path, a glob or brace pattern (``shards/train-{000..009}.tar``) or a folder of
  ``.tar`` files whose samples hold an image member (``jpg``/``png``/...) and a ``txt`` member; streamed by default;
- a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` with splits or one ``Dataset``), e.g. the output
  of ``hf-vlp capfilt``;
- a Hugging Face Hub dataset id (``org/name``), loaded with ``datasets.load_dataset``.

Every result has the columns ``image`` (decoded lazily to an RGB ``PIL.Image``), ``text`` (the caption),
``label`` when the source has one, plus ``sample_index`` and ``source`` (file name, when known) so that a bad
sample can be named, and ``bad_sample`` (the reason a skipped row was skipped, else ``None``). Decoding happens
on the fly (``with_transform`` for map-style datasets, ``map`` for streamed ones); with ``Trainer`` set
``remove_unused_columns=False`` so the raw columns reach the transform.

A dataset without an evaluation split (a train-only folder, one captions table, webdataset shards, a saved single
``Dataset``) can give a :class:`HeldOutSplit`: a deterministic slice of its training split for evaluation, and the
training split without it (``hold_out=`` of :func:`load_image_text_dataset`; ``hf-vlp train`` does this itself).
"""

from .decoding import (
    BadSampleCounter,
    BadSampleError,
    DecodeImageText,
    ImageTransform,
    caption_text,
    decode_image,
    decode_sample,
    image_source,
)
from .sources import (
    DEFAULT_EVAL_SPLIT_RATIO,
    IMAGE_COLUMN_CANDIDATES,
    TEXT_COLUMN_CANDIDATES,
    AnyDataset,
    HeldOutSplit,
    dataset_split_names,
    has_split,
    load_image_text_dataset,
    take_rows,
)
from .spec import CAPTION_TABLE_NAMES, METADATA_NAMES, DatasetSpec, expand_braces, resolve_dataset_spec

__all__ = [
    "CAPTION_TABLE_NAMES",
    "DEFAULT_EVAL_SPLIT_RATIO",
    "IMAGE_COLUMN_CANDIDATES",
    "METADATA_NAMES",
    "TEXT_COLUMN_CANDIDATES",
    "AnyDataset",
    "BadSampleCounter",
    "BadSampleError",
    "DatasetSpec",
    "DecodeImageText",
    "HeldOutSplit",
    "ImageTransform",
    "caption_text",
    "dataset_split_names",
    "decode_image",
    "decode_sample",
    "expand_braces",
    "has_split",
    "image_source",
    "load_image_text_dataset",
    "resolve_dataset_spec",
    "take_rows",
]
