"""SegmentationModel: backbone + decoder (Semantic FPN or IFA) + upsampling to the input size.

`model(x)`: x is a normalised batch (B, 3, H, W); returns logits (B, K, H, W). The model delegates to its decoder,
which follows one protocol (`Decoder`: levels, logits on a grid, inspect, features); what only the implicit
function can do (query any grid or any points, the offset ablation) lives on the IFA decoder and is reached through
`model.implicit` (a ValueError for a Semantic FPN). `predict_grid(x, size)`, `query_points(x, coords)` and
`offsets_zeroed()` are shorthands through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import create_backbone
from .config import ModelConfig
from .fold import fold_batchnorm, fuse_activations
from .fpn import AuxHead, FPNNeck, SemanticFPNHead, conv_bn_relu
from .ifa import IFAHead
from .intermediates import HeadIntermediates


class Decoder(Protocol):
    """What SegmentationModel asks of a decoder. Levels are the head's inputs (B, C, h_l, w_l), finest first; grid
    logits are (B, K, h, w) on the head's grid (stride 4)."""

    fold_skip: tuple[str, ...]  # submodules BatchNorm folding must leave alone (they fold their own)

    def levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]: ...

    def logits(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None,
               zeroed: Sequence[int] = ()) -> torch.Tensor: ...

    def inspect(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None) -> HeadIntermediates: ...

    def decode_features(self, levels: list[torch.Tensor]) -> torch.Tensor: ...


class IFADecoder(nn.Module):
    """Per-level features for the IFA head, then the head.

    ifa_features "lateral" (the paper): per-level 1x1 conv + BN + ReLU to C channels, no top-down
    pathway. "fpn" (a variant): the FPN neck's outputs (laterals, top-down pathway, 3x3 convs), so
    the model differs from Semantic FPN only in the head.
    """

    fold_skip = ("decoder.head",)  # the IFA head folds its own BatchNorm in its fast path

    def __init__(self, in_channels: list[int], config: ModelConfig):
        super().__init__()
        self.reads_fpn_neck = config.ifa_features == "fpn"
        if self.reads_fpn_neck:
            self.neck = FPNNeck(in_channels, config.neck_channels)
        else:
            self.reduce = nn.ModuleList(conv_bn_relu(c, config.neck_channels, 1) for c in in_channels)
        self.head = IFAHead([config.neck_channels] * len(in_channels), config.num_classes,
                            tuple(config.mlp_channels), config.pos_encoding, config.pos_dim,
                            dropout=config.ifa_dropout, read=config.ifa_read)

    def levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The head's inputs: list of (B, C, h_l, w_l)."""
        if self.reads_fpn_neck:
            return self.neck(feats)
        return [reduce(f) for reduce, f in zip(self.reduce, feats)]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.levels(feats))

    def logits(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None,
               zeroed: Sequence[int] = ()) -> torch.Tensor:
        """Logits on a size-(h, w) query grid (default the finest level's), offsets of `zeroed` levels fed as 0."""
        return self.head(levels, size, zeroed=zeroed)

    def inspect(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None) -> HeadIntermediates:
        return self.head.inspect(levels, size)

    def decode_features(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.head.decode_features(levels)

    # --- what only the implicit function can do (reached through SegmentationModel.implicit) ---------------------
    def query_points(self, levels: list[torch.Tensor], coords: torch.Tensor, zeroed: Sequence[int] = ()
                     ) -> torch.Tensor:
        """Logits at points coords (B, N, 2), normalised (y, x) in [-1, 1]: (B, K, N)."""
        return self.head.query_points(levels, coords, zeroed=zeroed)

    def offsets_zeroed(self, levels: Sequence[int] | None = None):
        """Context manager: this thread's calls see r = 0 at every level, or at `levels` (0-based) only."""
        return self.head.offsets_zeroed(levels)


class FPNDecoder(nn.Module):
    """FPN neck + semantic head; logits at the stride-4 grid."""

    def __init__(self, in_channels: list[int], config: ModelConfig):
        super().__init__()
        self.neck = FPNNeck(in_channels, config.neck_channels)
        self.head = SemanticFPNHead(config.neck_channels, config.head_channels, config.num_classes,
                                    num_levels=len(in_channels))

    fold_skip = ()

    def levels(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The head's inputs: the FPN neck outputs, list of (B, C, h_l, w_l)."""
        return self.neck(feats)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.levels(feats))

    def logits(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None,
               zeroed: Sequence[int] = ()) -> torch.Tensor:
        """Logits on the stride-4 grid; another grid or zeroed offsets need an implicit (IFA) head."""
        if size is not None or zeroed:
            raise ValueError("only an IFA head can be queried on another grid or with offsets zeroed")
        return self.head(levels)

    def inspect(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None) -> HeadIntermediates:
        if size is not None:
            raise ValueError("only an IFA head can be queried on another grid")
        return self.head.inspect(levels)

    def decode_features(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.head.decode_features(levels)


_DECODERS = {"fpn": FPNDecoder, "ifa": IFADecoder}


class SegmentationModel(nn.Module):
    def __init__(self, config: ModelConfig, pretrained_backbone: bool = False):
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config.backbone, pretrained=pretrained_backbone)
        self.decoder = _DECODERS[config.architecture](self.backbone.channels, config)
        self.aux_head = (AuxHead(self.backbone.channels[2], config.aux_channels, config.num_classes)
                         if config.aux_channels > 0 else None)
        # HRNet's branches need sizes divisible by 32; other backbones take any size.
        self.size_divisor = 32 if config.backbone.startswith("hrnet") else 1
        self.folded = False  # BatchNorm folded into the convolutions (`fold_batchnorm`): inference only

    @property
    def is_ifa(self) -> bool:
        return self.config.architecture == "ifa"

    def _upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.config.align_corners)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        d = self.size_divisor
        pad_h, pad_w = -x.shape[-2] % d, -x.shape[-1] % d
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The head's per-level inputs for a normalised batch (B, 3, H, W): list of (B, C, h_l, w_l)."""
        return self.decoder.levels(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K, H, W) at the input size (stride-4 logits bilinearly upsampled, as `upsample_logits`)."""
        return self.upsample_logits(self.decoder(self.backbone(self._pad(x))), x.shape[-2:])

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training: (logits (B, K, H, W), auxiliary logits at stride 16 or None)."""
        logits, aux, _ = self.forward_train(x)
        return logits, aux

    def forward_train(self, x: torch.Tensor, coords: torch.Tensor | None = None):
        """Training, from one backbone pass: (logits (B, K, H, W), auxiliary logits at stride 16 or None,
        IFA logits at points coords (B, N, 2) normalised (y, x) as (B, K, N), or None without coords)."""
        feats = self.backbone(x)
        levels = self.decoder.levels(feats)
        logits = self._upsample(self.decoder.logits(levels), x.shape[-2:])
        aux = self.aux_head(feats[2]) if self.aux_head is not None else None
        if coords is None:
            return logits, aux, None
        return logits, aux, self.implicit.query_points(levels, coords)

    def decode_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final per-pixel features before the classifier, at the stride-4 grid: (B, D, h_1, w_1)."""
        return self.decoder.decode_features(self.levels(x))

    def fold_batchnorm(self) -> SegmentationModel:
        """Inference only, in place: every BatchNorm that follows a convolution (backbone, lateral convs, Semantic
        FPN head) folded into it, and every ReLU / ReLU6 that reads a convolution's output fused with it (one oneDNN
        call on the CPU); the IFA head folds its own in its fast path. The model computes the same logits up to
        float rounding and refuses `train()` afterwards. Returns self, in eval mode."""
        self.eval()
        probe = torch.zeros(1, 3, 64, 64, device=next(self.parameters()).device)
        fold_batchnorm(self, lambda: self(probe), skip=self.decoder.fold_skip)
        fuse_activations(self, lambda: self(probe), skip=self.decoder.fold_skip)
        self.folded = True
        return self

    def train(self, mode: bool = True) -> SegmentationModel:
        if mode and self.folded:
            raise RuntimeError("this model's BatchNorm is folded into its convolutions (inference only): "
                               "load it again to train")
        return super().train(mode)

    # --- a look inside, for tools and the app (they never reach into the head) --------------------
    def head_logits(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None,
                    zeroed: Sequence[int] = ()) -> torch.Tensor:
        """Logits on the head's grid from its inputs `levels` (as `levels(x)` gives them): (B, K, h, w); `size`
        (IFA only) queries another grid; `zeroed` (IFA only) feeds those levels' offsets as 0 in this call."""
        return self.decoder.logits(levels, size, zeroed)

    def upsample_logits(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Grid logits (B, K, h, w) -> (B, K, H, W) at an input of `size` (H, W), as `forward` does (padding of
        size-divisor backbones cropped off), in at least float32: under autocast too (bilinear interpolation in
        bf16 took twice as long on a CPU)."""
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return self._upsample(logits, self.padded_size(size))[..., :size[0], :size[1]]

    def padded_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) rounded up to the backbone's size divisor: what the model sees of a size-(H, W) input."""
        d = self.size_divisor
        return size[0] + -size[0] % d, size[1] + -size[1] % d

    def inspect(self, levels: list[torch.Tensor], size: tuple[int, int] | None = None) -> HeadIntermediates:
        """The head's inside for its inputs `levels`: per-level contribution norms, last features and grid logits
        (`HeadIntermediates`); in the spirit of timm's forward_intermediates, from one pass over the head.
        `size` (IFA only) queries another grid, e.g. every input pixel."""
        return self.decoder.inspect(levels, size)

    # --- what only the implicit function can do ------------------------------------------------------------------
    @property
    def implicit(self) -> IFADecoder:
        """The IFA decoder, for what only an implicit function can do: `query_points(levels, coords)`,
        `logits(levels, size, zeroed)` on any grid, `offsets_zeroed(levels)`; a ValueError for a Semantic FPN."""
        if not isinstance(self.decoder, IFADecoder):
            raise ValueError(f"this is a Semantic FPN ({self.config.backbone}); querying any grid or any points, or "
                             f"the offset ablation, needs an IFA model (architecture 'ifa')")
        return self.decoder

    def _levels_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-2] % self.size_divisor or x.shape[-1] % self.size_divisor:
            raise ValueError(f"input size must be divisible by {self.size_divisor} for {self.config.backbone}")
        return self.levels(x)

    def predict_grid(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """IFA logits queried on a size-(h, w) grid over the image (default stride 4): (B, K, h, w).

        size=x.shape[-2:] queries every input pixel; memory stays bounded (row chunks).
        """
        implicit = self.implicit
        return implicit.logits(self._levels_of(x), size)

    def query_points(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """IFA logits at points coords (B, N, 2), normalised (y, x) in [-1, 1]: (B, K, N)."""
        implicit = self.implicit
        return implicit.query_points(self._levels_of(x), coords)

    def offsets_zeroed(self, levels: Sequence[int] | None = None):
        """Context manager: within it this thread's calls of the IFA head see r = 0 at every level, or at `levels`
        (0-based) only (the offset ablation; `head_logits(..., zeroed=...)` does it for one call)."""
        return self.implicit.offsets_zeroed(levels)


def create_model(config: ModelConfig | dict | None = None, pretrained_backbone: bool = False,
                 **overrides) -> SegmentationModel:
    """Build a model from a ModelConfig, a dict or keyword arguments (e.g. architecture="ifa")."""
    data = config.to_dict() if isinstance(config, ModelConfig) else dict(config or {})
    data.update(overrides)
    return SegmentationModel(ModelConfig.from_dict(data), pretrained_backbone=pretrained_backbone)
