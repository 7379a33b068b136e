"""The Dataset view's handlers: both models over a folder of images, ranked; the ranking's top rows exported as
ifa.figures' paper-style figure; a row opened in the comparison.

`DatasetView` is mixed into `AppService` (it uses the service's samples, pairs, inputs and files); the
per-image scoring is ifa.app.dataset_rank's.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from pathlib import Path

import gradio as gr

from ..compare import MODELS
from ..data.samples import Sample, write_manifest
from ..prediction_cache import file_key
from . import engine
from .dataset_rank import HEADERS as RANK_HEADERS
from .dataset_rank import rank_row, sort_rows, table_rows
from .handlers import PROGRESS, UserError, _float, _jsonable, _table, guarded
from .registry import PairSpec, shorten
from .samples import thumbnail

# The dataset view's bounds: images per source (AppSettings.rank_max) and seconds of new work per request, then it
# says to continue (AppSettings.rank_seconds, IFA_APP_RANK_SECONDS; when not set, this default, read per ranking).
RANK_SECONDS = 30.0


class DatasetView:
    """The Dataset view's events (mixed into AppService)."""

    def rank_sources(self) -> list[str]:
        """The image folders the dataset view offers: the shipped samples, IFA_SAMPLES_DIR, IFA_APP_DATASET."""
        names = {"manifest": "shipped samples", "folder": "IFA_SAMPLES_DIR folder", "dataset": "IFA_APP_DATASET"}
        return [label for origin, label in names.items() if any(s.origin == origin for s in self.samples)]

    def _source(self, source: str) -> list[Sample]:
        origin = {"shipped samples": "manifest", "IFA_SAMPLES_DIR folder": "folder", "IFA_APP_DATASET": "dataset"}
        if source not in origin or source not in self.rank_sources():
            raise UserError(f"unknown image source {shorten(source)}; this server offers "
                            f"{', '.join(self.rank_sources())}")
        return [s for s in self.samples if s.origin == origin[source]][:self.settings.rank_max]

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
        instant. A request computes new images for at most `_rank_seconds()`, then says how to continue."""
        samples = self._source(str(source or ""))
        spec = self._spec(pair_id or self.default_pair)
        options, notices = self._options(scales, flip, ifa_resolution, spec)
        pair = engine.load_pair(spec)
        caches = self.labels.pair(self._pair_identities(spec), {
            "scales": list(options.scales), "flip": options.flip, "ifa_resolution": options.ifa_resolution,
            "max_side": self.settings.max_side, "precision": engine.PRECISION})
        budget = self._rank_seconds()
        start, rows, computed, pending = time.perf_counter(), [], 0, 0
        for n, sample in enumerate(samples):
            progress(n / max(len(samples), 1), desc=f"{sample.name} ({n + 1} of {len(samples)})")
            key = file_key(sample.image)
            labels = [cache.get(key) for cache in caches]
            if any(x is None for x in labels):
                if computed and time.perf_counter() - start > budget:  # at least one image per request
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
                       f"{budget:g} s): press *Rank* again to continue.")
        status += " Click a row or a thumbnail to open that image in the comparison."
        gallery = [(r["thumbnail"], f"{r['image'].split(' (')[0]} · Δ {r['gain']:+.1f}" if r["gain"] is not None else
                    f"{r['image'].split(' (')[0]} · differ {r['disagreement']:.1f}%") for r in rows]
        summary = {"source": source, "pair": engine.pair_summary(spec), "options": {"scales": list(options.scales),
                   "flip": options.flip, "ifa_resolution": options.ifa_resolution}, "images": len(samples),
                   "ranked": len(rows), "pending": pending, "computed": computed, "seconds": round(seconds, 2),
                   "notices": notices, "rows": [{k: v for k, v in r.items() if k != "thumbnail"} for r in rows]}
        return _table(RANK_HEADERS, table_rows(rows)), gallery, status, _jsonable(summary)

    def _rank_seconds(self) -> float:
        """Seconds of new work one ranking request may do: settings.rank_seconds, else RANK_SECONDS."""
        return RANK_SECONDS if self.settings.rank_seconds is None else self.settings.rank_seconds

    @guarded("exporting the figure")
    def export_figure(self, summary, pair_id, scales, flip, ifa_resolution, rows=4, fmt="png"):
        """The dataset view's top `rows` images as the paper-style figure of ifa.figures (PNG or PDF) -> (files:
        figure, its manifest, the samples manifest and the row list; markdown with the command that redraws it).

        The figure is drawn by ifa.figures' `draw_figure` with the pair this server holds, from a samples manifest
        naming the rows' files, so `python -m ifa.figures --from-manifest MANIFEST` regenerates it byte for byte on
        this machine."""
        from .. import figures

        rows_wanted = int(_float(rows, "rows", 1, 12, 4))
        ranked = _ranked_names(summary, self._samples_by_name)[:rows_wanted]
        fmt = "pdf" if str(fmt).lower() == "pdf" else "png"
        spec = self._spec(pair_id or self.default_pair)
        options, _ = self._options(scales, flip, ifa_resolution, spec)
        folder = self.files_root / "figures" / uuid.uuid4().hex[:12] / "ifa-figure"
        folder.mkdir(parents=True)
        _prune(folder.parent.parent, keep=16)
        bundled = []
        for n, name in enumerate(ranked):  # the rows' files travel in the bundle
            sample = self._samples_by_name[name]
            copies = {}
            for kind in ("image", "label"):
                source = getattr(sample, kind)
                if source is not None:
                    copies[kind] = folder / "images" / f"{n:02d}-{kind}-{Path(source).name}"
                    copies[kind].parent.mkdir(exist_ok=True)
                    shutil.copyfile(source, copies[kind])
            bundled.append(dataclasses.replace(sample, **copies))
        write_manifest(bundled, folder / "samples.json",
                       about=f"the rows of a figure exported by IFA Explorer from {summary.get('source')}")
        (folder / "rows.txt").write_text("\n".join(ranked) + "\n")
        # Drawn with the models this server holds (engine's loaded pair, BatchNorm folded: the manifest says so, and
        # `--from-manifest` folds the models it loads the same way), named as the app's home knows them.
        pair = engine.load_pair(spec)
        identities = {role: dataclasses.replace(identity, spec=model.public_location) for role, identity, model in
                      zip(MODELS, self._pair_identities(spec), (spec.baseline, spec.ifa))}
        figure_options = figures.FigureOptions(
            rows=len(ranked), select=("list", str(folder / "rows.txt")), scales=options.scales, flip=options.flip,
            ifa_resolution=options.ifa_resolution, max_side=self.settings.max_side, precision=engine.PRECISION)
        rows_source = figures.ItemSource(samples=str(folder / "samples.json"))
        items = rows_source.items(pair.baseline.config, figure_options)
        redraw = "python -m ifa.figures --from-manifest ifa-figure/figure.manifest.json"
        result = figures.draw_figure(pair, items, folder / f"figure.{fmt}", figure_options, identities=identities,
                                     source=rows_source, device=engine.DEVICE, command=redraw)
        archive = Path(shutil.make_archive(str(folder.parent / "ifa-figure"), "zip", folder.parent, folder.name))
        md = (f"Figure of {len(ranked)} rows ({', '.join(ranked)}), drawn by `ifa.figures`. **ifa-figure.zip** holds "
              f"the figure, its manifest, the samples manifest, the row list and the rows' images: unpack it in a "
              f"checkout of this project (the models are named as this server knows them: "
              f"{spec.baseline.public_location}, {spec.ifa.public_location}) and redraw it byte for byte with "
              f"`{redraw}` on the same device and precision.")
        return [str(result.figure), str(result.manifest), str(folder / "samples.json"), str(folder / "rows.txt"),
                str(archive)], md

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
            raise gr.Error(f"{shorten(name)} is not an image this server offers", print_exception=False)
        return name, None, None, self.sample_info(name)


def _ranked_names(summary, offered: dict) -> list[str]:
    """The image names of a ranking's rows (the JSON the Rank button gave), each checked: a summary that is not a
    ranking of this server's images is refused with one line."""
    rows = summary.get("rows") if isinstance(summary, dict) else None
    if not rows:
        raise UserError("rank a set of images first (the Rank button): the figure shows its top rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("image"), str) for r in rows):
        raise UserError("the ranking given is not one this app made (rows of {'image': name, ...}): rank again")
    unknown = [r["image"] for r in rows if r["image"] not in offered]
    if unknown:
        raise UserError(f"the ranking names {len(unknown)} image(s) this server does not offer "
                        f"(e.g. {shorten(unknown[0])}): rank again")
    return [r["image"] for r in rows]


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the `keep` newest subfolders of `folder` (exported figures)."""
    subs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in subs[keep:]:
        shutil.rmtree(old, ignore_errors=True)
