"""Where a model comes from, for its card: the source release of a conversion, or the model it was fine-tuned from,
with that source's license and Hub id (``base_model``).

A converted model carries the license of the release its weights come from; a fine-tuned one inherits its parent's
(unless its author chooses another, ``hf-vlp train --license``); a model trained from scratch with hf_vlp states no
license until its author picks one - hf_vlp's own code license says nothing about weights someone trained with it.
Nothing here reaches the network: a Hub id's card is read only from the local cache.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CONVERSION_MARKER = "conversion.json"  # conversion.common.MARKER_FILE: every converted folder holds it
CARD_NAME = "README.md"
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CACHE_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/[0-9a-f]{40}$")


@dataclass(frozen=True)
class SourceRelease:
    """An original code-and-weights release hf_vlp converts from, with the license its repository states."""

    name: str
    repository: str
    license: str  # a Hub license id
    license_file: str


# The licenses below were read from each repository's license file (checked for this table):
# - openai/CLIP, LICENSE: "MIT License, Copyright (c) 2021 OpenAI" -> mit. It covers the code and the released
#   TorchScript weights the repository downloads.
# - mlfoundations/open_clip, LICENSE: the MIT permission text (its copyright line, oddly, reads "Copyright (c)
#   2012-2021 Scott Chacon and others") -> mit.
# - salesforce/ALBEF, LICENSE.txt: "Copyright (c) 2021, Salesforce.com, Inc." with the three BSD clauses
#   (redistribution of source, of binaries, no endorsement) -> bsd-3-clause.
# - salesforce/BLIP, LICENSE.txt: the same Salesforce BSD 3-clause text -> bsd-3-clause.
# - dandelin/ViLT, LICENSE: Apache License 2.0 ("Copyright 2021-present NAVER Corp.") -> apache-2.0.
# - microsoft/unilm (VLMo lives in its vlmo/ folder, whose README defers to the root LICENSE): "The MIT License (MIT),
#   Copyright (c) Microsoft Corporation" -> mit.
SOURCE_RELEASES: dict[str, SourceRelease] = {
    "openai/CLIP": SourceRelease("OpenAI CLIP", "https://github.com/openai/CLIP", "mit", "LICENSE"),
    "mlfoundations/open_clip": SourceRelease(
        "open_clip", "https://github.com/mlfoundations/open_clip", "mit", "LICENSE"
    ),
    "salesforce/ALBEF": SourceRelease("Salesforce ALBEF", "https://github.com/salesforce/ALBEF", "bsd-3-clause",
                                      "LICENSE.txt"),
    "salesforce/BLIP": SourceRelease("Salesforce BLIP", "https://github.com/salesforce/BLIP", "bsd-3-clause",
                                     "LICENSE.txt"),
    "dandelin/ViLT": SourceRelease("ViLT", "https://github.com/dandelin/ViLT", "apache-2.0", "LICENSE"),
    "microsoft/unilm": SourceRelease("VLMo (microsoft/unilm)", "https://github.com/microsoft/unilm", "mit", "LICENSE"),
}

# the release an original checkpoint of each architecture family comes from (conversion/convert_<family>.py);
# a CLIP file is OpenAI's release or an open_clip save in its layout, both MIT; the open CoCa weights are open_clip's
# releases (Google released none), so a CoCa file is attributed to open_clip's repository and its license
FAMILY_RELEASES: dict[str, tuple[str, ...]] = {
    "clip": ("openai/CLIP", "mlfoundations/open_clip"),
    "albef": ("salesforce/ALBEF",),
    "blip": ("salesforce/BLIP",),
    "vilt": ("dandelin/ViLT",),
    "vlmo": ("microsoft/unilm",),
    "coca": ("mlfoundations/open_clip",),  # open_clip's CoCa weights (coca_ViT-B-32, coca_ViT-L-14 and fine-tunes)
}


@dataclass(frozen=True)
class ModelSource:
    """A model this one was converted or fine-tuned from: what it is, its license (and where that was read) and its
    Hub id when it has one (the card's ``base_model``)."""

    description: str
    license: str | None = None
    license_origin: str | None = None
    base_model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "ModelSource | None":
        if not isinstance(data, dict) or not isinstance(data.get("description"), str):
            return None
        return cls(**{key: data.get(key) for key in ("description", "license", "license_origin", "base_model")})


def release_source(family: str, checkpoint_name: str) -> ModelSource:
    """The source of a conversion from an original ``family`` checkpoint file (``ALBEF.pth``, ``ViT-B-32.pt``)."""
    keys = FAMILY_RELEASES.get(family)
    if not keys:
        return ModelSource(f"the checkpoint `{checkpoint_name}`")
    releases = [SOURCE_RELEASES[key] for key in keys]
    licenses = {release.license for release in releases}
    names = " or ".join(f"[{release.name}]({release.repository})" for release in releases)
    origin = "; ".join(f"{release.repository}/blob/main/{release.license_file}" for release in releases)
    return ModelSource(
        description=f"the original checkpoint `{checkpoint_name}` of {names}",
        license=licenses.pop() if len(licenses) == 1 else None,
        license_origin=origin,
    )


def hub_id_of_cache_path(path: str | Path) -> str | None:
    """``org/name`` when ``path`` is a snapshot folder of the Hugging Face cache
    (``models--org--name/snapshots/<sha>``): the only local folder whose Hub id is known for sure."""
    match = _CACHE_SNAPSHOT.search(Path(path).resolve().as_posix())
    return f"{match['owner']}/{match['name']}" if match else None


def card_metadata(path: Path) -> dict[str, Any]:
    """The YAML metadata of the model card at ``path`` (``{}`` when there is none or it does not parse)."""
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except Exception as error:  # a hand-written card may be anything; provenance then stays unknown
        logger.debug("Cannot read the model card %s: %s", path, error)
        return {}


def folder_source(folder: str | Path, description: str | None = None) -> ModelSource:
    """The source that a local model folder is: its card's license (else the license of the release it was converted
    from, recorded in its ``conversion.json``) and its Hub id when it is a snapshot of the Hub cache."""
    folder = Path(folder)
    hub_id = hub_id_of_cache_path(folder)
    metadata = card_metadata(folder / CARD_NAME) if (folder / CARD_NAME).is_file() else {}
    license_id, origin = metadata.get("license"), f"the model card of `{folder.name}`"
    if not isinstance(license_id, str):
        license_id, origin = None, None
        converted = _conversion_source(folder)
        if converted is not None and converted.license:
            license_id, origin = converted.license, converted.license_origin
    if description is None:
        description = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"the model folder `{folder.name}`"
    return ModelSource(
        description=description,
        license=license_id,
        license_origin=origin,
        base_model=hub_id,
    )


def _conversion_source(folder: Path) -> ModelSource | None:
    try:
        marker = json.loads((folder / CONVERSION_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ModelSource.from_json(marker.get("source")) if isinstance(marker, dict) else None


def hub_source(repo_id: str) -> ModelSource:
    """The source that a Hub model id is; its license is read from its card in the local Hub cache, if cached (no
    network)."""
    from huggingface_hub import try_to_load_from_cache

    license_id = origin = None
    try:
        cached = try_to_load_from_cache(repo_id, CARD_NAME)
    except Exception:  # an id the cache layout rejects: nothing cached
        cached = None
    if isinstance(cached, str):
        value = card_metadata(Path(cached)).get("license")
        if isinstance(value, str):
            license_id, origin = value, f"the model card of {repo_id}"
    return ModelSource(
        description=f"[{repo_id}](https://huggingface.co/{repo_id})", license=license_id, license_origin=origin,
        base_model=repo_id,
    )


def model_source(reference: str | Path) -> ModelSource:
    """The source that ``reference`` names: a local folder (:func:`folder_source`) or a Hub id (:func:`hub_source`)."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return folder_source(path)
    if isinstance(reference, str) and _HUB_MODEL_ID.match(reference):
        return hub_source(reference)
    return ModelSource(f"`{reference}`")


def conversion_source(family: str | None, checkpoint: str | Path) -> ModelSource:
    """The source of a conversion: a transformers directory (its card's license, its Hub id if it is a cache
    snapshot) or an original ``family`` checkpoint file (its release's license)."""
    path = Path(checkpoint)
    if path.is_dir():
        return folder_source(path, description=None)
    return release_source(family or "", path.name)


def training_sources(
    from_pretrained: str | None, vision_init: str | None = None, text_init: str | None = None
) -> list[ModelSource]:
    """What an ``hf-vlp train`` run started from (``--from-pretrained``, or ``--vision-init`` and ``--text-init``);
    empty for a model trained from scratch."""
    return [model_source(reference) for reference in (from_pretrained, vision_init, text_init) if reference]


def resolve_license(explicit: str | None, sources: list[ModelSource]) -> tuple[str | None, str]:
    """The card's ``license`` and the sentence explaining it: ``explicit`` (the author's choice) wins; else the one
    license all ``sources`` share; else none (trained from scratch, or sources without one or with different ones)."""
    if explicit:
        return explicit.strip().lower(), f"`{explicit.strip().lower()}`, chosen by the author of this model."
    licenses = {source.license for source in sources}
    if sources and len(licenses) == 1 and None not in licenses:
        license_id = licenses.pop()
        described = "; ".join(
            f"{source.description}" + (f" (stated in {source.license_origin})" if source.license_origin else "")
            for source in sources
        )
        return license_id, f"`{license_id}`, the license of what this model was made from: {described}."
    if not sources:
        return None, (
            "No license is stated: this model was trained from scratch with hf_vlp, and the license of its weights is "
            "its author's choice (`hf-vlp train --license ID`, or add `license:` to this card)."
        )
    listed = "; ".join(f"{source.description}: {source.license or 'none stated'}" for source in sources)
    return None, (
        f"No license is stated: its sources do not state one license ({listed}). Choose one that honours them "
        "(`hf-vlp train --license ID`, or add `license:` to this card)."
    )
