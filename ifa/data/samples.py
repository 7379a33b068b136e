"""Sample manifests: a list of images with their labels, label sets and attribution, as JSON.

    {"samples": [{"name": "...", "image": "samples/x.jpg", "label": "samples/x.png", "label_set": "camvid",
                  "dataset": "CamVid", "source": "...", "licence": "..."}]}

Paths are relative to the manifest's folder (or absolute); "label" is optional (a single-channel PNG),
"label_set" names its format (ifa.data.label_sets; "" = the model's class indices), "dataset", "source"
and "licence" are shown with the sample. The app's gallery (assets/samples.json) and `ifa.figures --samples`
read this format; `write_manifest` writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import DATASETS, get_dataset_info
from .label_sets import LABEL_SETS, apply_lut, scoring_lut


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    label: Path | None = None
    dataset: str = ""  # where the image comes from, as shown (e.g. "KITTI")
    label_set: str = ""  # the label file's format (ifa.data.label_sets); "" = the pair's class indices
    source: str = ""  # attribution
    licence: str = ""
    origin: str = "manifest"  # or "folder" (IFA_SAMPLES_DIR) or "dataset" (IFA_APP_DATASET)

    def scorable(self, classes: str, num_classes: int | None = None) -> bool:
        """Whether its label can be scored against a pair of class set `classes` (own set or a mapping) with
        `num_classes` outputs (default: the named set's; an unnamed set of unknown size is given the benefit)."""
        if self.label is None:
            return False
        if num_classes is None:
            if classes not in DATASETS:
                return True
            num_classes = get_dataset_info(classes).num_classes
        return self.label_mapper(classes, num_classes) is not None

    def summary(self) -> dict:
        return {"name": self.name, "dataset": self.dataset, "has_label": self.label is not None,
                "label_set": self.label_set, "source": self.source, "licence": self.licence}

    def describe(self) -> str:
        """One markdown line: dataset, label format, source, licence."""
        parts = [f"**{self.name}**"]
        if self.dataset:
            parts.append(self.dataset)
        if self.label is not None:
            parts.append(f"label: {LABEL_SETS[self.label_set].title if self.label_set else 'class indices'}")
        if self.source:
            parts.append(f"source: {self.source}")
        if self.licence:
            parts.append(f"licence: {self.licence}")
        return " · ".join(parts)

    def label_mapper(self, classes: str, num_classes: int):
        """A function: stored label values -> train ids of `classes` (255 = ignored), or None when they cannot be
        scored; the rule of uploaded labels (ifa.data.label_sets.scoring_lut)."""
        try:
            lut, _ = scoring_lut(self.label_set, classes, num_classes)
        except ValueError:
            return None
        if lut is None:
            return lambda raw: np.where((raw < 0) | (raw >= num_classes), 255, raw)
        return lambda raw: apply_lut(lut, raw)


def read_manifest(path: str | os.PathLike, origin: str = "manifest") -> list[Sample]:
    """Samples listed in the manifest whose image exists (missing files are skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    samples = []
    for item in data.get("samples", []) if isinstance(data, dict) else []:
        if not isinstance(item, dict) or not isinstance(item.get("image"), str):
            continue
        image = (path.parent / item["image"]).resolve()
        label = (path.parent / item["label"]).resolve() if isinstance(item.get("label"), str) else None
        if not image.is_file():
            continue
        label_set = str(item.get("label_set") or "")
        samples.append(Sample(str(item.get("name") or image.name), image,
                              label if label is not None and label.is_file() else None,
                              str(item.get("dataset") or ""), label_set if label_set in LABEL_SETS else "",
                              str(item.get("source") or ""), str(item.get("licence") or ""), origin))
    return samples


def write_manifest(samples: list[Sample], path: str | os.PathLike, about: str = "") -> Path:
    """The samples as a manifest at `path`, paths relative to its folder where they lie below it."""
    path = Path(path)
    folder = path.parent.resolve()

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        p = Path(p).resolve()
        return p.relative_to(folder).as_posix() if p.is_relative_to(folder) else str(p)

    items = [{k: v for k, v in {"name": s.name, "image": rel(s.image), "label": rel(s.label), "label_set": s.label_set,
                                "dataset": s.dataset, "source": s.source, "licence": s.licence}.items() if v}
             for s in samples]
    path.write_text(json.dumps({"about": about, "samples": items} if about else {"samples": items}, indent=2) + "\n")
    return path
