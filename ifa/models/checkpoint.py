"""Checkpoints as Hub-style folders: config.json + model.safetensors + README.md (model card).

`save_pretrained(model, folder)` writes the layout atomically; `load_checkpoint_folder(folder)`
rebuilds the model from config.json alone and loads the weights strictly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..cards import model_card
from ..io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, atomic_write
from .config import ConfigError, ModelConfig
from .segmentor import SegmentationModel


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing or broken files, wrong keys or shapes."""


def save_pretrained(model: SegmentationModel, folder: str | Path, card=None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write config.json, model.safetensors (optionally cast, e.g. fp16) and README.md to `folder`.

    `card`: a huggingface_hub ModelCard (ifa.cards.model_card) or None for a minimal one."""
    folder = Path(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    config = json.dumps(model.config.to_dict(), indent=2) + "\n"
    atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(config))
    card = card if card is not None else default_card(model.config, folder.name)
    atomic_write(folder / CARD_NAME, lambda p: Path(p).write_text(str(card)))
    return folder


def default_card(config: ModelConfig, name: str):
    """A minimal card (ifa.cards) for a checkpoint saved without one."""
    kind = "FPN + IFA" if config.architecture == "ifa" else "Semantic FPN"
    return model_card(name, config.architecture, config.dataset,
                      f"{kind}, backbone `{config.backbone}`, {config.num_classes} classes.")


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint folder needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    try:
        return ModelConfig.from_dict(data)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: {err}") from err


def load_checkpoint_folder(folder: str | Path, num_classes: int | None = None) -> SegmentationModel:
    """Rebuild the model described by folder/config.json and load folder/model.safetensors strictly.

    `num_classes`, when given, must match the checkpoint's. Returns the model in eval mode, fp32, CPU.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    config = read_config(folder)
    if num_classes is not None and num_classes != config.num_classes:
        raise CheckpointError(f"{folder} predicts {config.num_classes} classes, expected {num_classes}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights} is unreadable or truncated ({err})") from err
    model = SegmentationModel(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its config ({config.architecture}, {config.backbone}): "
                              f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{weights} has tensors of the wrong shape (checkpoint vs config): {wrong[:5]}")
    model.load_state_dict(state, strict=True)
    return model.float().eval()
