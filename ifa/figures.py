"""Qualitative figures and boundary analysis: rows of input | FPN baseline | FPN + IFA | ground truth.

python -m ifa.figures --baseline M1 --ifa M2 (--images DIR [--labels DIR] | --dataset D --root R --split S
                      | --samples FILE.json)
                      --out FILE.pdf|.png|.svg [--rows N] [--select best|worst|random|list FILE] [--boxes K]
                      [--insets] [--boundary] [--cache DIR | --no-cache] [--shard i/n] ...
python -m ifa.figures --from-manifest STEM.manifest.json [--out FILE]

Both models run on every candidate image (any device, batched, progress bar); predictions go to a
resumable cache (ifa.prediction_cache), so a second run recomputes nothing. `--shard i/n` (or the
ranks of `torchrun`) predicts one slice of the images and stops; a run without --shard is the merge
step that scores, selects and draws. Rows are by default the images where IFA gains most over the
baseline in per-image mIoU (largest disagreement when there is no ground truth), skipping images that
look like an already chosen row (`--max-similarity`, default 0.9: neighbouring video frames; 1 = off). Each row gets
yellow squares around its K largest difference regions (ifa.compare.difference_regions, the
same logic as the app).

Outputs beside FILE: STEM.manifest.json (models with revision and file hash, images, options,
per-image scores, boxes; `--from-manifest` redraws the same figure from it) and, with --boundary,
STEM.boundary.EXT (accuracy / mIoU versus distance to ground-truth boundaries) + STEM.boundary.json.

Function API: `draw_figure(models, items, out, FigureOptions(...))` draws a figure and writes its manifest from
models in memory (or a loaded pair) and `Item`s (folder_items, samples_items, dataset_items, `ItemSource.items`); the
command line (`run`) and the app's figure export both call its steps. Parts: make_row, build_figure, render_to_file,
image_scores (scores and boundary bands: ifa.compare).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from .compare import IFA_FIXED, MODELS, DifferenceRegion, boundary_bands, difference_regions, pair_scores
from .data.datasets import IMAGE_SUFFIXES, DatasetError, build_dataset, read_label
from .data.images import load_image, resize_label
from .data.samples import read_manifest
from .metrics import DEFAULT_TRIMAP_WIDTHS
from .prediction_cache import (
    CacheItem,
    ModelIdentity,
    PredictionCache,
    default_cache_root,
    effective_precision,
    file_key,
    identify_model,
    parse_shard,
    predict_to_cache,
)
from .viz.figure import FORMATS, PanelRow, columns, figure_bytes, grid_figure, pixel_size, square_box

if TYPE_CHECKING:
    import torch

MANIFEST_FORMAT = "ifa-figures/1"
SELECT_MODES = ("best", "worst", "random", "list")
# Options naming files: a manifest records them relative to its own folder when they lie below it (listed under
# "relative_to_manifest"), so that a bundle (manifest, figure, samples, row list) redraws wherever it is unpacked.
PATH_OPTIONS = ("images", "labels", "samples", "root")
# argparse destinations that a manifest records and --from-manifest restores.
OPTIONS = ("images", "labels", "dataset", "root", "split", "limit", "max_side", "rows", "select", "seed", "boxes",
           "min_area", "fixed_only", "max_box", "box_pad", "insets", "no_titles", "no_legend", "no_row_labels",
           "panel_width", "dpi", "boundary", "boundary_widths", "boundary_images", "precision", "mode", "window",
           "scales", "flip", "ifa_resolution", "batch_size", "max_similarity", "samples")
# Row diversity: a candidate row is skipped when its image looks like an already chosen one (cosine similarity of
# mean-removed 32x24 grayscale thumbnails above this). On CamVid val, frames 2 apart score 0.99 on average, 20
# apart 0.90, 100 apart 0.63: 0.9 keeps a drive's rows roughly 20 frames or more apart.
DEFAULT_MAX_SIMILARITY = 0.9


# --- rows, figures, scores: the function API ---------------------------------------------------------


def select_regions(baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray | None = None, boxes: int = 3,
                   min_area: int = 64, fixed_only: bool = False, max_box: float = 0.5) -> list[DifferenceRegion]:
    """The `boxes` largest difference regions (ifa.compare.difference_regions) whose bounding box is at
    most `max_box` times the image's shorter side; only those that IFA fixed (verdict IFA_FIXED) when
    fixed_only and there is ground truth."""
    regions = difference_regions(baseline, ifa, gt, min_area=min_area)
    if fixed_only and gt is not None:
        regions = [r for r in regions if r.verdict == IFA_FIXED]
    if max_box < 1.0:
        limit = max_box * min(baseline.shape)
        regions = [r for r in regions if max(r.box[2] - r.box[0], r.box[3] - r.box[1]) <= limit]
    return regions[:boxes]


def make_row(name: str, image: np.ndarray, baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray | None = None, *,
             boxes: int = 3, min_area: int = 64, fixed_only: bool = False, max_box: float = 0.5, box_pad: int = 4,
             label: str = "") -> PanelRow:
    """One figure row with yellow squares around the top `boxes` difference regions.

    image (H, W, 3) uint8; baseline / ifa / gt (H, W) class indices (gt 255 = ignored, or None).
    """
    _, squares = boxed_regions(baseline, ifa, gt, boxes, min_area, fixed_only, max_box, box_pad)
    return PanelRow(name=name, image=image, baseline=baseline, ifa=ifa, gt=gt, label=label, boxes=squares)


def boxed_regions(baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray | None, boxes: int, min_area: int,
                  fixed_only: bool, max_box: float, box_pad: int) -> tuple[list, list[tuple[int, int, int, int]]]:
    """The regions a row draws (`select_regions`) and their yellow squares (top, left, bottom, right)."""
    regions = select_regions(baseline, ifa, gt, boxes, min_area, fixed_only, max_box)
    return regions, [square_box(r.box, baseline.shape, pad=box_pad) for r in regions]


def build_figure(rows: Sequence[PanelRow], class_names: Sequence[str], palette, *, column_titles: bool = True,
                 legend: bool = True, row_labels: bool = True, insets: bool = False,
                 panel_width: float = 1.8) -> Figure:
    """The grid figure of ifa.viz.figure.grid_figure for these rows."""
    return grid_figure(rows, palette, class_names, column_titles=column_titles, legend=legend, row_labels=row_labels,
                       insets=insets, panel_width=panel_width)


def render_to_file(rows_or_figure: Sequence[PanelRow] | Figure, path: str | Path, class_names=None, palette=None,
                   dpi: float = 300, **layout) -> Path:
    """Write the figure (built from rows, or given) to path (.pdf, .png or .svg), atomically."""
    from .io import atomic_write

    fig = (rows_or_figure if isinstance(rows_or_figure, Figure)
           else build_figure(rows_or_figure, class_names, palette, **layout))
    path = Path(path)
    data = figure_bytes(fig, path.suffix, dpi)
    atomic_write(path, lambda p: Path(p).write_bytes(data))
    return path


def image_scores(baseline: np.ndarray, ifa: np.ndarray, gt: np.ndarray | None, num_classes: int,
                 ignore_index: int = 255) -> dict:
    """Per-image scores in percent: disagreement (share of pixels where the maps differ) and, with
    ground truth, each model's mIoU over the ground truth's classes / aAcc (ifa.compare.pair_scores) and the gain
    (IFA minus baseline mIoU); None if undefined."""
    scores = {"disagreement": 100.0 * float(np.mean(baseline != ifa))}
    if gt is None:
        return scores
    both = pair_scores(baseline, ifa, gt, [str(c) for c in range(num_classes)], ignore_index)
    for role, summary in both.items():
        scores[f"{role}_mIoU"] = None if math.isnan(summary["mIoU"]) else summary["mIoU"]
        scores[f"{role}_aAcc"] = None if math.isnan(summary["aAcc"]) else summary["aAcc"]
    b, i = scores["baseline_mIoU"], scores["ifa_mIoU"]
    scores["gain"] = None if b is None or i is None else i - b
    return scores


def score_label(scores: dict) -> str:
    if scores.get("gain") is not None:
        return f"mIoU {scores['baseline_mIoU']:.1f} \u2192 {scores['ifa_mIoU']:.1f}"
    return f"differ {scores['disagreement']:.1f}%"


def image_descriptor(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) image as a unit vector (768,): its 32x24 grayscale thumbnail, mean removed."""
    small = Image.fromarray(image).convert("L").resize((32, 24), Image.Resampling.BILINEAR)
    v = np.asarray(small, dtype=np.float64).ravel()
    v -= v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def select_images(names: Sequence[str], scores: dict[str, dict], mode: str, rows: int, seed: int = 0,
                  max_similarity: float = 1.0, descriptor: Callable[[str], np.ndarray] | None = None) -> list[str]:
    """Row images: 'best' = largest gain (largest disagreement without ground truth), 'worst' = the
    opposite, 'random' = a seeded draw; ties by name. Images without a score come last.

    Diversity: with `descriptor` (name -> image_descriptor) and `max_similarity` < 1, a candidate more similar
    than that to an already chosen row is skipped (neighbouring frames of a video), in ranking order; when
    fewer than `rows` images pass, the best skipped ones fill the figure."""
    if mode == "random":
        order = np.random.default_rng(seed).permutation(len(names))
        ranked = [names[i] for i in order]
    elif mode in ("best", "worst"):
        key = "gain" if any(scores[n].get("gain") is not None for n in names) else "disagreement"
        sign = -1.0 if mode == "best" else 1.0

        def rank(name):
            value = scores[name].get(key)
            return (value is None, 0.0 if value is None else sign * value, name)

        ranked = sorted(names, key=rank)
    else:
        raise ValueError(f"unknown selection {mode!r}; valid: {', '.join(SELECT_MODES)}")
    if descriptor is None or max_similarity >= 1.0:
        return ranked[:rows]
    chosen, vectors = [], []
    for name in ranked:
        v = descriptor(name)
        if all(float(v @ w) <= max_similarity for w in vectors):
            chosen.append(name)
            vectors.append(v)
            if len(chosen) == rows:
                break
    # Too few distinct images: fill with the best skipped ones; rows keep the ranking's order.
    chosen += [name for name in ranked if name not in chosen][:rows - len(chosen)]
    return sorted(chosen, key=ranked.index)


def boundary_table(result: dict) -> str:
    def fmt(v):
        return f"{v:10.2f}" if v is not None else f"{'-':>10}"

    lines = [f"{'band (px)':>9}{'FPN acc':>10}{'IFA acc':>10}{'FPN mIoU':>10}{'IFA mIoU':>10}{'pixels':>11}"]
    for j, w in enumerate(result["widths"]):
        b, i = result["baseline"], result["ifa"]
        lines.append(f"{w:>9g}{fmt(b['accuracy'][j])}{fmt(i['accuracy'][j])}{fmt(b['mIoU'][j])}{fmt(i['mIoU'][j])}"
                     f"{b['pixels'][j]:>11d}")
    return "\n".join(lines)


# --- image sources ---------------------------------------------------------------------------------------


@dataclass
class Item:
    """One candidate image: its name, files and how its labels map to train ids (255 = ignored)."""

    name: str
    image_path: Path
    label_path: Path | None = None
    map_label: Callable[[np.ndarray], np.ndarray] | None = None
    max_side: int | None = None

    @cached_property
    def key(self) -> str:
        return file_key(self.image_path)

    def load_image(self) -> np.ndarray:
        """The image as the app prepares it (ifa.data.images.load_image: modes, EXIF, draft, Lanczos to max_side)."""
        return load_image(self.image_path, self.max_side).image

    @cached_property
    def size(self) -> tuple[int, int]:
        """(width, height) of `load_image`'s array."""
        h, w = self.load_image().shape[:2]
        return w, h

    def load_label(self) -> np.ndarray | None:
        """Train ids (255 ignored) at the image's working size (nearest, as the app resizes a label)."""
        if self.label_path is None:
            return None
        return resize_label(np.asarray(self.map_label(read_label(self.label_path)), dtype=np.int64), self.size)

    def cache_item(self) -> CacheItem:
        return CacheItem(self.key, self.load_image)


def folder_items(images: str | Path, labels: str | Path | None, num_classes: int,
                 max_side: int | None = None) -> list[Item]:
    """Images under a folder (recursively, by name); labels (train ids; values outside [0, K) are
    ignored) at the same relative path in `labels`, with the image's name or its stem + .png."""
    images = Path(images)
    if not images.is_dir():
        raise DatasetError(f"--images {images} is not a folder")
    if labels is not None and not Path(labels).is_dir():
        raise DatasetError(f"--labels {labels} is not a folder")

    def to_train_ids(raw):
        return np.where((raw < 0) | (raw >= num_classes), 255, raw)

    items = []
    for path in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        rel = path.relative_to(images)
        label = None
        if labels is not None:
            options = [Path(labels) / rel, Path(labels) / rel.with_suffix(".png")]
            label = next((p for p in options if p.is_file()), None)
            if label is None:
                raise DatasetError(f"no label for {path} in {labels} (looked for {options[0].name}, {options[1].name})")
        items.append(Item(rel.as_posix(), path, label, to_train_ids if label else None, max_side))
    if not items:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images}")
    return items


def dataset_items(name: str, root: str | Path, split: str, num_classes: int, max_side: int | None = None,
                  classes: str | None = None) -> list[Item]:
    """A dataset split's images, labels read in class set `classes` (default the dataset's own)."""
    dataset = build_dataset(name, root, split, classes)
    if dataset.info.num_classes != num_classes:
        raise ValueError(f"the models predict {num_classes} classes but {name} has {dataset.info.num_classes}")
    return [Item(dataset.image_name(i), image, label, dataset.map_label, max_side)
            for i, (image, label) in enumerate(dataset.pairs)]


def samples_items(path: str | Path, classes: str, num_classes: int, max_side: int | None = None) -> list[Item]:
    """The images of a samples manifest (ifa.data.samples), by sample name; a label whose label set has no
    mapping to the models' class set `classes` is not used."""
    samples = read_manifest(path)
    if not samples:
        raise DatasetError(f"--samples {path} lists no image that exists")
    items = []
    for sample in samples:
        mapper = sample.label_mapper(classes, num_classes) if sample.label is not None else None
        items.append(Item(sample.name, sample.image, sample.label if mapper else None, mapper, max_side))
    return items


def _read_list(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ValueError(f"cannot read the --select list file {path}: {err.strerror or err}") from err
    names = [line.split("#")[0].strip() for line in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"the --select list file {path} names no image")
    return names


def _match(names: Sequence[str], items: dict[str, Item], what: str) -> list[str]:
    """Item names for the given names (an exact name, or a name without its suffix)."""
    stems = {}
    for n in items:
        stems.setdefault(Path(n).with_suffix("").as_posix(), n)
    out, missing = [], []
    for name in names:
        hit = name if name in items else stems.get(Path(name).with_suffix("").as_posix()) or stems.get(name)
        (out if hit else missing).append(hit or name)
    if missing:
        raise ValueError(f"{what} names {len(missing)} image(s) not among the candidates: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}")
    return out


# --- the typed API: options and where the images come from ---------------------------------------------------


@dataclass(frozen=True)
class FigureOptions:
    """How a figure is drawn and how its predictions are made; each field is the command line's flag of the same
    name (`--min-area` is min_area), with its default, and is checked as the command line checks it.

    Rows: `rows` images chosen by `select`: ("best",) largest IFA gain in per-image mIoU (largest disagreement
    without ground truth), ("worst",), ("random",) with `seed`, or ("list", FILE) names in a file; look-alike
    images skipped above `max_similarity`. Boxes: `boxes` per row around difference regions of at least `min_area`
    px (only IFA-fixed ones with `fixed_only`; boxes longer than `max_box` of the shorter side skipped), padded by
    `box_pad`. Layout: `insets`, `no_titles`, `no_legend`, `no_row_labels`, `panel_width` (inches), `dpi`.
    Boundary analysis: `boundary`, `boundary_widths` (px), `boundary_images` ("selected" or "all"). Inference
    (ifa.inference.Predictor): `precision`, `mode`, `window`, `scales`, `flip`, `ifa_resolution`, `batch_size`;
    `max_side` downscales images to that long side (None: as they are).
    """

    rows: int = 4
    select: tuple[str, ...] = ("best",)
    seed: int = 0
    max_similarity: float = DEFAULT_MAX_SIMILARITY
    boxes: int = 3
    min_area: int = 64
    fixed_only: bool = False
    max_box: float = 0.5
    box_pad: int = 4
    insets: bool = False
    no_titles: bool = False
    no_legend: bool = False
    no_row_labels: bool = False
    panel_width: float = 1.8
    dpi: int = 300
    boundary: bool = False
    boundary_widths: tuple[float, ...] = tuple(DEFAULT_TRIMAP_WIDTHS)
    boundary_images: str = "selected"
    precision: str = "auto"
    mode: str = "whole"
    window: tuple[int, int] = (512, 512)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    ifa_resolution: str = "stride4"
    batch_size: int = 4
    max_side: int | None = None

    def __post_init__(self):
        for name in ("select", "boundary_widths", "window", "scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        mode = self.select[0] if self.select else ""
        if mode not in SELECT_MODES:
            raise ValueError(f"unknown --select {mode!r}; valid: {', '.join(SELECT_MODES)}")
        if (mode == "list") != (len(self.select) == 2) or len(self.select) > 2:
            raise ValueError("--select takes best, worst, random, or list FILE")
        for name, low in (("rows", 1), ("boxes", 0), ("batch_size", 1), ("dpi", 1), ("min_area", 1), ("box_pad", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if not 0 < self.max_box <= 1:
            raise ValueError(f"--max-box must lie in (0, 1], got {self.max_box}")
        if self.max_side is not None and self.max_side < 32:
            raise ValueError(f"--max-side must be at least 32, got {self.max_side}")
        if any(w <= 0 for w in self.boundary_widths):
            raise ValueError("--boundary-widths must be positive")
        for name, valid in (("boundary_images", ("selected", "all")), ("precision", ("auto", "fp32", "fp16", "bf16")),
                            ("mode", ("whole", "slide")), ("ifa_resolution", ("stride4", "full"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; valid: "
                                 f"{', '.join(valid)}")
        if len(self.window) != 2 or not self.scales:
            raise ValueError("--window takes H W and --scales at least one scale")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FigureOptions:
        """The options of parsed command-line arguments (build_parser)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def record(self) -> dict:
        """The options as the manifest records them (JSON: tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


@dataclass(frozen=True)
class ItemSource:
    """Where a figure's images come from (the command line's --images [--labels], --dataset --root --split or
    --samples, and --limit), recorded in the manifest so that `--from-manifest` finds them again."""

    images: str | None = None
    labels: str | None = None
    dataset: str | None = None
    root: str | None = None
    split: str = "val"
    limit: int | None = None
    samples: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ItemSource:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def record(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def items(self, config, options: FigureOptions) -> list[Item]:
        """The candidate images of this source for models of `config` (folder, samples manifest or dataset split),
        `limit` applied, at `options.max_side`; the options that need ground truth refused without it."""
        k = config.num_classes
        if self.images is not None:
            items = folder_items(self.images, self.labels, k, options.max_side)
        elif self.samples is not None:
            items = samples_items(self.samples, config.dataset, k, options.max_side)
        else:
            items = dataset_items(self.dataset, self.root, self.split, k, options.max_side, config.dataset or None)
        items = items[:self.limit] if self.limit else items
        _check_ground_truth(items, options)
        return items


# --- the command line ---------------------------------------------------------------------------------------


@dataclass
class FigureResult:
    figure: Path
    manifest: Path
    boundary_plot: Path | None = None
    boundary_numbers: Path | None = None
    rows: list[str] = field(default_factory=list)


def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"figure": out, "manifest": out.with_name(out.stem + ".manifest.json"),
            "boundary_plot": out.with_name(out.stem + ".boundary" + out.suffix),
            "boundary_numbers": out.with_name(out.stem + ".boundary.json")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifa.figures", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("models")
    m.add_argument("--baseline", help="Semantic FPN checkpoint folder or Hub repo id")
    m.add_argument("--baseline-revision", default=None, help="Hub revision of --baseline")
    m.add_argument("--ifa", help="FPN + IFA checkpoint folder or Hub repo id")
    m.add_argument("--ifa-revision", default=None, help="Hub revision of --ifa")
    s = p.add_argument_group("images (one of --images, --dataset or --samples)")
    s.add_argument("--images", default=None, help="folder of images")
    s.add_argument("--labels", default=None, help="folder of label PNGs (train ids) matching --images")
    s.add_argument("--dataset", default=None,
                   help="camvid, cityscapes, ade20k, pascal_context, pascal_context_60, kitti (labels read in the "
                        "models' class set, through ifa.data.label_sets' mapping where needed)")
    s.add_argument("--samples", default=None, help="a samples manifest (JSON as assets/samples.json, ifa.data.samples):"
                                                   " images, labels and their label sets")
    s.add_argument("--root", default=None, help="dataset root folder")
    s.add_argument("--split", default="val")
    s.add_argument("--limit", type=int, default=None, help="consider only the first N images")
    s.add_argument("--max-side", type=int, default=None, help="downscale images so that the long side is at most PX")
    f = p.add_argument_group("figure")
    f.add_argument("--out", default=None, help="figure file: .pdf (vector + raster panels), .png or .svg")
    f.add_argument("--rows", type=int, default=4, help="number of images (rows)")
    f.add_argument("--select", nargs="+", default=["best"], metavar="MODE",
                   help="best | worst | random | list FILE (names, one a line): which images become rows")
    f.add_argument("--seed", type=int, default=0, help="seed of --select random")
    f.add_argument("--max-similarity", type=float, default=DEFAULT_MAX_SIMILARITY,
                   help="skip a candidate row whose image is more similar than this to a chosen one (cosine of "
                        "32x24 grayscale thumbnails; neighbouring video frames score ~0.99); 1 turns it off")
    f.add_argument("--boxes", type=int, default=3, help="yellow boxes on the K largest difference regions per row")
    f.add_argument("--min-area", type=int, default=64, help="smallest difference region to box, in pixels")
    f.add_argument("--fixed-only", action="store_true", help="box only regions that IFA fixed (needs labels)")
    f.add_argument("--max-box", type=float, default=0.5,
                   help="skip regions whose box is longer than this fraction of the image's shorter side (1 = none)")
    f.add_argument("--box-pad", type=int, default=4, help="pixels added around each region's square")
    f.add_argument("--insets", action="store_true", help="add zoomed insets of each row's first box")
    f.add_argument("--no-titles", action="store_true", help="no column titles")
    f.add_argument("--no-legend", action="store_true", help="no class legend")
    f.add_argument("--no-row-labels", action="store_true", help="no image names / scores left of the rows")
    f.add_argument("--panel-width", type=float, default=1.8, help="width of one panel in inches")
    f.add_argument("--dpi", type=int, default=300, help="PNG resolution (and raster panels in a PDF)")
    b = p.add_argument_group("boundary analysis")
    b.add_argument("--boundary", action="store_true", help="also plot accuracy / mIoU vs distance to boundaries")
    b.add_argument("--boundary-widths", type=float, nargs="+", default=list(DEFAULT_TRIMAP_WIDTHS), metavar="PX")
    b.add_argument("--boundary-images", choices=["selected", "all"], default="selected",
                   help="score the bands over the figure's rows or over every candidate image")
    i = p.add_argument_group("inference")
    i.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    i.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    i.add_argument("--mode", choices=["whole", "slide"], default="whole")
    i.add_argument("--window", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    i.add_argument("--scales", type=float, nargs="+", default=[1.0])
    i.add_argument("--flip", action="store_true")
    i.add_argument("--ifa-resolution", choices=["stride4", "full"], default="stride4")
    i.add_argument("--batch-size", type=int, default=4)
    c = p.add_argument_group("cache, sharding, regeneration")
    c.add_argument("--cache", default=None, help=f"prediction cache root (default {default_cache_root()})")
    c.add_argument("--no-cache", action="store_true", help="keep predictions in memory only")
    c.add_argument("--shard", default=None, metavar="i/n",
                   help="predict only shard i of n into the cache and stop; run again without it to draw")
    c.add_argument("--from-manifest", default=None, metavar="FILE", help="redraw the figure a manifest describes")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _restore(args: argparse.Namespace, manifest: dict) -> argparse.Namespace:
    """args with the manifest's models and options; --out, --cache, --device and progress kept from the CLI."""
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{args.from_manifest} is not a figure manifest ({MANIFEST_FORMAT})")
    given = [f"--{k.replace('_', '-')}" for k in ("baseline", "ifa", "images", "dataset", "samples")
             if getattr(args, k)]
    if given:
        raise ValueError(f"--from-manifest takes its models and images from the manifest; drop {', '.join(given)}")
    restored = build_parser().parse_args([])
    here = Path(args.from_manifest).resolve().parent
    bundled = set(manifest.get("relative_to_manifest") or [])
    for key, value in manifest["options"].items():
        if key in OPTIONS:
            if key in bundled and key in PATH_OPTIONS and value:
                value = str(here / value)
            elif key in bundled and key == "select" and len(value) == 2:
                value = [value[0], str(here / value[1])]
            setattr(restored, key, value)
    for role in MODELS:
        setattr(restored, role, manifest["models"][role]["spec"])
        setattr(restored, f"{role}_revision", manifest["models"][role]["revision"])
    for key in ("cache", "no_cache", "device", "no_progress", "from_manifest"):
        setattr(restored, key, getattr(args, key))
    figure = manifest["figure"]["path"]
    restored.out = args.out or (str(here / figure) if "figure" in bundled else figure)
    return restored


def _validate(args: argparse.Namespace) -> FigureOptions:
    """The command line's values checked (one-line ValueErrors naming the flag) -> its FigureOptions."""
    if not args.baseline or not args.ifa:
        raise ValueError("give both models: --baseline M1 --ifa M2 (or --from-manifest FILE)")
    if sum(x is not None for x in (args.images, args.dataset, args.samples)) != 1:
        raise ValueError("give the images with exactly one of --images DIR, --dataset D --root R or --samples FILE")
    if args.dataset is not None and args.root is None:
        raise ValueError("--dataset needs --root")
    if args.labels is not None and args.images is None:
        raise ValueError("--labels goes with --images")
    if args.out is None and args.shard is None:
        raise ValueError("give the figure file with --out FILE.pdf|.png|.svg")
    if args.out is not None and Path(args.out).suffix.lower().lstrip(".") not in FORMATS:
        raise ValueError(f"--out must end in {', '.join('.' + f for f in FORMATS)}, got {args.out}")
    options = FigureOptions.from_args(args)  # checks the options
    if args.shard is not None and args.no_cache:
        raise ValueError("--shard writes its predictions to the cache: drop --no-cache")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    return options


def run(args: argparse.Namespace, command: str = "") -> FigureResult | None:
    """The command line: predict (cached), score, select, draw and write the manifest (`draw_figure`'s steps, with
    the models loaded from --baseline / --ifa, the images from --images / --dataset / --samples, and sharding);
    None for a --shard run or a non-zero rank."""
    from .distributed import DistributedContext

    manifest_in = None
    if args.from_manifest:
        try:
            manifest_in = json.loads(Path(args.from_manifest).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read the manifest {args.from_manifest}: {err}") from err
        args = _restore(args, manifest_in)
        command = manifest_in.get("command") or command  # a redraw records the command that made the figure
    options = _validate(args)
    source = ItemSource.from_args(args)
    ctx = DistributedContext.from_env(args.device)
    if args.shard and ctx.world_size > 1:
        raise ValueError("use either --shard or torchrun, not both")
    shard = parse_shard(args.shard) if args.shard else (ctx.rank, ctx.world_size)
    progress = not args.no_progress and ctx.is_main

    models, identities = _load_models(args, manifest_in, ctx.device)
    by_name = {item.name: item for item in source.items(models["baseline"].config, options)}
    row_names, predict_names = _plan(options, by_name, manifest_in)
    cache_root = None if args.no_cache else (args.cache or default_cache_root())
    caches = _predict(options, models, identities, [by_name[n].cache_item() for n in predict_names], ctx.device,
                      shard, progress, cache_root, release=True)
    if args.shard:
        print(f"shard {args.shard}: predictions of {len(predict_names[shard[0]::shard[1]])} images are in "
              f"{caches['baseline'].root}; run again without --shard to draw the figure")
        return None
    if ctx.world_size > 1:
        ctx.barrier()
        if not ctx.is_main:
            ctx.close()
            return None
    result, manifest, boundary = _draw(models["baseline"].config, identities, by_name, caches, options, args.out,
                                       row_names, predict_names, source, ctx.device, command, manifest_in, progress)
    for row in manifest["rows"]:
        print(f"{row['name']}: {score_label(row['scores'])}, {len(row['regions'])} box(es)")
    if boundary is not None:
        print(boundary_table(boundary))
    print("\n".join(f"wrote {p}" for p in (result.figure, result.manifest, result.boundary_plot,
                                          result.boundary_numbers) if p is not None))
    ctx.close()
    return result


def draw_figure(models, items: Sequence[Item], out: str | Path, options: FigureOptions | None = None, *,
                identities: Mapping[str, ModelIdentity] | None = None, source: ItemSource | None = None,
                device: str | torch.device | None = None, cache: str | Path | None = None, progress: bool = False,
                command: str = "") -> FigureResult:
    """The figure of `items` drawn with `models`, and its manifest, written beside `out` (.pdf, .png or .svg).

    Args:
        models: {"baseline": model, "ifa": model} (SegmentationModels), or a loaded pair (an object with `baseline`
            and `ifa` attributes, e.g. ifa.app.registry.LoadedPair). Used in place (moved to `device`, eval mode;
            ifa.inference.Predictor) and left there; BatchNorm-folded models are recorded as such in the manifest,
            so that `--from-manifest` folds the models it loads and redraws the same labels.
        items: the candidate images (`Item`s: folder_items, samples_items, dataset_items, or `ItemSource.items`).
        out: the figure file; the manifest is STEM.manifest.json beside it (`output_paths`).
        options: rows, selection, boxes, layout and inference (`FigureOptions`; default its defaults).
        identities: {role: ModelIdentity} as the manifest names the models (e.g. `identify_model(...)[1]`, with
            `spec` the name a reader can load); default: an identity of the weights in memory, spec "(in memory)".
        source: where `items` came from, recorded in the manifest for `--from-manifest` (default: not recorded).
        device: where the models run (default: where the baseline's parameters are).
        cache: a prediction-cache root (ifa.prediction_cache); default None, predictions in memory only.
        progress: progress bars.
        command: the command line the manifest records as the one that made the figure.

    Returns:
        FigureResult: the files written and the row names.
    """
    import torch

    options = options or FigureOptions()
    models = ({"baseline": models.baseline, "ifa": models.ifa} if hasattr(models, "baseline") else
              {role: models[role] for role in MODELS})
    _check_classes(models)
    identities = dict(identities) if identities is not None else {role: memory_identity(m)
                                                                  for role, m in models.items()}
    device = torch.device(device) if device is not None else next(models["baseline"].parameters()).device
    if Path(out).suffix.lower().lstrip(".") not in FORMATS:
        raise ValueError(f"--out must end in {', '.join('.' + f for f in FORMATS)}, got {out}")
    by_name = {item.name: item for item in items}
    if not by_name:
        raise ValueError("no images to draw")
    _check_ground_truth(list(by_name.values()), options)
    row_names, predict_names = _plan(options, by_name, None)
    caches = _predict(options, models, identities, [by_name[n].cache_item() for n in predict_names], device,
                      (0, 1), progress, cache)
    return _draw(models["baseline"].config, identities, by_name, caches, options, out, row_names, predict_names,
                 source or ItemSource(), device, command, None, progress)[0]


# --- the steps of run and draw_figure -----------------------------------------------------------------------


def _plan(options: FigureOptions, by_name: dict[str, Item], manifest_in: dict | None
          ) -> tuple[list[str] | None, list[str]]:
    """(the rows known before any prediction, or None: ranked; the images to predict)."""
    names = list(by_name)

    @functools.cache
    def descriptor(name: str) -> np.ndarray:
        return image_descriptor(by_name[name].load_image())

    row_names = _given_rows(options, manifest_in, by_name, descriptor)
    everything = row_names is None or (options.boundary and options.boundary_images == "all")
    return row_names, (names if everything else row_names)


def _draw(config, identities: Mapping[str, ModelIdentity], by_name: dict[str, Item], caches: dict, options,
          out, row_names: list[str] | None, predict_names: list[str], source: ItemSource, device, command: str,
          manifest_in: dict | None, progress: bool) -> tuple[FigureResult, dict, dict | None]:
    """Score the predicted images, select the rows (when not given), draw the figure (and the boundary analysis)
    and write the manifest -> (the files written, the manifest, the boundary numbers or None)."""
    k = config.num_classes
    names = list(by_name)

    @functools.cache
    def descriptor(name: str) -> np.ndarray:
        return image_descriptor(by_name[name].load_image())

    def labels_of(name):
        item = by_name[name]
        out = [caches[role].get(item.key) for role in MODELS]
        if any(x is None for x in out):
            raise ValueError(f"no cached prediction for {name} (a shard did not finish, or its cache is elsewhere: "
                             f"merge it with `python -m ifa.prediction_cache merge`)")
        return (*out, item.load_label())

    scores = {}
    for name in tqdm(predict_names, desc="score", disable=not progress or len(predict_names) < 20, leave=False):
        scores[name] = image_scores(*labels_of(name), k)
    if row_names is None:
        row_names = select_images(names, scores, options.select[0], options.rows, options.seed,
                                  options.max_similarity, descriptor)
    if manifest_in:
        _check_scores(manifest_in, scores)

    paths = output_paths(out)
    rows, manifest_rows = _rows(options, row_names, by_name, labels_of, scores)
    fig = build_figure(rows, config.class_names, config.palette, column_titles=not options.no_titles,
                       legend=not options.no_legend, row_labels=not options.no_row_labels, insets=options.insets,
                       panel_width=options.panel_width)
    render_to_file(fig, paths["figure"], dpi=options.dpi)
    result = FigureResult(paths["figure"], paths["manifest"], rows=list(row_names))
    boundary = None
    if options.boundary:
        over = predict_names if options.boundary_images == "all" else row_names
        boundary = _boundary(options, over, labels_of, k, identities, paths)
        result.boundary_plot, result.boundary_numbers = paths["boundary_plot"], paths["boundary_numbers"]
    recorded, bundled = _relative_options({**source.record(), **options.record()}, out, paths["manifest"].parent)
    manifest = {
        "format": MANIFEST_FORMAT,
        "command": command,
        "relative_to_manifest": bundled,
        "figure": {"path": recorded.pop("figure"), "format": paths["figure"].suffix.lstrip(".").lower(),
                   "dpi": options.dpi, "size_in": [float(v) for v in fig.get_size_inches()],
                   "size_px": list(pixel_size(fig, options.dpi)),
                   "columns": columns(any(row.gt is not None for row in rows), options.insets), "rows": len(rows)},
        "models": {role: _model_record(identities[role], caches[role]) for role in MODELS},
        "dataset": config.dataset, "class_names": list(config.class_names),
        "device": str(device), "precision": effective_precision(device, options.precision),
        "options": recorded,
        "images": manifest_in["images"] if manifest_in else names,
        "scores": {**(manifest_in["scores"] if manifest_in else {}), **scores},
        "rows": manifest_rows,
        "boundary": None if boundary is None else {
            "plot": paths["boundary_plot"].name, "numbers": paths["boundary_numbers"].name,
            "images": options.boundary_images, "widths": boundary["widths"]},
    }
    _write_json(paths["manifest"], manifest)
    return result, manifest, boundary


def _model_record(identity: ModelIdentity, cache: PredictionCache) -> dict:
    """A model as the manifest names it: its identity, and "folded": true when its BatchNorm was folded."""
    return {**identity.to_dict(), **({"folded": True} if cache.options.get("folded") else {})}


def _relative_options(values: dict, out, folder: Path) -> tuple[dict, list[str]]:
    """(the manifest's options (OPTIONS, from `values`) + "figure": the figure's path, the keys written relative to
    `folder`): files below the manifest's folder are named relative to it; others as given."""
    folder = folder.resolve()

    def below(value) -> str | None:
        path = Path(value).resolve()
        return path.relative_to(folder).as_posix() if path.is_relative_to(folder) else None

    options, bundled = {key: values[key] for key in OPTIONS}, []
    for key in PATH_OPTIONS:
        if options[key] and below(options[key]) is not None:
            options[key] = below(options[key])
            bundled.append(key)
    if options["select"][0] == "list" and below(options["select"][1]) is not None:
        options["select"] = ["list", below(options["select"][1])]
        bundled.append("select")
    options["figure"] = below(out) or str(out)
    if below(out) is not None:
        bundled.append("figure")
    return options, bundled


def _load_models(args: argparse.Namespace, manifest_in: dict | None, device=None) -> tuple[dict, dict]:
    """({role: model}, {role: ModelIdentity}); a redraw refuses models that are not the manifest's, and folds the
    BatchNorm of those the manifest records as folded (on `device`, as the app folds its models)."""
    from .hub import load_model

    models, identities = {}, {}
    for role in MODELS:
        folder, identities[role] = identify_model(getattr(args, role), getattr(args, f"{role}_revision"))
        models[role] = load_model(folder)
        if manifest_in and manifest_in["models"][role]["sha256"] != identities[role].sha256:
            raise ValueError(f"the {role} model {identities[role].spec} is not the one in the manifest "
                             f"(sha256 {identities[role].sha256[:12]} vs {manifest_in['models'][role]['sha256'][:12]})")
        if manifest_in and manifest_in["models"][role].get("folded"):
            models[role] = models[role].to(device).fold_batchnorm()
    _check_classes(models)
    return models, identities


def _check_classes(models: Mapping) -> None:
    k = models["baseline"].config.num_classes
    if models["ifa"].config.num_classes != k:
        raise ValueError(f"the models predict different classes: {k} vs {models['ifa'].config.num_classes}")


def memory_identity(model) -> ModelIdentity:
    """An identity of a model held in memory (no files): sha256 of its config and its state's bytes."""
    import hashlib

    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    config = model.config
    return ModelIdentity(spec="(in memory)", revision=None, sha256=digest.hexdigest(),
                         architecture=config.architecture, backbone=config.backbone, num_classes=config.num_classes)


def _check_ground_truth(items: Sequence[Item], options: FigureOptions) -> None:
    """The options that need ground truth refused when no item has a label."""
    has_gt = any(item.label_path is not None for item in items)
    for flag, wanted in (("--boundary", options.boundary), ("--fixed-only", options.fixed_only)):
        if wanted and not has_gt:
            raise ValueError(f"{flag} needs ground truth: give --labels DIR or use --dataset")


def _given_rows(args: FigureOptions, manifest_in: dict | None, by_name: dict[str, Item],
                descriptor: Callable[[str], np.ndarray]) -> list[str] | None:
    """The rows known before any prediction (a manifest's, a --select list, a random pick), or None: ranked."""
    if manifest_in:
        row_names = _match([row["name"] for row in manifest_in["rows"]], by_name, "the manifest")
        changed = [row["name"] for row in manifest_in["rows"] if by_name[row["name"]].key != row["key"]]
        if changed:
            warnings.warn(f"{len(changed)} image(s) changed since the manifest was written (e.g. {changed[0]})",
                          stacklevel=3)
        return row_names
    if args.select[0] == "list":
        return _match(_read_list(args.select[1]), by_name, f"--select list {args.select[1]}")
    if args.select[0] == "random":
        return select_images(list(by_name), {}, "random", args.rows, args.seed, args.max_similarity, descriptor)
    return None


def _predict(args: FigureOptions, models: Mapping, identities: Mapping, items: list[CacheItem], device, shard,
             progress: bool, cache_root: str | Path | None = None, release: bool = False
             ) -> dict[str, PredictionCache]:
    """Both models over `items` (this shard's slice) into their prediction caches under `cache_root` (None: in
    memory): {role: PredictionCache}. A folded model's predictions are cached apart (options "folded"); with
    `release` (models this module loaded) each model goes back to the CPU afterwards."""
    from .inference import Predictor

    caches = {}
    for role, model in models.items():
        predictor = Predictor(model, device=device, precision=args.precision, mode=args.mode,
                              window=tuple(args.window), scales=tuple(args.scales), flip=args.flip,
                              ifa_resolution=args.ifa_resolution if model.is_ifa else "stride4")
        options = {"mode": args.mode, "window": list(args.window) if args.mode == "slide" else None,
                   "scales": list(args.scales), "flip": args.flip, "ifa_resolution": predictor.ifa_resolution,
                   "precision": effective_precision(device, args.precision), "max_side": args.max_side,
                   **({"folded": True} if getattr(model, "folded", False) else {})}
        caches[role] = PredictionCache(cache_root, identities[role], options)
        predict_to_cache(predictor, caches[role], items, batch_size=args.batch_size, shard=shard, progress=progress,
                         desc=MODELS[role])
        if release:
            predictor.model.cpu()
    return caches


def _rows(args: FigureOptions, row_names: list[str], by_name: dict[str, Item], labels_of, scores: dict
          ) -> tuple[list[PanelRow], list[dict]]:
    """The figure's rows (boxes chosen) and their manifest entries."""
    rows, manifest_rows = [], []
    for name in row_names:
        baseline, ifa, gt = labels_of(name)
        regions, boxes = boxed_regions(baseline, ifa, gt, args.boxes, args.min_area, args.fixed_only, args.max_box,
                                       args.box_pad)
        rows.append(PanelRow(name, by_name[name].load_image(), baseline, ifa, gt, boxes, score_label(scores[name])))
        manifest_rows.append({"name": name, "key": by_name[name].key, "size": list(baseline.shape),
                              "scores": scores[name],
                              "regions": [{**r.to_dict(), "drawn_box": list(b)} for r, b in zip(regions, boxes)]})
    return rows, manifest_rows


def _boundary(args: FigureOptions, names: list[str], labels_of, k: int, identities: dict,
              paths: dict[str, Path]) -> dict:
    """The boundary analysis over the images `names` (ifa.compare.boundary_bands): plot and numbers written."""
    from .viz.figure import boundary_figure

    boundary = {**boundary_bands((labels_of(n) for n in names), k, args.boundary_widths), "image_names": list(names)}
    curves = {MODELS[role]: boundary[role] for role in MODELS}
    render_to_file(boundary_figure(boundary["widths"], curves), paths["boundary_plot"], dpi=args.dpi)
    _write_json(paths["boundary_numbers"], {"models": {r: identities[r].to_dict() for r in MODELS}, **boundary})
    return boundary


def _check_scores(manifest: dict, scores: dict) -> None:
    changed = [name for name, now in scores.items() if name in manifest["scores"]
               and any(now.get(key) is not None and abs(now[key] - (manifest["scores"][name].get(key) or 0)) > 1e-6
                       for key in now)]
    if changed:
        warnings.warn(f"predictions differ from the manifest's on {len(changed)} image(s) (e.g. {changed[0]}): "
                      f"another device or precision? The figure may not match byte for byte", stacklevel=3)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _write_json(path: Path, data: dict) -> None:
    from .io import atomic_write

    text = json.dumps(_json_safe(data), indent=2) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .hub import HubError
    from .models.checkpoint import CheckpointError

    try:
        run(args, command=shlex.join(["python", "-m", "ifa.figures", *argv]))
    except (DatasetError, CheckpointError, HubError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.strerror or err}{f': {err.filename}' if err.filename else ''}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
