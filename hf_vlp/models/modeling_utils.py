"""Base class of every hf_vlp model: transformers' ``PreTrainedModel`` plus a model card on save and push."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard
from transformers import PreTrainedModel

from ..integrations.model_card import render_model_card

MODEL_CARD_NAME = "README.md"


class VlpPreTrainedModel(PreTrainedModel):
    """Adds to ``save_pretrained`` a ``README.md`` rendered from ``model_cards/<model_card_template>.md`` (kept if
    one is already there, e.g. written with measured metrics), and makes ``push_to_hub`` upload that card instead
    of transformers' generic one."""

    model_card_template: str | None = None
    model_card_pipeline_tag: str | None = None
    # the task named in the card's evaluation results when there is no pipeline for it (e.g. NLVR2)
    model_card_task: str | None = None

    def model_card_fields(self) -> dict[str, Any]:
        """Architecture-specific template fields (sizes, towers); overridden per architecture."""
        return {}

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        card_path = Path(save_directory) / MODEL_CARD_NAME
        if self.model_card_template and kwargs.get("is_main_process", True) and not card_path.exists():
            render_model_card(self).save(card_path)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
        model_card: ModelCard | None = None,
    ) -> Any:
        """Save to a temporary folder (safetensors + config + rendered card) and upload it as one commit."""
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            card = model_card or render_model_card(self, repo_id=repo_id, tags=tags)
            card.save(Path(folder) / MODEL_CARD_NAME)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                commit_description=commit_description,
                revision=revision,
                create_pr=create_pr,
            )
