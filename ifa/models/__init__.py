"""Models: backbones, Semantic FPN, the IFA head, the segmentor and its checkpoint format."""

from .backbones import BACKBONES, create_backbone
from .checkpoint import CheckpointError, load_checkpoint_folder, save_pretrained
from .config import ConfigError, ModelConfig
from .ifa import POSITION_ENCODINGS, IFAHead, PositionEncoding
from .segmentor import SegmentationModel, create_model

__all__ = [
    "BACKBONES", "POSITION_ENCODINGS", "CheckpointError", "ConfigError", "IFAHead", "ModelConfig",
    "PositionEncoding", "SegmentationModel", "create_backbone", "create_model", "load_checkpoint_folder",
    "save_pretrained",
]
