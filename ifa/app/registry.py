"""Model pairs (a Semantic FPN baseline and an FPN + IFA model) for side-by-side comparison.

The pairs come from `checkpoints/registry.json` of the app's home (`AppSettings.home`: IFA_APP_HOME / --home, else
the working directory when it holds one, else the source checkout; IFA_REGISTRY / --registry names another file)
and from Hub repo ids typed by a user. The functions here take the home and the switches they need as arguments;
left out, they are read from the environment through `AppSettings.from_env()` (for tools and tests; the app passes
its settings). The registry format:

    {"default": "<pair id>",
     "pairs": [{"id": "...", "title": "...", "dataset": "camvid", "classes": ["Sky", ...],
                "baseline": {"source": "local", "path": "checkpoints/NAME"}
                            | {"source": "hub", "repo_id": "org/name", "revision": "<sha or branch>"},
                "ifa": {...same...}}]}

Relative local paths are relative to the app's home (the folder holding checkpoints/), else to the
registry file's folder. `PairCache` loads a pair once (both models, checked to agree on classes),
keeps the most recently used few in memory, and turns every failure into a PairError with a
one-line message naming the side (baseline / IFA) and the source.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cards import offset_ablation, resolution_record
from ..domain import DomainReference, domain_reference
from ..hub import HubError, load_hub_model, load_model, resolve_checkpoint
from ..models.checkpoint import CheckpointError
from ..models.config import ConfigError
from ..models.segmentor import SegmentationModel
from .settings import SOURCE_CHECKOUT, AppSettings

__all__ = ["SOURCE_CHECKOUT"]  # re-exported: the project root when run from a source checkout
HUB_PREFIX = "hub:"
MAX_REPO_ID = 96  # the Hub's longest repo id (huggingface_hub.utils.validate_repo_id)
ECHO_CHARS = 80  # the most of a user's input that a message repeats
DEFAULT_MAX_WEIGHTS_MB = 500  # AppSettings.max_weights_mb's default


def shorten(value, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` when short, else its first `limit` characters and an ellipsis: what a message may echo of a
    user's input (a 6000-character repo id must not make an 18 KB message)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def public_path(path: str | os.PathLike, home: Path | None = None) -> str:
    """A path as the app's answers may show it: relative to the app's home (`home`, default app_home()) when inside
    it (e.g. checkpoints/camvid-effl0-fpn), else its last part; never an absolute path of this machine."""
    path, home = Path(path), home or app_home()
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(home).as_posix()
    except ValueError:
        return path.name


def app_home() -> Path:
    """The folder holding checkpoints/registry.json and assets/samples.json as the environment gives it
    (`AppSettings.from_env().home`): IFA_APP_HOME when set, else the working directory when it has
    checkpoints/registry.json, else the source checkout this package lies in."""
    return AppSettings.from_env().home


class RegistryError(ValueError):
    """A registry file that cannot be read or does not have the documented format."""


class PairError(RuntimeError):
    """A model pair that cannot be loaded or whose two models do not fit together."""


@dataclass(frozen=True)
class ModelSource:
    """Where one model of a pair comes from: a local checkpoint folder or a Hub repo (+ revision)."""

    source: str  # "local" or "hub"
    location: str  # folder path or repo id
    revision: str | None = None
    home: Path | None = field(default=None, compare=False, repr=False)  # the app's home (public_location)

    def describe(self) -> str:
        if self.source == "hub":
            return f"Hub repo '{self.location}'" + (f" @ {self.revision}" if self.revision else " @ main")
        return f"local folder {self.public_location}"

    @property
    def public_location(self) -> str:
        """The repo id, or the folder relative to the app's home (else its name): no path of this machine."""
        return self.location if self.source == "hub" else public_path(self.location, self.home)

    def summary(self) -> dict:
        """A JSON description for the app's API ("location", not "path": a dict with a "path" key reads as a
        file to download for gradio_client); local folders relative to the app's home (public_path)."""
        return {"source": self.source, "location": self.public_location, "revision": self.revision}

    def to_dict(self) -> dict:
        if self.source == "hub":
            return {"source": "hub", "repo_id": self.location, "revision": self.revision}
        return {"source": "local", "path": self.location}


@dataclass(frozen=True)
class PairSpec:
    id: str
    title: str
    baseline: ModelSource
    ifa: ModelSource
    dataset: str = ""
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The registry.json entry of this pair."""
        return {"id": self.id, "title": self.title, "dataset": self.dataset, "classes": list(self.classes),
                "baseline": self.baseline.to_dict(), "ifa": self.ifa.to_dict()}

    def summary(self) -> dict:
        return {"id": self.id, "title": self.title, "dataset": self.dataset, "classes": list(self.classes),
                "baseline": self.baseline.summary(), "ifa": self.ifa.summary()}


@dataclass
class LoadedPair:
    spec: PairSpec
    baseline: SegmentationModel
    ifa: SegmentationModel
    device: torch.device
    load_seconds: float
    notes: list[str] = field(default_factory=list)
    # The IFA model's offset ablation as its model card records it ({"as_trained", "offsets_zeroed",
    # "changed_percent"}), or None.
    ifa_offset_ablation: dict[str, float] | None = None
    # Each model's in-domain calibration as its card records it (ifa.domain), by role; None where absent.
    domain: dict[str, DomainReference | None] = field(default_factory=dict)
    # The IFA model's val mIoU on its stride-4 grid and at every pixel (ifa.cards.resolution_record), or None.
    ifa_resolution: dict | None = None

    @property
    def best_resolution(self) -> str:
        """The IFA output resolution the app defaults to for this pair: the better on val, else the stride-4 grid."""
        return self.ifa_resolution["best"] if self.ifa_resolution else "stride4"

    @property
    def class_names(self) -> list[str]:
        return list(self.ifa.config.class_names)

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.ifa.config.palette]

    @property
    def num_classes(self) -> int:
        return self.ifa.config.num_classes

    @property
    def dataset(self) -> str:
        return self.spec.dataset or self.ifa.config.dataset

    @functools.cached_property
    def cpu_ifa_head(self) -> torch.nn.Module:
        """The IFA head on the CPU in fp32 (the model's own when it runs there): point queries from stored levels
        answer on the CPU, outside any GPU slot."""
        head = self.ifa.decoder.head
        return head if self.device.type == "cpu" else copy.deepcopy(head).float().cpu().eval()


def registry_path() -> Path:
    """The registry file as the environment gives it (`AppSettings.from_env().registry`): IFA_REGISTRY when set,
    else checkpoints/registry.json of app_home()."""
    return AppSettings.from_env().registry


def _resolve_local(path: str, registry_file: Path, home: Path) -> str:
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    for base in (home, registry_file.parent):
        if (base / p).exists():
            return str(base / p)
    return str(home / p)


def _parse_source(data, where: str, registry_file: Path, home: Path) -> ModelSource:
    if not isinstance(data, dict):
        raise RegistryError(f"{where} must be an object with 'source', got {type(data).__name__}")
    source = data.get("source")
    if source == "local":
        if not isinstance(data.get("path"), str) or not data["path"].strip():
            raise RegistryError(f"{where}: a local source needs a 'path'")
        return ModelSource("local", _resolve_local(data["path"], registry_file, home), home=home)
    if source == "hub":
        if not isinstance(data.get("repo_id"), str) or not data["repo_id"].strip():
            raise RegistryError(f"{where}: a hub source needs a 'repo_id'")
        revision = data.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise RegistryError(f"{where}: 'revision' must be a string")
        return ModelSource("hub", data["repo_id"].strip(), (revision or "").strip() or None)
    raise RegistryError(f"{where}: 'source' must be 'local' or 'hub', got {source!r}")


@dataclass
class Registry:
    pairs: dict[str, PairSpec]
    default: str | None
    path: Path | None = None
    home: Path | None = None  # the app's home (None: app_home())
    allow_local: bool | None = None  # typed pairs may name local folders (None: local_pairs_allowed())

    def get(self, pair_id: str) -> PairSpec:
        if pair_id in self.pairs:
            return self.pairs[pair_id]
        if isinstance(pair_id, str) and pair_id.startswith(HUB_PREFIX):
            return parse_hub_pair_id(pair_id, allow_local=self.allow_local, home=self.home)
        valid = ", ".join(self.pairs) or "none"
        raise PairError(f"unknown model pair {shorten(pair_id)}; registered pairs: {valid}; or a Hub pair "
                        f"'{HUB_PREFIX}org/baseline[@rev]|org/ifa[@rev]'")

    def add(self, spec: PairSpec) -> PairSpec:
        self.pairs[spec.id] = spec
        return spec

    def choices(self) -> list[tuple[str, str]]:
        """(title, id) for a dropdown."""
        return [(spec.title, spec.id) for spec in self.pairs.values()]


def read_registry(path: str | os.PathLike | None = None, home: Path | None = None,
                  allow_local: bool | None = None) -> Registry:
    """Parse a registry file (default: registry_path()), local paths relative to `home` (default app_home()), else
    to the file's folder; RegistryError with a clear message if malformed. `allow_local`: Registry.allow_local."""
    path = Path(path) if path is not None else registry_path()
    home = home or app_home()
    if not path.is_file():
        raise RegistryError(f"model registry {path} not found (set IFA_REGISTRY to another file)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"model registry {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise RegistryError(f"model registry {path} must be an object with a 'pairs' list")
    pairs: dict[str, PairSpec] = {}
    for index, item in enumerate(data["pairs"]):
        where = f"{path.name} pairs[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"].strip():
            raise RegistryError(f"{where} needs a non-empty string 'id'")
        pair_id = item["id"].strip()
        if pair_id in pairs:
            raise RegistryError(f"{where}: duplicate pair id {pair_id!r}")
        classes = item.get("classes") or []
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise RegistryError(f"{where}: 'classes' must be a list of names")
        pairs[pair_id] = PairSpec(
            id=pair_id, title=str(item.get("title") or pair_id),
            baseline=_parse_source(item.get("baseline"), f"{where}.baseline", path, home),
            ifa=_parse_source(item.get("ifa"), f"{where}.ifa", path, home),
            dataset=str(item.get("dataset") or ""), classes=tuple(classes))
    default = data.get("default")
    if default is not None and default not in pairs:
        raise RegistryError(f"{path.name}: default pair {default!r} is not among its pairs ({', '.join(pairs)})")
    if default is None and pairs:
        default = next(iter(pairs))
    return Registry(pairs, default, path, home, allow_local)


def _split_rev(text: str) -> tuple[str, str | None]:
    text = text.strip()
    if "@" in text:
        repo, rev = text.rsplit("@", 1)
        return repo.strip(), rev.strip() or None
    return text, None


def hub_pair(baseline_repo: str, ifa_repo: str, baseline_revision: str | None = None,
             ifa_revision: str | None = None, *, allow_local: bool | None = None, home: Path | None = None
             ) -> PairSpec:
    """A PairSpec for two Hub repo ids (optional revisions: branch, tag or commit sha); with `allow_local` (default
    local_pairs_allowed()) a name that is a folder of the app's `home` (default app_home()) is that local folder."""
    allow_local = local_pairs_allowed() if allow_local is None else allow_local
    home = home or app_home()
    baseline_repo, ifa_repo = (baseline_repo or "").strip(), (ifa_repo or "").strip()
    if not baseline_repo or not ifa_repo:
        missing = " and ".join(n for n, v in (("baseline", baseline_repo), ("IFA", ifa_repo)) if not v)
        raise PairError(f"a Hub pair needs two repo ids ('org/name'); the {missing} repo id is empty")
    b_rev = (baseline_revision or "").strip() or None
    i_rev = (ifa_revision or "").strip() or None
    sources = []
    for repo, rev in ((baseline_repo, b_rev), (ifa_repo, i_rev)):
        if allow_local and len(repo) <= 255 and (home / repo).is_dir() and rev is None:
            sources.append(ModelSource("local", str(home / repo), home=home))  # the operator allows local folders
            continue
        if (repo.count("/") != 1 or any(ch.isspace() for ch in repo) or repo.startswith(("/", ".", "~"))
                or len(repo) > MAX_REPO_ID):
            raise PairError(f"{shorten(repo)} is not a Hub repo id: expected 'org/name' (at most {MAX_REPO_ID} "
                            f"characters)")
        if rev is not None and len(rev) > 255:
            raise PairError(f"revision {shorten(rev)} is not a branch, tag or commit: too long")
        sources.append(ModelSource("hub", repo, rev))
    b_text = baseline_repo + (f"@{b_rev}" if b_rev else "")
    i_text = ifa_repo + (f"@{i_rev}" if i_rev else "")
    return PairSpec(id=f"{HUB_PREFIX}{b_text}|{i_text}", title=f"Hub: {b_text} vs {i_text}",
                    baseline=sources[0], ifa=sources[1])


def local_pairs_allowed() -> bool:
    """Whether pairs typed into the app may name local folders (relative to the project), as the environment says
    (`AppSettings.from_env().allow_local_pairs`): only when the operator sets IFA_APP_ALLOW_LOCAL_PAIRS=1, and never
    on a Hugging Face Space (SPACE_ID set)."""
    return AppSettings.from_env().allow_local_pairs


def parse_hub_pair_id(pair_id: str, *, allow_local: bool | None = None, home: Path | None = None) -> PairSpec:
    """'hub:org/a[@rev]|org/b[@rev]' -> PairSpec."""
    body = pair_id[len(HUB_PREFIX):]
    if body.count("|") != 1:
        raise PairError(f"a Hub pair id is '{HUB_PREFIX}org/baseline[@rev]|org/ifa[@rev]', got {shorten(pair_id)}")
    left, right = body.split("|")
    (b_repo, b_rev), (i_repo, i_rev) = _split_rev(left), _split_rev(right)
    return hub_pair(b_repo, i_repo, b_rev, i_rev, allow_local=allow_local, home=home)


def _load_one(source: ModelSource, role: str, max_weights_bytes: int) -> SegmentationModel:
    try:
        if source.source == "hub":  # a repo id, never a path of this machine; config checked before weights
            return load_hub_model(source.location, revision=source.revision, max_weights_bytes=max_weights_bytes)
        return load_model(Path(source.location))
    except (HubError, CheckpointError, ConfigError) as err:
        raise PairError(f"cannot load the {role} model from {source.describe()}: {err}") from None
    except (OSError, ValueError, RuntimeError) as err:
        raise PairError(f"cannot load the {role} model from {source.describe()}: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}") from None


def _card_folder(source: ModelSource) -> Path | None:
    """The folder (or cached Hub snapshot) of an already loaded model, where its card lies."""
    try:
        return (resolve_checkpoint(source.location, revision=source.revision) if source.source == "hub"
                else Path(source.location))
    except (HubError, OSError, ValueError):
        return None


def _recorded(source: ModelSource, read):
    """What `read` (an ifa.cards / ifa.domain reader of a checkpoint folder) finds in the model card of an already
    loaded model (its folder or cached Hub snapshot), or None."""
    folder = _card_folder(source)
    try:
        return read(folder) if folder is not None else None
    except (OSError, ValueError):
        return None


def ifa_resolution_record(spec: PairSpec, pair: LoadedPair | None = None) -> dict | None:
    """The pair's IFA model's val mIoU on its stride-4 grid and at every pixel, and the better ("best"), as its card
    records them (ifa.cards.resolution_record): the loaded `pair`'s, else read from a local folder's card (a Hub
    repo's card is read when its pair loads: nothing is downloaded here); None when not known."""
    if pair is not None:
        return pair.ifa_resolution
    return _recorded(spec.ifa, resolution_record) if spec.ifa.source == "local" else None


def check_pair(spec: PairSpec, baseline: SegmentationModel, ifa: SegmentationModel) -> list[str]:
    """Raise PairError when the two models cannot be compared; return notes about harmless differences."""
    notes = []
    if ifa.config.architecture != "ifa":
        raise PairError(f"the IFA slot ({spec.ifa.describe()}) holds a '{ifa.config.architecture}' model; "
                        f"it needs an FPN + IFA model (architecture 'ifa')")
    if baseline.config.architecture != "fpn":
        notes.append(f"the baseline is a '{baseline.config.architecture}' model, not Semantic FPN")
    b_names, i_names = list(baseline.config.class_names), list(ifa.config.class_names)
    if baseline.config.num_classes != ifa.config.num_classes:
        raise PairError(f"the two models disagree on classes: the baseline predicts {baseline.config.num_classes} "
                        f"classes, the IFA model {ifa.config.num_classes}")
    if b_names != i_names:
        diff = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(b_names, i_names)) if a != b]
        raise PairError(f"the two models disagree on classes ({'; '.join(diff[:4])}"
                        f"{'...' if len(diff) > 4 else ''})")
    if spec.classes and list(spec.classes) != i_names:
        raise PairError(f"pair {spec.id!r}: the registry lists classes {list(spec.classes)} but the models "
                        f"have {i_names}")
    if [list(c) for c in baseline.config.palette] != [list(c) for c in ifa.config.palette]:
        notes.append("the two models have different palettes; the IFA model's is used")
    return notes


class PairCache:
    """Loads model pairs once and keeps the `capacity` most recently used ones (thread-safe); Hub weights larger
    than `max_weights_bytes` (IFA_APP_MAX_WEIGHTS_MB) are refused before their download."""

    def __init__(self, device: torch.device | str | None = None, capacity: int = 2,
                 max_weights_bytes: int = DEFAULT_MAX_WEIGHTS_MB * 2 ** 20):
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.capacity = max(1, capacity)
        self.max_weights_bytes = max_weights_bytes
        self._pairs: OrderedDict[str, LoadedPair] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, pair_id: str) -> bool:
        return pair_id in self._pairs

    def peek(self, pair_id: str) -> LoadedPair | None:
        """The loaded pair, or None when it is not loaded (nothing is loaded, the order of eviction unchanged)."""
        return self._pairs.get(pair_id)

    def get(self, spec: PairSpec) -> LoadedPair:
        with self._lock:
            if spec.id in self._pairs:
                self._pairs.move_to_end(spec.id)
                return self._pairs[spec.id]
            start = time.perf_counter()
            baseline = _load_one(spec.baseline, "baseline", self.max_weights_bytes)
            ifa = _load_one(spec.ifa, "IFA", self.max_weights_bytes)
            notes = check_pair(spec, baseline, ifa)
            # inference only: BatchNorm folded into the convolutions (0.7x the fp32 time of the shipped models)
            baseline, ifa = (m.to(self.device).fold_batchnorm() for m in (baseline, ifa))
            pair = LoadedPair(spec, baseline, ifa, self.device,
                              time.perf_counter() - start, notes, _recorded(spec.ifa, offset_ablation),
                              {role: _recorded(src, domain_reference) for role, src in
                               (("baseline", spec.baseline), ("ifa", spec.ifa))},
                              _recorded(spec.ifa, resolution_record))
            self._pairs[spec.id] = pair
            while len(self._pairs) > self.capacity:
                self._pairs.popitem(last=False)
            return pair
