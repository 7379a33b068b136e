"""Is an image like what a model was trained on? Its confidence, and the threshold calibrated on its val split.

A model's *confidence* on an image is the mean over pixels of its top class probability (1 / K .. 1). Street
scenes like the training data give confident maps; a portrait, a cat or a micrograph painted with street classes
gives hesitant ones. `tools.calibrate_domain` measures each model's confidence on its val split and on a set of
clearly non-street pictures, chooses a threshold, and records it in the model card's `ifa.domain` block
(`DomainReference`); the app calls an image *in domain* when every model of the pair is at least as confident
as its threshold, and says so when it is not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch


def confidence(scores: torch.Tensor | np.ndarray, logits: bool) -> float:
    """Mean over pixels of the top class probability of scores (K, H, W): logits (softmax taken here) or
    probabilities."""
    scores = torch.as_tensor(scores).float()
    top = scores.softmax(0).amax(0) if logits else scores.amax(0)
    return float(top.mean())


@dataclass(frozen=True)
class DomainReference:
    """A model's calibration: `threshold` (confidence below it: outside what the model knows), the share of its
    val images below it (`val_false_alarm_percent`), and of the non-street pictures at or above it
    (`outside_missed_percent`), with the counts and the val confidences' 5th percentile and median."""

    threshold: float
    val_images: int
    val_false_alarm_percent: float
    val_p05: float
    val_median: float
    outside_images: int
    outside_missed_percent: float

    @classmethod
    def from_record(cls, record) -> DomainReference | None:
        """From a card's `ifa.domain` record; None when absent or malformed."""
        if not isinstance(record, dict):
            return None
        counts = ("val_images", "outside_images")
        try:
            return cls(**{f.name: (int if f.name in counts else float)(record[f.name]) for f in fields(cls)})
        except (KeyError, TypeError, ValueError):
            return None

    def to_record(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def calibrate(val: list[float], outside: list[float], max_false_alarm: float = 0.02) -> DomainReference:
    """The threshold that flags at most `max_false_alarm` of the val images: just below the val confidences'
    quantile at that share (so a val image never sits exactly on it)."""
    val_arr, out_arr = np.sort(np.asarray(val, float)), np.asarray(outside, float)
    allowed = int(np.floor(max_false_alarm * len(val_arr)))  # val images that may fall below
    threshold = float(val_arr[allowed]) - 1e-4
    return DomainReference(
        threshold=threshold, val_images=len(val_arr),
        val_false_alarm_percent=100.0 * float((val_arr < threshold).mean()),
        val_p05=float(np.percentile(val_arr, 5)), val_median=float(np.median(val_arr)),
        outside_images=len(out_arr),
        outside_missed_percent=100.0 * float((out_arr >= threshold).mean()) if len(out_arr) else 0.0)


def domain_reference(folder: str | Path) -> DomainReference | None:
    """The calibration recorded in a checkpoint folder's model card, or None."""
    from .cards import card_records

    return DomainReference.from_record(card_records(folder).get("domain"))


def in_domain(confidences: dict[str, float], references: dict[str, DomainReference | None]) -> bool | None:
    """True when every model with a calibration is at least as confident as its threshold; None when no model of
    the pair has one."""
    known = [(confidences[role], ref.threshold) for role, ref in references.items() if ref is not None]
    if not known:
        return None
    return all(c >= t for c, t in known)
