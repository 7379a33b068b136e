"""Resolve a checkpoint: a local folder, or a Hub repo id (+ pinned revision) through huggingface_hub."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download

from .models.checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, load_checkpoint_folder
from .models.segmentor import SegmentationModel


class HubError(RuntimeError):
    """A repo, file or revision that cannot be reached."""


def resolve_checkpoint(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder for `path_or_repo_id` (downloaded into the HF cache when a repo id)."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    return Path(snapshot_download(str(path_or_repo_id), revision=revision,
                                  allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))


def load_model(path_or_repo_id: str | Path, revision: str | None = None,
               num_classes: int | None = None) -> SegmentationModel:
    """Load a checkpoint folder or Hub repo as an fp32 CPU model in eval mode."""
    return load_checkpoint_folder(resolve_checkpoint(path_or_repo_id, revision), num_classes=num_classes)


def push_to_hub(folder: str | Path, repo_id: str, revision: str | None = None, private: bool = False) -> str:
    """Upload a checkpoint folder to a Hub model repo; returns the commit sha."""
    raise NotImplementedError
