"""One comparison run (image, both predictions, ground truth, analysis) and a bounded store of runs."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..registry import PairSpec
from .engine import FeatureAnalysis, ModelOutput, Options


@dataclass
class Result:
    name: str  # image name (file or sample)
    image: np.ndarray  # uint8 (H, W, 3) RGB as the models saw it
    gt: np.ndarray | None  # uint8 (H, W) class indices, 255 = ignore
    spec: PairSpec
    class_names: list[str]
    palette: list[list[int]]
    baseline_align_corners: bool
    options: Options
    baseline: ModelOutput
    ifa: ModelOutput
    notices: list[str]
    device: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    analysis: FeatureAnalysis | None = None
    feature_views: tuple | None = None  # the /analyse outputs, computed once
    files: list[str] = field(default_factory=list)  # downloadable label maps

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return self.image.shape[0], self.image.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ResultStore:
    """The `capacity` most recent results, by id (thread-safe); evicted results' files are deleted."""

    def __init__(self, capacity: int = 8, files_root: Path | None = None):
        self.capacity = max(1, capacity)
        self.files_root = files_root
        self._items: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, result: Result) -> Result:
        with self._lock:
            self._items[result.id] = result
            while len(self._items) > self.capacity:
                _, old = self._items.popitem(last=False)
                self._delete_files(old)
        return result

    def get(self, result_id: str | None) -> Result | None:
        with self._lock:
            if not result_id or result_id not in self._items:
                return None
            self._items.move_to_end(result_id)
            return self._items[result_id]

    def folder(self, result: Result) -> Path:
        root = self.files_root
        if root is None:
            raise RuntimeError("ResultStore has no files_root")
        path = root / result.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _delete_files(self, result: Result) -> None:
        if self.files_root is not None:
            shutil.rmtree(self.files_root / result.id, ignore_errors=True)
