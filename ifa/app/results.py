"""One comparison run (image, both predictions, ground truth, analysis) and the store of runs, bounded in bytes.

What a stored run keeps (measured by `nbytes`, the sum of its arrays' bytes): the image, both label maps (uint8),
both models' class probabilities as uint8 (for the probe), the IFA head's inputs (float32: the probe and the offset
ablation read them and match the library exactly), the analysis' small grids and the feature views once shown
(`Result.compact`). A 1024 x 1024 run of the shipped paper's pair kept 224 MB before (float16 scores, float32 head
inputs of both models, the heads' inside); it keeps 181 MB until its analysis is shown and 128 MB after.
"""

from __future__ import annotations

import dataclasses
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
    client: str = ""  # who ran it (ResultStore's fairness): see client_of
    shared: frozenset = frozenset()  # ids of arrays shared with another run (the first page's): not counted

    def compact(self) -> Result:
        """Keep only what later views need (in place; returns self): outputs as ModelOutput.compacted (the
        baseline's head inputs, read only if its analysis must be recomputed, in float16; IFA's stay float32: the
        probe and the offset ablation read them and must match the library exactly); once the feature views are
        shown, neither model's head inputs or inside (the analysis keeps IFA's levels and the baseline's stride-4
        logits)."""
        self.baseline, self.ifa = self.baseline.compacted(levels_fp16=True), self.ifa.compacted()
        a = self.analysis
        if a is not None and self.feature_views is not None:
            self.baseline = dataclasses.replace(self.baseline, head_inputs=None, inside=None)
            self.ifa = dataclasses.replace(self.ifa, head_inputs=None, inside=None)
            self.analysis = dataclasses.replace(a, ifa_features=None, fpn_features=None)
        return self

    def nbytes(self) -> int:
        """Bytes of the arrays this run holds (each array counted once, those in `shared` not at all)."""
        return nbytes(self, set(self.shared))

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return self.image.shape[0], self.image.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def nbytes(value, seen: set[int] | None = None) -> int:
    """Bytes of the numpy arrays (and PIL images) reachable from `value` through dataclasses, lists, tuples and
    dicts, each counted once (a view counts its base's bytes once); ids in `seen` are skipped."""
    seen = set() if seen is None else seen
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return 0
    if isinstance(value, np.ndarray):
        base = value
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) in seen or id(value) in seen:
            return 0
        seen.update((id(base), id(value)))
        return base.nbytes
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name), seen) for f in dataclasses.fields(value)
                   if f.name not in ("spec", "shared"))
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(nbytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v, seen) for v in value.values())
    if hasattr(value, "getbands") and hasattr(value, "size"):  # a PIL image
        return value.size[0] * value.size[1] * len(value.getbands())
    return 0


def array_ids(value) -> frozenset:
    """The ids of every array reachable from `value` (what `nbytes` would count): for Result.shared."""
    seen: set[int] = set()
    nbytes(value, seen)
    return frozenset(seen)


def client_of(request) -> str:
    """Who sent a request, for the store's fairness: the first address of X-Forwarded-For (a Space's proxy puts the
    visitor's address first; a client that writes its own header only splits itself into more clients, each of
    which still loses its own runs first), else X-Real-IP, else the connection's address; "" without a request
    (in-process calls). A session is Gradio's session_hash (each run replaces its session's previous one)."""
    if request is None:
        return ""
    headers = getattr(request, "headers", None) or {}
    try:
        forwarded = headers.get("x-forwarded-for") or ""
        real = headers.get("x-real-ip") or ""
    except AttributeError:
        forwarded = real = ""
    first = forwarded.split(",")[0].strip() or real.strip()
    if not first:
        client = getattr(request, "client", None)
        first = str(getattr(client, "host", "") or "")
    return first[:64]


GONE_MEMORY = ("this run was removed to keep the server within memory (other runs needed the room): press Run to "
               "compute it again")
GONE_EXPIRED = "this run has expired (unused for {minutes:g} min): press Run to compute it again"


class ResultStore:
    """The runs of all sessions, by id (thread-safe), bounded in bytes, in count and in age.

    A session's state holds the id of its latest run; `add(result, replaces=id, client=...)` drops that previous
    run, so a session holds one run. Runs unused for `ttl` seconds expire. When the runs together hold more than
    `budget` bytes (Result.nbytes) or number more than `capacity`, runs are dropped, fairly: first the adding
    client's own other runs (oldest use first), then the least recently used run of the client holding the most
    bytes; the run just added or updated stays (a single run larger than the budget is kept alone). A dropped run's
    id is remembered (`why_gone`) so that its session is told what happened. Dropped runs' files are deleted.
    """

    REMEMBER = 4096  # ids of dropped runs remembered for their message

    def __init__(self, capacity: int = 32, files_root: Path | None = None, ttl: float = 3600.0,
                 budget: int | None = None):
        self.capacity = max(1, capacity)
        self.files_root = files_root
        self.ttl = ttl
        self.budget = budget if budget and budget > 0 else None
        self._items: OrderedDict[str, list] = OrderedDict()  # id -> [result, last use, bytes]
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, result: Result, replaces: str | None = None, client: str | None = None) -> Result:
        with self._lock:
            if client is not None:
                result.client = client
            if replaces and replaces != result.id and replaces in self._items:
                self._drop(replaces, None)
            self._items[result.id] = [result, time.monotonic(), self._measure(result)]
            self._expire()
            self._fit(result)
        return result

    def update(self, result: Result) -> None:
        """Measure a stored run again (after its analysis, ablation or label) and keep the store within bounds."""
        with self._lock:
            entry = self._items.get(result.id)
            if entry is not None and entry[0] is result:
                entry[2] = self._measure(result)
                self._fit(result)

    def get(self, result_id: str | None) -> Result | None:
        with self._lock:
            self._expire()
            if not result_id or not isinstance(result_id, str) or result_id not in self._items:
                return None
            entry = self._items.pop(result_id)
            entry[1] = time.monotonic()
            self._items[result_id] = entry
            return entry[0]

    def why_gone(self, result_id) -> str | None:
        """GONE_MEMORY or GONE_EXPIRED for a run this store dropped (and still remembers), else None."""
        with self._lock:
            reason = self._gone.get(result_id) if isinstance(result_id, str) else None
        return None if reason is None else reason.format(minutes=self.ttl / 60)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        """Bytes held by the stored runs (as last measured)."""
        with self._lock:
            return sum(entry[2] for entry in self._items.values())

    def by_client(self) -> dict[str, int]:
        """Bytes held per client."""
        with self._lock:
            held: dict[str, int] = {}
            for result, _, size in self._items.values():
                held[result.client] = held.get(result.client, 0) + size
            return held

    @staticmethod
    def _measure(result) -> int:
        measure = getattr(result, "nbytes", None)
        return int(measure()) if callable(measure) else 0

    def _over(self) -> bool:
        if len(self._items) > self.capacity:
            return True
        return self.budget is not None and sum(entry[2] for entry in self._items.values()) > self.budget

    def _fit(self, keep) -> None:
        client = getattr(keep, "client", "")
        while self._over() and len(self._items) > 1:
            own = [k for k, (r, _, _) in self._items.items() if k != keep.id and getattr(r, "client", "") == client]
            if own:  # in order of last use: the client's least recently used run first
                victim = own[0]
            else:
                held: dict[str, int] = {}
                for k, (r, _, size) in self._items.items():
                    if k != keep.id:
                        held[getattr(r, "client", "")] = held.get(getattr(r, "client", ""), 0) + size
                largest = max(held, key=held.get)
                victim = next(k for k, (r, _, _) in self._items.items()
                              if k != keep.id and getattr(r, "client", "") == largest)
            self._drop(victim, GONE_MEMORY)

    def _expire(self) -> None:
        now = time.monotonic()
        for result_id in [k for k, (_, used, _) in self._items.items() if now - used > self.ttl]:
            self._drop(result_id, GONE_EXPIRED)

    def _drop(self, result_id: str, reason: str | None) -> None:
        result = self._items.pop(result_id)[0]
        if reason:
            self._gone[result_id] = reason
            while len(self._gone) > self.REMEMBER:
                self._gone.popitem(last=False)
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
