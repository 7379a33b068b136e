"""ifa: Semantic FPN and FPN + IFA (Implicit Feature Alignment, ECCV 2022) segmentation models,
inference, metrics and visualisation."""

from .hub import HubError, load_model, push_to_hub
from .inference import Prediction, Predictor
from .models import (
    BACKBONES,
    POSITION_ENCODINGS,
    CheckpointError,
    ConfigError,
    ModelConfig,
    SegmentationModel,
    create_model,
    save_pretrained,
)

__all__ = [
    "BACKBONES", "POSITION_ENCODINGS", "CheckpointError", "ConfigError", "HubError", "ModelConfig", "Prediction",
    "Predictor", "SegmentationModel", "create_model", "load_model", "push_to_hub", "save_pretrained",
]
