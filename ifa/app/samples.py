"""Sample images for the app: a manifest shipped in assets/ plus a folder named by IFA_SAMPLES_DIR.

assets/samples.json of the app's home (or IFA_SAMPLES_MANIFEST), in ifa.data.samples' manifest format. The app
passes its settings (`list_samples(settings)`); a function called without its argument reads the environment
through `AppSettings.from_env()`.

IFA_SAMPLES_DIR: every image in that folder (sorted by name); its label, when a sibling folder
"<folder name>annot" holds a file of the same name (the CamVid / SegNet layout, e.g.
camvid/val + camvid/valannot). Samples from that folder are named "<folder name>/<file name>"; their
label set is the dataset folder's name when it is one (e.g. camvid), else the pair's.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from ..data.label_sets import LABEL_SETS
from ..data.samples import Sample, read_manifest
from .settings import AppSettings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def manifest_path() -> Path:
    """IFA_SAMPLES_MANIFEST when set, else assets/samples.json of the app's home (AppSettings.samples_manifest)."""
    return AppSettings.from_env().samples_manifest


def manifest_samples(path: Path | None = None) -> list[Sample]:
    """Samples listed in the manifest (default: manifest_path()) whose image exists."""
    return read_manifest(path or manifest_path())


def folder_samples(folder: str | os.PathLike | None = None) -> list[Sample]:
    """Images of IFA_SAMPLES_DIR (or `folder`), with labels from a sibling '<name>annot' folder."""
    folder = folder if folder is not None else AppSettings.from_env().samples_dir
    if not folder:
        return []
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        return []
    annot = root.parent / f"{root.name}annot"
    samples = []
    for image in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        label = annot / image.name
        label_set = root.parent.name.lower()
        samples.append(Sample(f"{root.name}/{image.name}", image, label if label.is_file() else None,
                              root.parent.name, label_set if label_set in LABEL_SETS else "", origin="folder"))
    return samples


def dataset_samples(spec: str | None = None) -> list[Sample]:
    """The images of a dataset split named by IFA_APP_DATASET (or `spec`): "NAME:ROOT[:SPLIT]", e.g.
    "camvid:../shared/data/camvid:val" or "kitti:../shared/data/samples/kitti", read with ifa.data.datasets;
    named "NAME/SPLIT/<file name>". For the dataset view; not shown in the gallery."""
    spec = spec if spec is not None else AppSettings.from_env().dataset
    if not spec:
        return []
    from ..data.datasets import build_dataset

    name, root, *rest = spec.split(":") + [""]
    split = rest[0] or "val"
    dataset = build_dataset(name, root, split)  # a DatasetError names what is wrong
    return [Sample(f"{name}/{split}/{image.name}", image, label, name, dataset.label_set, origin="dataset")
            for image, label in dataset.pairs]


def list_samples(settings: AppSettings | None = None) -> list[Sample]:
    """Manifest samples first, then the folder's, then the dataset's, as `settings` (default: the environment's)
    name them; names are unique (later duplicates dropped)."""
    settings = settings or AppSettings.from_env()
    seen, out = set(), []
    for sample in (manifest_samples(settings.samples_manifest) + folder_samples(settings.samples_dir or "")
                   + dataset_samples(settings.dataset)):
        if sample.name not in seen:
            seen.add(sample.name)
            out.append(sample)
    return out


def thumbnail(sample: Sample, cache_dir: Path, width: int = 160) -> str | None:
    """A small JPEG of the sample in `cache_dir` (the app's temp folder; cached by path and mtime); None if
    unreadable."""
    try:
        stat = sample.image.stat()
        key = hashlib.sha1(f"{sample.image}:{stat.st_mtime_ns}:{stat.st_size}:{width}".encode()).hexdigest()[:16]
        out = cache_dir / f"{key}.jpg"
        if not out.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            with Image.open(sample.image) as img:
                img.draft("RGB", (width, width))
                img = img.convert("RGB")
                img.thumbnail((width, width * 4), Image.Resampling.BILINEAR)
                tmp = out.with_suffix(".tmp.jpg")
                img.save(tmp, quality=85)
                os.replace(tmp, out)
        return str(out)
    except Exception:  # noqa: BLE001 - a broken sample simply gets no thumbnail
        return None
