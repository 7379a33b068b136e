"""A resumable cache of predicted label maps, keyed by model identity + image + inference options.

Layout on disk (one folder per model and set of options, one file per image)::

    ROOT/<model sha256[:16]>/<options hash[:16]>/entry.json    the model identity and the options
                                                /<image key>.npz  labels (H, W) uint8 (uint16 if K > 255)

- The model identity is the sha256 of its config.json + model.safetensors (plus the Hub commit
  when it came from the Hub), so the same weights share entries whatever path or repo they came by.
- The image key is the sha256 of the image file's bytes (:func:`file_key`) or of a decoded array
  (:func:`array_key`).
- Every file is written atomically, so an interrupted run leaves only whole entries behind and the
  next run computes just what is missing. Shards (``--shard i/n`` or ``torchrun`` ranks) share one
  root on a shared disk, or use their own roots that ``merge`` then combines::

      python -m ifa.prediction_cache merge DEST SRC [SRC ...]

``root=None`` keeps entries in memory only (no disk), e.g. for the app.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .inference import autocast_dtype, class_argmax
from .io import CONFIG_NAME, WEIGHTS_NAME, atomic_write
from .models.checkpoint import CheckpointError, read_config

ENTRY_NAME = "entry.json"


def default_cache_root() -> Path:
    """$IFA_CACHE, else $XDG_CACHE_HOME/ifa/predictions (~/.cache/ifa/predictions)."""
    if os.environ.get("IFA_CACHE"):
        return Path(os.environ["IFA_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ifa" / "predictions"


# --- identities and keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """What makes a model's predictions what they are, as recorded in caches and figure manifests."""

    spec: str  # as given: a checkpoint folder or a Hub repo id
    revision: str | None  # the Hub commit sha it resolved to; None for a local folder
    sha256: str  # of config.json followed by model.safetensors
    architecture: str
    backbone: str
    num_classes: int

    def to_dict(self) -> dict:
        return asdict(self)


def hash_files(paths: Iterable[str | Path], chunk: int = 1 << 20) -> str:
    """sha256 hex digest of the files' bytes, one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def identify_model(spec: str | Path, revision: str | None = None) -> tuple[Path, ModelIdentity]:
    """(local checkpoint folder, identity) of a checkpoint folder or Hub repo id (downloaded if needed)."""
    from .hub import resolve_checkpoint

    folder = resolve_checkpoint(spec, revision)
    local = revision is None and Path(str(spec)).expanduser().exists()
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    identity = ModelIdentity(spec=str(spec), revision=None if local else folder.name,
                             sha256=hash_files([folder / CONFIG_NAME, weights]),
                             architecture=config.architecture, backbone=config.backbone,
                             num_classes=config.num_classes)
    return folder, identity


def file_key(path: str | Path) -> str:
    """Cache key of an image file: sha256 of its bytes (32 hex digits)."""
    return hash_files([path])[:32]


def array_key(array: np.ndarray) -> str:
    """Cache key of a decoded image array: sha256 of its dtype, shape and bytes (32 hex digits)."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def options_key(options: dict) -> str:
    """sha256 of the options as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def effective_precision(device: torch.device | str, precision: str) -> str:
    """The precision a Predictor really runs at (ifa.inference.autocast_dtype): fp32, fp16 or bf16."""
    dtype = autocast_dtype(torch.device(device), precision)
    return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


# --- the cache ------------------------------------------------------------------------------------


class PredictionCache:
    """Label maps of one model under one set of inference options, by image key."""

    def __init__(self, root: str | Path | None, model: ModelIdentity, options: dict):
        self.model = model
        self.options = dict(options)
        self.root = Path(root).expanduser() if root is not None else None
        self.path = (self.root / model.sha256[:16] / options_key(self.options)[:16]) if self.root else None
        self._memory: dict[str, np.ndarray] = {}

    def _file(self, key: str) -> Path:
        return self.path / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return key in self._memory if self.path is None else self._file(key).is_file()

    def get(self, key: str) -> np.ndarray | None:
        """The cached labels (H, W) int64, or None when missing or unreadable (then recomputed)."""
        if self.path is None:
            labels = self._memory.get(key)
            return None if labels is None else labels.astype(np.int64)
        try:
            with np.load(self._file(key)) as data:
                return data["labels"].astype(np.int64)
        except (OSError, KeyError, ValueError, EOFError):
            return None

    def put(self, key: str, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        stored = labels.astype(np.uint8 if self.model.num_classes <= 255 else np.uint16)
        if self.path is None:
            self._memory[key] = stored
            return
        if not (self.path / ENTRY_NAME).is_file():
            entry = json.dumps({"model": self.model.to_dict(), "options": self.options}, indent=2, sort_keys=True)
            atomic_write(self.path / ENTRY_NAME, lambda p: Path(p).write_text(entry + "\n"))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=stored)
        atomic_write(self._file(key), lambda p: Path(p).write_bytes(buffer.getvalue()))

    def keys(self) -> list[str]:
        if self.path is None:
            return sorted(self._memory)
        return sorted(p.stem for p in self.path.glob("*.npz")) if self.path.is_dir() else []


# --- computing what is missing ----------------------------------------------------------------------


@dataclass
class CacheItem:
    """One image to predict: its cache key and how to load it as uint8 (H, W, 3) RGB."""

    key: str
    load: Callable[[], np.ndarray]


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; ValueError otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return index, count


def predict_to_cache(predictor, cache: PredictionCache, items: Sequence[CacheItem], batch_size: int = 1,
                     shard: tuple[int, int] = (0, 1), progress: bool = True, desc: str = "predict") -> int:
    """Predict the items of this shard (items[i::n]) that the cache lacks; returns how many were computed.

    Consecutive images of the same size are batched (up to batch_size) through
    ``predictor.probabilities``; each label map is stored as soon as its batch is done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    index, count = shard
    todo = [item for item in list(items)[index::count] if item.key not in cache]
    batch: list[tuple[str, np.ndarray]] = []

    def flush():
        x = torch.cat([predictor.preprocess(image) for _, image in batch])
        labels = class_argmax(predictor.probabilities(x), 1).cpu().numpy()
        for (key, _), label in zip(batch, labels):
            cache.put(key, label)
        bar.update(len(batch))
        batch.clear()

    with tqdm(total=len(todo), desc=desc, disable=not progress or not todo, leave=False) as bar:
        for item in todo:
            image = item.load()
            if batch and (image.shape != batch[0][1].shape or len(batch) >= batch_size):
                flush()
            batch.append((item.key, image))
        if batch:
            flush()
    return len(todo)


# --- merging shard caches ------------------------------------------------------------------------------


def merge_caches(dest: str | Path, sources: Iterable[str | Path]) -> dict[str, int]:
    """Copy every entry of the source cache roots that dest lacks; returns {"copied": n, "present": m}.

    ValueError when a source is not a cache root, or when a folder's entry.json disagrees with dest's.
    """
    dest = Path(dest).expanduser()
    copied = present = 0
    for source in sources:
        source = Path(source).expanduser()
        entries = sorted(source.glob(f"*/*/{ENTRY_NAME}"))
        if not source.is_dir() or not entries:
            raise ValueError(f"{source} is not a prediction cache (no */*/{ENTRY_NAME} under it)")
        for entry in entries:
            folder = entry.parent
            target = dest / folder.relative_to(source)
            target_entry = target / ENTRY_NAME
            if target_entry.is_file():
                if json.loads(target_entry.read_text()) != json.loads(entry.read_text()):
                    raise ValueError(f"{entry} and {target_entry} describe different models or options")
            else:
                text = entry.read_text()
                atomic_write(target_entry, lambda p, text=text: Path(p).write_text(text))
            for file in sorted(folder.glob("*.npz")):
                if (target / file.name).is_file():
                    present += 1
                    continue
                atomic_write(target / file.name, lambda p, file=file: shutil.copyfile(file, p))
                copied += 1
    return {"copied": copied, "present": present}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifa.prediction_cache",
                                description="Maintain prediction caches written by python -m ifa.figures.")
    sub = p.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="copy the entries of shard caches into one cache root")
    merge.add_argument("dest", help="the cache root to merge into (created if missing)")
    merge.add_argument("sources", nargs="+", help="cache roots written by shards")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = merge_caches(args.dest, args.sources)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged into {args.dest}: {counts['copied']} entries copied, {counts['present']} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
