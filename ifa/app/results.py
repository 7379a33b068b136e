"""One comparison run (image, both predictions, ground truth, analysis) and a per-session store of runs."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engine import FeatureAnalysis, ModelOutput, Options
from .registry import PairSpec


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
    dataset: str = ""  # the pair's class set (ifa.data.classes), "" when unnamed
    ablation: tuple | None = None  # (verdict image, summary) of the offset ablation, computed on request

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return self.image.shape[0], self.image.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ResultStore:
    """The latest result of each session, by id (thread-safe), bounded in count and age.

    A session's state holds the id of its latest run; when the session runs again, `add(result, replaces=id)`
    drops that previous run, so each session holds one result and sessions never evict each other's until
    more than `capacity` sessions are live (then the least recently used goes). Results unused for `ttl`
    seconds expire. Dropped results' files are deleted.
    """

    def __init__(self, capacity: int = 32, files_root: Path | None = None, ttl: float = 3600.0):
        self.capacity = max(1, capacity)
        self.files_root = files_root
        self.ttl = ttl
        self._items: OrderedDict[str, tuple[Result, float]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, result: Result, replaces: str | None = None) -> Result:
        with self._lock:
            if replaces and replaces != result.id and replaces in self._items:
                self._drop(replaces)
            self._items[result.id] = (result, time.monotonic())
            self._expire()
            while len(self._items) > self.capacity:
                self._drop(next(iter(self._items)))
        return result

    def get(self, result_id: str | None) -> Result | None:
        with self._lock:
            self._expire()
            if not result_id or result_id not in self._items:
                return None
            result, _ = self._items.pop(result_id)
            self._items[result_id] = (result, time.monotonic())
            return result

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        for result_id in [k for k, (_, used) in self._items.items() if now - used > self.ttl]:
            self._drop(result_id)

    def _drop(self, result_id: str) -> None:
        result, _ = self._items.pop(result_id)
        self._delete_files(result)

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
