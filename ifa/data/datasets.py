"""Segmentation datasets in their standard on-disk layouts.

Every dataset yields (image uint8 (H, W, 3) RGB numpy, label uint8 (H, W) numpy) with the train ids
of its class set and 255 for ignored pixels, and knows its `info` (class names, palette). Its labels
are decoded through its label set (:mod:`ifa.data.label_sets`), into another class set when asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .classes import DatasetInfo, get_dataset_info
from .label_sets import apply_lut, get_label_set, label_lut

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset root or split that does not have the expected layout."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_label(path: str | Path) -> np.ndarray:
    """A single-channel label PNG as (H, W) integer array (values as stored)."""
    with Image.open(path) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise DatasetError(f"{path}: labels must be single-channel, got mode {img.mode}")
        return np.asarray(img).astype(np.int64)


class SegmentationDataset:
    """A list of (image path, label path) pairs whose labels are stored in `label_set`
    (:mod:`ifa.data.label_sets`), decoded to the train ids of `classes` (255 = ignore).

    `classes` defaults to the label set's own class set; another one (e.g. "camvid" for KITTI's
    Cityscapes labels) scores a model of that class set through the written mapping.
    """

    name = ""
    label_set = ""

    def __init__(self, root: str | Path, split: str, classes: str | None = None):
        self.root = Path(root)
        self.split = split
        classes = classes or get_label_set(self.label_set).classes
        self.lut = label_lut(self.label_set, classes)
        if self.lut is None:
            raise DatasetError(f"{self.name} labels ({get_label_set(self.label_set).title}) have no mapping to "
                               f"{classes} classes")
        self.info: DatasetInfo = get_dataset_info(classes)
        if not self.root.is_dir():
            raise DatasetError(f"{self.name} root {self.root} does not exist")
        self.pairs = self._find_pairs()
        if not self.pairs:
            raise DatasetError(f"{self.name}: no images for split {split!r} under {self.root} "
                               f"(expected {self.layout_hint()})")

    def _find_pairs(self) -> list[tuple[Path, Path]]:
        raise NotImplementedError

    def layout_hint(self) -> str:
        raise NotImplementedError

    def map_label(self, raw: np.ndarray) -> np.ndarray:
        """Stored label values -> uint8 train ids of `info` with 255 for ignored pixels."""
        return apply_lut(self.lut, raw)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, label_path = self.pairs[index]
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image {image_path} is "
                               f"{image.shape[1]}x{image.shape[0]} (width x height)")
        return image, self.map_label(label).astype(np.uint8)

    def image_name(self, index: int) -> str:
        return self.pairs[index][0].name


class InMemory:
    """A dataset decoded once: `dataset[i]` for every i kept as numpy arrays (same items, same order)."""

    def __init__(self, dataset):
        self.info = dataset.info
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.items[index]

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes + label.nbytes for image, label in self.items)


def decoded_bytes_estimate(dataset, probe: int = 4) -> int:
    """Bytes that `InMemory(dataset)` would hold, extrapolated from its first `probe` items."""
    n = min(probe, len(dataset))
    sample = sum(image.nbytes + label.nbytes for image, label in (dataset[i] for i in range(n)))
    return sample * len(dataset) // max(n, 1)


def _require_dir(path: Path, what: str, hint: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: {path} does not exist (expected {hint})")
    return path


def _pair_by_name(images: Path, labels: Path, label_name) -> list[tuple[Path, Path]]:
    pairs = []
    for image in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        label = labels / image.relative_to(images).parent / label_name(image.name)
        if not label.is_file():
            raise DatasetError(f"label {label} for image {image} is missing")
        pairs.append((image, label))
    return pairs


class CamVid(SegmentationDataset):
    """SegNet CamVid: {split}/NAME.png with {split}annot/NAME.png; class 11 (Unlabelled) ignored."""

    name = "camvid"
    label_set = "camvid"

    def layout_hint(self) -> str:
        return f"{self.split}/*.png and {self.split}annot/*.png"

    def _find_pairs(self):
        hint = self.layout_hint()
        images = _require_dir(self.root / self.split, f"camvid split {self.split!r}", hint)
        labels = _require_dir(self.root / f"{self.split}annot", f"camvid split {self.split!r} labels", hint)
        return _pair_by_name(images, labels, lambda name: name)



class Cityscapes(SegmentationDataset):
    """leftImg8bit/{split}/CITY/*_leftImg8bit.png with gtFine/{split}/CITY/*_gtFine_labelIds.png."""

    name = "cityscapes"
    label_set = "cityscapes_labelids"

    def layout_hint(self) -> str:
        return f"leftImg8bit/{self.split}/CITY/*_leftImg8bit.png and gtFine/{self.split}/CITY/*_gtFine_labelIds.png"

    def _find_pairs(self):
        hint = self.layout_hint()
        images = _require_dir(self.root / "leftImg8bit" / self.split, f"cityscapes split {self.split!r}", hint)
        labels = _require_dir(self.root / "gtFine" / self.split, f"cityscapes split {self.split!r} labels", hint)
        return _pair_by_name(images, labels, lambda n: n.replace("_leftImg8bit", "_gtFine_labelIds"))



class ADE20K(SegmentationDataset):
    """ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/.../*.png; 0 ignored, shifted by -1."""

    name = "ade20k"
    label_set = "ade20k"
    SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

    def layout_hint(self) -> str:
        return "ADEChallengeData2016 with images/{training,validation}/*.jpg and annotations/.../*.png"

    def _find_pairs(self):
        if self.split not in self.SPLITS:
            raise DatasetError(f"ade20k split must be one of {sorted(self.SPLITS)}, got {self.split!r}")
        root = self.root / "ADEChallengeData2016" if (self.root / "ADEChallengeData2016").is_dir() else self.root
        sub = self.SPLITS[self.split]
        images = _require_dir(root / "images" / sub, f"ade20k split {self.split!r}", self.layout_hint())
        labels = _require_dir(root / "annotations" / sub, f"ade20k split {self.split!r} labels", self.layout_hint())
        return _pair_by_name(images, labels, lambda n: Path(n).with_suffix(".png").name)



class PascalContext(SegmentationDataset):
    """Prepared PASCAL Context: JPEGImages/*.jpg, SegmentationClassContext/*.png (0 = background),
    ImageSets/SegmentationContext/{train,val}.txt. 59 classes: background ignored, ids shifted by -1."""

    name = "pascal_context"
    label_set = "pascal_context"

    def layout_hint(self) -> str:
        return ("VOC2010 layout: JPEGImages/, SegmentationClassContext/ and "
                f"ImageSets/SegmentationContext/{self.split}.txt")

    def _find_pairs(self):
        root = self.root / "VOC2010" if (self.root / "VOC2010").is_dir() else self.root
        split_file = root / "ImageSets" / "SegmentationContext" / f"{self.split}.txt"
        if not split_file.is_file():
            raise DatasetError(f"pascal_context split file {split_file} is missing (expected {self.layout_hint()})")
        images = _require_dir(root / "JPEGImages", "pascal_context images", self.layout_hint())
        labels = _require_dir(root / "SegmentationClassContext", "pascal_context labels", self.layout_hint())
        pairs = []
        for stem in split_file.read_text().split():
            image, label = images / f"{stem}.jpg", labels / f"{stem}.png"
            for path in (image, label):
                if not path.is_file():
                    raise DatasetError(f"pascal_context: {path} listed in {split_file.name} is missing")
            pairs.append((image, label))
        return pairs



class PascalContext60(PascalContext):
    """PASCAL Context with background as class 0 (60 classes)."""

    name = "pascal_context_60"
    label_set = "pascal_context_60"



class Kitti(SegmentationDataset):
    """KITTI semantic segmentation: image_2/*.png with semantic/*.png in Cityscapes labelIds.

    The benchmark's `training/` folder (or a folder holding image_2/ and semantic/ directly) is the
    root; `split` picks `ROOT/<split>/` when that folder exists, else it is not used (no split folders).
    """

    name = "kitti"
    label_set = "cityscapes_labelids"

    def layout_hint(self) -> str:
        return "image_2/*.png and semantic/*.png (Cityscapes labelIds), optionally under <split>/"

    def _find_pairs(self):
        root = self.root / self.split if (self.root / self.split / "image_2").is_dir() else self.root
        images = _require_dir(root / "image_2", "kitti images", self.layout_hint())
        labels = _require_dir(root / "semantic", "kitti labels", self.layout_hint())
        return _pair_by_name(images, labels, lambda name: name)


DATASET_CLASSES = {cls.name: cls for cls in (CamVid, Cityscapes, ADE20K, PascalContext, PascalContext60, Kitti)}


def build_dataset(name: str, root: str | Path, split: str, classes: str | None = None) -> SegmentationDataset:
    """Dataset `name` at `root`; `classes` scores its labels in another class set (see SegmentationDataset)."""
    if name not in DATASET_CLASSES:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_CLASSES)}")
    return DATASET_CLASSES[name](root, split, classes)
