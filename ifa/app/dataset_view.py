"""The Dataset view's handlers: both models over a folder of images, ranked; the ranking's top rows exported as
ifa.figures' paper-style figure; a row opened in the comparison.

`DatasetView` is mixed into `AppService` (it uses the service's samples, pairs, inputs and files); the
per-image scoring is ifa.app.dataset_rank's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import time
import uuid
from pathlib import Path

import gradio as gr

from ..data.samples import Sample, write_manifest
from ..prediction_cache import file_key
from . import engine
from .dataset_rank import HEADERS as RANK_HEADERS
from .dataset_rank import rank_row, sort_rows, table_rows
from .handlers import PROGRESS, UserError, _float, _jsonable, _table, guarded
from .registry import PairSpec
from .samples import thumbnail

# The dataset view's bounds: images per source, and seconds of new work per request (then it says to continue).
RANK_MAX_IMAGES = int(os.environ.get("IFA_APP_RANK_MAX", "120") or 120)
RANK_SECONDS = float(os.environ.get("IFA_APP_RANK_SECONDS", "30") or 30)


class DatasetView:
    """The Dataset view's events (mixed into AppService)."""

    def rank_sources(self) -> list[str]:
        """The image folders the dataset view offers: the shipped samples, IFA_SAMPLES_DIR, IFA_APP_DATASET."""
        names = {"manifest": "shipped samples", "folder": "IFA_SAMPLES_DIR folder", "dataset": "IFA_APP_DATASET"}
        return [label for origin, label in names.items() if any(s.origin == origin for s in self.samples)]

    def _source(self, source: str) -> list[Sample]:
        origin = {"shipped samples": "manifest", "IFA_SAMPLES_DIR folder": "folder", "IFA_APP_DATASET": "dataset"}
        if source not in origin or source not in self.rank_sources():
            raise UserError(f"unknown image source {source!r}; this server offers {', '.join(self.rank_sources())}")
        return [s for s in self.samples if s.origin == origin[source]][:RANK_MAX_IMAGES]

    def _pair_identities(self, spec: PairSpec) -> tuple:
        if spec.id not in self._identities:
            from ..prediction_cache import identify_model

            self._identities[spec.id] = tuple(identify_model(src.location, src.revision)[1]
                                              for src in (spec.baseline, spec.ifa))
        return self._identities[spec.id]

    @guarded("ranking the images")
    def dataset_rank(self, source, pair_id, scales, flip, ifa_resolution, progress=PROGRESS):
        """Both models on every image of a source -> RANK_OUTPUTS (table, gallery in table order, status, JSON).

        Label maps are cached per image, model and options (ifa.prediction_cache, in memory): a second ranking is
        instant. A request computes new images for at most RANK_SECONDS, then says how to continue."""
        samples = self._source(str(source or ""))
        spec = self._spec(pair_id or self.default_pair)
        options, notices = self._options(scales, flip, ifa_resolution)
        pair = engine.load_pair(spec)
        caches = self.labels.pair(self._pair_identities(spec), {
            "scales": list(options.scales), "flip": options.flip, "ifa_resolution": options.ifa_resolution,
            "max_side": int(os.environ.get("IFA_APP_MAX_SIDE", "1024") or 1024), "precision": engine.PRECISION})
        start, rows, computed, pending = time.perf_counter(), [], 0, 0
        for n, sample in enumerate(samples):
            progress(n / max(len(samples), 1), desc=f"{sample.name} ({n + 1} of {len(samples)})")
            key = file_key(sample.image)
            labels = [cache.get(key) for cache in caches]
            if any(x is None for x in labels):
                if computed and time.perf_counter() - start > RANK_SECONDS:  # at least one image per request
                    pending += 1
                    continue
                name, array, gt, _ = self._image(None, sample.name, None, "", pair.num_classes, pair.dataset)
                work, _ = options.within(*array.shape[:2], engine.WORK_BUDGET_MPX)
                baseline, ifa, _ = engine.compare(spec, array, work, analyse=False)
                labels = [baseline.labels, ifa.labels]
                for cache, x in zip(caches, labels):
                    cache.put(key, x)
                computed += 1
            else:
                name, array, gt, _ = self._image(None, sample.name, None, "", pair.num_classes, pair.dataset)
            rows.append({**rank_row(sample.name, *labels, gt, pair.class_names),
                         "thumbnail": thumbnail(sample, self.thumbs_dir) or str(sample.image)})
        rows = sort_rows(rows)
        seconds = time.perf_counter() - start
        status = (f"**{len(rows)} of {len(samples)} images** of {source} ranked on {spec.title} "
                  f"({options.describe()}) in {seconds:.1f} s; {computed} computed now, {len(rows) - computed} from "
                  f"the cache.")
        if pending:
            status += (f" {pending} images were left for the next request (each request computes for at most "
                       f"{RANK_SECONDS:g} s): press *Rank* again to continue.")
        status += " Click a row or a thumbnail to open that image in the comparison."
        gallery = [(r["thumbnail"], f"{r['image']} · Δ {r['gain']:+.1f}" if r["gain"] is not None else
                    f"{r['image']} · differ {r['disagreement']:.1f}%") for r in rows]
        summary = {"source": source, "pair": spec.summary(), "options": {"scales": list(options.scales),
                   "flip": options.flip, "ifa_resolution": options.ifa_resolution}, "images": len(samples),
                   "ranked": len(rows), "pending": pending, "computed": computed, "seconds": round(seconds, 2),
                   "notices": notices, "rows": [{k: v for k, v in r.items() if k != "thumbnail"} for r in rows]}
        return _table(RANK_HEADERS, table_rows(rows)), gallery, status, _jsonable(summary)

    @guarded("exporting the figure")
    def export_figure(self, summary, pair_id, scales, flip, ifa_resolution, rows=4, fmt="png"):
        """The dataset view's top `rows` images as the paper-style figure of ifa.figures (PNG or PDF) -> (files:
        figure, its manifest, the samples manifest and the row list; markdown with the command that redraws it).

        The figure is drawn by ifa.figures itself, from a samples manifest naming the rows' files, so
        `python -m ifa.figures --from-manifest MANIFEST` regenerates it byte for byte on this machine."""
        from .. import figures

        rows_wanted = int(_float(rows, "rows", 1, 12, 4))
        ranked = [r["image"] for r in (summary or {}).get("rows") or []][:rows_wanted]
        if not ranked:
            raise UserError("rank a set of images first (the Rank button): the figure shows its top rows")
        fmt = "pdf" if str(fmt).lower() == "pdf" else "png"
        spec = self._spec(pair_id or self.default_pair)
        options, _ = self._options(scales, flip, ifa_resolution)
        folder = self.files_root / "figures" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        _prune(folder.parent, keep=16)
        write_manifest([self._samples_by_name[name] for name in ranked], folder / "samples.json",
                       about=f"the rows of a figure exported by IFA Explorer from {summary.get('source')}")
        (folder / "rows.txt").write_text("\n".join(ranked) + "\n")
        argv = []
        for role, source in (("baseline", spec.baseline), ("ifa", spec.ifa)):
            argv += [f"--{role}", source.location] + ([f"--{role}-revision", source.revision] if source.revision
                                                      else [])
        argv += ["--samples", str(folder / "samples.json"), "--select", "list", str(folder / "rows.txt"),
                 "--rows", str(len(ranked)), "--scales", *[f"{v:g}" for v in options.scales],
                 "--ifa-resolution", options.ifa_resolution, "--max-side",
                 os.environ.get("IFA_APP_MAX_SIDE", "1024") or "1024", "--no-cache", "--no-progress",
                 "--out", str(folder / f"figure.{fmt}")] + (["--flip"] if options.flip else [])
        result = figures.run(figures.build_parser().parse_args(argv), command="python -m ifa.figures "
                             + " ".join(shlex.quote(a) for a in argv))
        md = (f"Figure of {len(ranked)} rows ({', '.join(ranked)}), drawn by `ifa.figures`. Redraw it byte for byte "
              f"on this machine with `python -m ifa.figures --from-manifest {result.manifest}`; the samples manifest"
              f" and the row list name the images.")
        return [str(result.figure), str(result.manifest), str(folder / "samples.json"), str(folder / "rows.txt")], md

    def pick_ranked(self, summary, evt: gr.SelectData):
        """A row (or thumbnail) of the dataset view -> (sample name, cleared upload, cleared label, attribution)."""
        rows = (summary or {}).get("rows") or []
        if isinstance(evt.row_value, list) and evt.row_value:
            name = str(evt.row_value[0])
        elif isinstance(evt.index, int) and 0 <= evt.index < len(rows):
            name = rows[evt.index]["image"]
        else:
            raise gr.Error("pick an image of the ranking", print_exception=False)
        if name not in self._samples_by_name:
            raise gr.Error(f"{name} is not an image this server offers", print_exception=False)
        return name, None, None, self.sample_info(name)


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest subfolders of `folder` (exported figures)."""
    subs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in subs[keep:]:
        shutil.rmtree(old, ignore_errors=True)
