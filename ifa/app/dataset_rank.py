"""Where across a folder of images IFA helps and hurts: both models' per-image scores, ranked.

`rank_row` scores one image from the two label maps (and its ground truth when there is one): each model's
mIoU over the ground truth's classes (ifa.compare.pair_scores, one class set for both), the gain, the share
of pixels where the models disagree, and each model's accuracy within `BAND` px of a ground-truth boundary
(ifa.compare.boundary_bands).
`LabelCache` keeps the label maps in ifa.prediction_cache's in-memory cache, keyed by the image file's bytes,
the model's weights and the inference options, so a second ranking of the same images is instant; it holds at most
a byte budget (a quarter of IFA_APP_RUN_MB in the app), the oldest label maps going first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ..compare import boundary_bands, pair_scores
from ..prediction_cache import ModelIdentity, PredictionCache

BAND = 4  # px: "near a boundary" in the table
HEADERS = ["image", "labelled", "FPN mIoU", "IFA mIoU", "Δ mIoU (IFA − FPN)", "disagree %",
           f"FPN acc ≤{BAND} px", f"IFA acc ≤{BAND} px"]


def _round(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 2)


def rank_row(name: str, baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray | None,
             class_names: list[str]) -> dict:
    """One image's numbers (percent): disagreement always; with ground truth both mIoUs, the gain and the
    boundary-band accuracies."""
    row = {"image": name, "labelled": gt is not None, "disagreement": _round(100 * float((baseline != ifa).mean())),
           "baseline_mIoU": None, "ifa_mIoU": None, "gain": None, "baseline_band_acc": None, "ifa_band_acc": None}
    if gt is not None and (gt != 255).any():
        scores = pair_scores(baseline, ifa, gt, class_names)
        b, i = scores["baseline"]["mIoU"], scores["ifa"]["mIoU"]
        bands = boundary_bands([(baseline, ifa, gt)], len(class_names), (BAND,))
        row.update(baseline_mIoU=_round(b), ifa_mIoU=_round(i), gain=_round(i - b),
                   baseline_band_acc=_round(bands["baseline"]["accuracy"][0]),
                   ifa_band_acc=_round(bands["ifa"]["accuracy"][0]))
    return row


def sort_rows(rows: list[dict]) -> list[dict]:
    """Largest gain first; images without a score after, by disagreement."""
    return sorted(rows, key=lambda r: (r["gain"] is None, -(r["gain"] if r["gain"] is not None else 0.0),
                                       -(r["disagreement"] or 0.0), r["image"]))


def table_rows(rows: list[dict]) -> list[list]:
    return [[r["image"], "yes" if r["labelled"] else "no", r["baseline_mIoU"], r["ifa_mIoU"], r["gain"],
             r["disagreement"], r["baseline_band_acc"], r["ifa_band_acc"]] for r in rows]


class _MemoryCache(PredictionCache):
    """An in-memory PredictionCache that reports what it stores to its LabelCache (which bounds the bytes)."""

    def __init__(self, owner: LabelCache, identity: ModelIdentity, options: dict):
        super().__init__(None, identity, options)
        self._owner = owner

    def put(self, key: str, labels: np.ndarray) -> None:
        super().put(key, labels)
        self._owner._stored(self, key)

    def forget(self, key: str) -> None:
        self._memory.pop(key, None)

    def nbytes(self, key: str) -> int:
        stored = self._memory.get(key)
        return 0 if stored is None else stored.nbytes


class LabelCache:
    """Both models' label maps per (pair, options), in ifa.prediction_cache's in-memory caches, at most `budget`
    bytes in all (the least recently stored label maps go first; None: unbounded)."""

    def __init__(self, budget: int | None = None):
        self.budget = budget if budget and budget > 0 else None
        self._caches: dict[tuple, tuple[PredictionCache, PredictionCache]] = {}
        self._entries: OrderedDict[tuple[int, str], tuple[_MemoryCache, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def pair(self, identities: tuple[ModelIdentity, ModelIdentity], options: dict) -> tuple[PredictionCache, ...]:
        key = (identities[0].sha256, identities[1].sha256, tuple(sorted((k, str(v)) for k, v in options.items())))
        with self._lock:
            if key not in self._caches:
                self._caches[key] = tuple(_MemoryCache(self, identity, options) for identity in identities)
            return self._caches[key]

    def _stored(self, cache: _MemoryCache, key: str) -> None:
        with self._lock:
            entry = (id(cache), key)
            if entry in self._entries:
                self._bytes -= self._entries.pop(entry)[1]
            size = cache.nbytes(key)
            self._entries[entry] = (cache, size)
            self._bytes += size
            while self.budget is not None and self._bytes > self.budget and len(self._entries) > 1:
                (_, old_key), (old_cache, old_size) = self._entries.popitem(last=False)
                old_cache.forget(old_key)
                self._bytes -= old_size
