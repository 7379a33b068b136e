"""The app's event handlers: raw Gradio values in, output tuples out, every failure a clear gr.Error.

`AppService` owns the model registry, the samples, the result store and the files it serves, all as its
settings (ifa.app.settings.AppSettings, built once) say; it configures the engine with them. Each
public method is one event of the UI (and one API endpoint, see docs/app.md); the order of the
values it returns is given by the *_OUTPUTS tuples below, which ifa.app.ui uses to wire components.
The Dataset view's events live in ifa.app.dataset_view (mixed in), the guard and value parsing every
handler shares in ifa.app.handlers. Nothing here builds UI.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
import time
import uuid
from pathlib import Path

import gradio as gr
import numpy as np

from ..compare import MODELS, VERDICTS
from ..data.label_sets import LABEL_SETS
from ..domain import in_domain
from . import engine, views
from .ablation import ablation_markdown, ablation_summary
from .dataset_rank import LabelCache
from .dataset_view import DatasetView
from .engine import Options
from .handlers import (
    PROGRESS,
    UserError,
    _bool,
    _float,
    _jsonable,
    _path_of,
    _table,
    guarded,
    log,
    public_message,
    received_file,
)
from .images import ImageLoadError, load_image, load_label
from .legend import legend_html, verdict_legend_html
from .outputs import Ablation, Analyse, Export, HubPair, Pair, Probe, Rank, Segment, Views, Welcome
from .probe import normalised_point
from .registry import (
    PairError,
    PairSpec,
    Registry,
    RegistryError,
    hub_pair,
    public_path,
    read_registry,
    shorten,
)
from .results import Result, ResultStore, array_ids, client_of
from .samples import Sample, list_samples, thumbnail
from .settings import AppSettings
from .tempdirs import make_files_root

SCALE_CHOICES = ("0.5", "0.75", "1.0", "1.25", "1.5", "1.75", "2.0")
IFA_RESOLUTIONS = (("stride-4 grid + bilinear upsampling (as trained)", "stride4"),
                   ("query IFA at every pixel (full resolution)", "full"))
# The resolution option's help when a pair's IFA model has no resolution record (its card's record gives the numbers).
IFA_RESOLUTION_INFO = "Every pixel is slower: the head runs 16x the queries of the stride-4 grid"
LABEL_SET_CHOICES = [("the pair's class indices", ""), *((ls.title, ls.name) for ls in LABEL_SETS.values())]
DEFAULT_MIN_AREA = 64
DEFAULT_OPACITY = 0.55
TOP_REGIONS = 12
MAX_SCALES = 4

# Each event's outputs by name (ifa.app.outputs); the tuples of names are what ifa.app.ui wires.
VIEW_OUTPUTS = Views._fields
SEGMENT_OUTPUTS = Segment._fields
RENDER_OUTPUTS = VIEW_OUTPUTS
ANALYSE_OUTPUTS = Analyse._fields
PROBE_OUTPUTS = Probe._fields
ABLATION_OUTPUTS = Ablation._fields
RANK_OUTPUTS = Rank._fields
EXPORT_OUTPUTS = Export._fields
PAIR_OUTPUTS = Pair._fields
HUB_OUTPUTS = HubPair._fields

LEVELS_EXPLAINED = (
    "**What the heatmaps show.** For each pixel, how much each pyramid level contributes to the model's "
    "decision there, as a share that sums to 1 over the four levels. "
    "**FPN + IFA:** the first layer of the IFA MLP is linear in its input [PE(r₁), z₁, …, PE(r₄), z₄], so its "
    "pre-activation is *exactly* bias + Σₗ (W_pe,ₗ·PE(rₗ) + W_z,ₗ·zₗ); the heatmap of level l is "
    "‖W_pe,ₗ·PE(rₗ) + W_z,ₗ·zₗ‖₂ divided by the sum of the four norms. "
    "**Semantic FPN:** its head sums four per-level branches (conv + upsampling) at stride 4 before a linear "
    "classifier, so the heatmap of level l is ‖branchₗ‖₂ over the sum of the four. Note that FPN's top-down "
    "pathway has already mixed coarser levels into each finer one before the head (so it has in an IFA model "
    "that reads the FPN neck's outputs, `ifa_features: fpn`, as the FPN-neck variant pair's does; the paper's IFA, "
    "the default pair's, reads per-level 1x1 maps without that pathway). "
    "Both are norms of additive terms, not gradients: a large share means a large term, not necessarily "
    "agreement with the final class.")
PCA_EXPLAINED = (
    "**Features.** Each model's final per-pixel features (IFA: the last hidden layer of the MLP; Semantic FPN: "
    "the summed stride-4 features before the classifier) projected onto their first three principal components, "
    "shown as R, G, B (each stretched between its 1st and 99th percentile). The baseline's features live on the "
    "stride-4 grid and are shown bilinearly upsampled, which is exactly what its linear classifier + upsampling "
    "does; IFA's are queried at every pixel when 'full resolution' is chosen.")


def _domain(pair, baseline, ifa) -> tuple[bool | None, dict[str, float | None]]:
    """(in domain: every calibrated model at least as confident as its threshold, None without calibration;
    {model name: confidence}) of one run (ifa.domain)."""
    confidences = {"baseline": baseline.confidence, "ifa": ifa.confidence}
    verdict = None if None in confidences.values() else in_domain(confidences, pair.domain)
    return verdict, {MODELS[role]: None if c is None else round(c, 4) for role, c in confidences.items()}


def _outside_notice(pair, baseline, ifa) -> str:
    parts = [f"{MODELS[role]} {output.confidence:.2f} (its threshold {pair.domain[role].threshold:.2f})"
             for role, output in (("baseline", baseline), ("ifa", ifa)) if pair.domain.get(role)]
    return (f"⚠️ This picture looks unlike the pair's training data ({pair.dataset or 'its dataset'}): the models are "
            f"less sure of their classes than on 98% of their val images (mean top-class probability "
            f"{', '.join(parts)}). If it is not a street scene, its labels are the pair's classes painted on "
            f"something else; if it is (another city or camera), expect lower accuracy than on the pair's val split.")


def _classes(value, names: list[str]) -> tuple[list[str] | None, str]:
    """(the class names to colour, None = all; a notice naming the unknown ones and the valid ones, or "") from the
    `classes` value: None (all), one name, or a list of names."""
    if value is None:
        return None, ""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"classes must be a list of class names (or None for all), got {shorten(value)}")
    unknown = [v for v in value if v not in names]
    if not unknown:
        return list(value), ""
    shown = ", ".join(shorten(v) for v in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return [v for v in value if v in names], (f"unknown class name(s) ignored: {shown}; this pair's classes are "
                                              f"{', '.join(names)}")


class AppService(DatasetView):
    """State shared by all sessions: registry, samples, loaded pairs (engine.PAIRS), results, files.

    `settings` (default: `AppSettings.from_env()` now) configure everything; `registry_file`, `results_capacity`
    and `results_mb` override its registry, max_sessions and run_mb."""

    def __init__(self, registry_file: str | os.PathLike | None = None, results_capacity: int | None = None,
                 results_mb: float | None = None, settings: AppSettings | None = None):
        self.settings = settings = settings or AppSettings.from_env()
        engine.configure(settings)
        registry_file = Path(registry_file) if registry_file else settings.registry
        self.registry_error = None
        try:
            self.registry = read_registry(registry_file, settings.home, settings.allow_local_pairs)
        except RegistryError as err:
            self.registry = Registry({}, None, registry_file, settings.home, settings.allow_local_pairs)
            self.registry_error = public_message(str(err), settings.home)
        self.samples: list[Sample] = list_samples(settings)
        self._samples_by_name = {s.name: s for s in self.samples}
        capacity = results_capacity or settings.max_sessions
        ttl = 60 * settings.result_minutes
        # The bytes every session's stored runs may hold together (ResultStore; README, "Settings"); the dataset
        # view's cache of label maps gets a quarter of it on top.
        self.run_bytes = int(results_mb * 2 ** 20) if results_mb else settings.run_bytes
        self.files_root = make_files_root()  # removed at exit and on SIGTERM / SIGINT (ifa.app.tempdirs)
        self.results = ResultStore(capacity, self.files_root, ttl, budget=self.run_bytes)
        self._identities: dict[str, tuple] = {}
        self.labels = LabelCache(self.run_bytes // 4)
        self._first_lock = threading.Lock()
        self._first: tuple[Sample, Result] | None = None

    @property
    def thumbs_dir(self) -> Path:
        """The gallery's thumbnails: in the app's temp folder, so they go with it."""
        return self.files_root / "thumbs"

    # --- what the UI is built from ---------------------------------------------------------------
    def pair_choices(self) -> list[tuple[str, str]]:
        return self.registry.choices()

    @property
    def default_pair(self) -> str | None:
        return self.registry.default

    def sample_names(self) -> list[str]:
        return [s.name for s in self.samples]

    def pair_dataset(self, pair_id: str | None) -> str:
        """The class set of a pair (ifa.data.classes name) from the registry, else of the loaded pair; "" unknown."""
        try:
            spec = self.registry.get(str(pair_id)) if pair_id else None
        except PairError:
            return ""
        if spec is None:
            return ""
        if spec.dataset:
            return spec.dataset
        return engine.PAIRS.get(spec).dataset if engine.PAIRS.cached(spec.id) else ""

    def _gallery_items(self, pair_id) -> list[tuple[str, Sample, bool]]:
        """(thumbnail, sample, scorable) of every shipped sample and the folder's up to settings.gallery
        (IFA_APP_GALLERY, default 24) in all, those whose label the pair can score (own label set or a written
        mapping) first; thumbnails are cached on disk."""
        classes = self.pair_dataset(pair_id)
        limit = self.settings.gallery
        shipped = [s for s in self.samples if s.origin == "manifest"]
        shown = shipped + [s for s in self.samples if s.origin == "folder"][:max(0, limit - len(shipped))]
        ranked = sorted(((s, s.scorable(classes)) for s in shown), key=lambda item: not item[1])
        return [(thumb, s, ok) for s, ok in ranked if (thumb := thumbnail(s, self.thumbs_dir)) is not None]

    def gallery(self, pair_id: str | None = None) -> list[tuple[str, str]]:
        """(thumbnail path, caption) of the gallery for a pair (default: the default pair)."""
        items = []
        for thumb, sample, ok in self._gallery_items(pair_id or self.default_pair):
            if sample.label is None:
                note = ""
            elif ok:
                note = " · labelled"
            else:
                note = " · label not scored"
            items.append((thumb, sample.name.split(" (")[0] + note))  # the description is in the sample's info
        return items

    def sample_info(self, name: str | None) -> str:
        """Markdown next to the gallery: the picked sample's dataset, label format, source and licence."""
        sample = self._samples_by_name.get(str(name or ""))
        return sample.describe() if sample else ""

    def class_names(self, pair_id: str | None) -> list[str]:
        """Class names of a pair from the registry (without loading it), else of the loaded pair."""
        if not pair_id:
            return []
        try:
            spec = self.registry.get(pair_id)
        except PairError:
            return []
        if spec.classes:
            return list(spec.classes)
        if engine.PAIRS.cached(spec.id):
            return engine.PAIRS.get(spec).class_names
        return []

    def catalog(self) -> dict:
        """Pairs, samples and device, as JSON (the /catalog endpoint)."""
        return {
            "device": engine.device_description(),
            "default_pair": self.default_pair,
            "pairs": [engine.pair_summary(spec) for spec in self.registry.pairs.values()],
            "samples": [s.summary() for s in self.samples],
            "registry": public_path(self.registry.path, self.settings.home) if self.registry.path else None,
            "registry_error": self.registry_error,
        }

    # --- pairs ------------------------------------------------------------------------------------
    def _spec(self, pair_id) -> PairSpec:
        if self.registry_error and not self.registry.pairs and not str(pair_id or "").startswith("hub:"):
            raise UserError(f"no model pairs: {self.registry_error}")
        if not pair_id:
            raise UserError("choose a model pair first")
        return self.registry.get(str(pair_id))

    def _status(self, pair) -> str:
        spec = pair.spec
        lines = [f"**{spec.title}** · {pair.num_classes} classes · on {engine.device_description()} · "
                 f"loaded in {pair.load_seconds:.1f} s",
                 f"baseline: {spec.baseline.describe()} · IFA: {spec.ifa.describe()}"]
        record = pair.ifa_resolution
        if record:
            best = "every-pixel query" if record["best"] == "full" else "stride-4 grid"
            lines.append(f"IFA output: {record['stride4']:.2f} val mIoU on its stride-4 grid, {record['full']:.2f} "
                         f"queried at every pixel; the {best} is this pair's default")
        lines += [f"note: {n}" for n in pair.notes]
        return "  \n".join(lines)

    @guarded("loading the model pair")
    def load_pair(self, pair_id):
        """Load a pair (cached) -> (status markdown, class filter update, gallery)."""
        pair = engine.load_pair(self._spec(pair_id))
        names = pair.class_names
        return Pair(self._status(pair), gr.update(choices=names, value=names), self.gallery(pair_id))

    @guarded("loading the model pair")
    def pair_resolution(self, pair_id):
        """The IFA resolution option for a (loaded) pair: its best on val, with its card's numbers as the help."""
        pair = engine.load_pair(self._spec(pair_id))
        return gr.update(value=pair.best_resolution, info=self.resolution_info(pair))

    @staticmethod
    def resolution_info(pair) -> str:
        """The resolution option's help for a loaded pair: what the every-pixel query costs, with its card's numbers."""
        record = pair.ifa_resolution if pair is not None else None
        if not record:
            return IFA_RESOLUTION_INFO
        verdict = "better" if record["full"] >= record["stride4"] else "worse"
        return (f"{IFA_RESOLUTION_INFO}; for this pair's IFA model it is {verdict}: {record['full']:.2f} val mIoU "
                f"against {record['stride4']:.2f} on the stride-4 grid (its card), so the pair starts on the "
                f"{'every-pixel query' if record['best'] == 'full' else 'stride-4 grid'}")

    def _default_loaded(self):
        """The default pair, loaded (cached), or None when it cannot load (the status line reports why)."""
        try:
            return engine.load_pair(self.registry.get(self.default_pair))
        except Exception:  # noqa: BLE001 - the status line reports a pair that cannot load
            return None

    def default_resolution(self) -> str:
        """The IFA output resolution the page starts with: the default pair's best on val (stride4 when unknown)."""
        pair = self._default_loaded()
        return pair.best_resolution if pair is not None else "stride4"

    def default_resolution_info(self) -> str:
        """The resolution option's help the page starts with (`resolution_info` of the default pair)."""
        return self.resolution_info(self._default_loaded())

    def preload_default(self) -> str:
        """Load the default pair at start-up; returns the status line (an error message if it fails)."""
        if not self.default_pair:
            return f"No model pair available: {self.registry_error or 'the registry lists none'}"
        try:
            pair = engine.load_pair(self.registry.get(self.default_pair))
        except (PairError, RegistryError) as err:
            return f"⚠️ The default pair could not be loaded: {public_message(str(err), self.settings.home)}"
        return self._status(pair)

    @guarded("loading the Hub pair")
    def load_hub_pair(self, baseline_repo, baseline_revision, ifa_repo, ifa_revision):
        """Load two Hub repos as a pair -> (pair dropdown update, status markdown, class filter update)."""
        spec = hub_pair(str(baseline_repo or ""), str(ifa_repo or ""), baseline_revision, ifa_revision,
                        allow_local=self.settings.allow_local_pairs, home=self.settings.home)
        pair = engine.load_pair(spec)
        names = pair.class_names
        # In this session's dropdown only: a pair one user loads is not added to everyone's list.
        return HubPair(gr.update(choices=[*self.pair_choices(), (spec.title, spec.id)], value=spec.id),
                       self._status(pair), gr.update(choices=names, value=names), self.gallery(spec.id))

    # --- inputs -----------------------------------------------------------------------------------
    def _options(self, scales, flip, ifa_resolution, spec: PairSpec | None = None) -> tuple[Options, list[str]]:
        """Options parsed strictly; an empty `ifa_resolution` is the pair's best on val (its card's record, else the
        stride-4 grid)."""
        notices = []
        if isinstance(scales, (str, int, float)):
            scales = [scales]
        if scales is not None and not isinstance(scales, (list, tuple)):
            raise UserError(f"scales must be a list of numbers, e.g. [\"1.0\"], got {shorten(scales)}")
        values = []
        for s in scales or []:
            v = _float(s, "a scale", 0.0, 1e9, 1.0)
            if not 0.25 <= v <= 2.0:
                raise UserError(f"scales must lie between 0.25 and 2.0, got {shorten(s)}")
            values.append(v)
        values = sorted(set(values))
        if not values:
            values = [1.0]
            notices.append("no inference scale chosen: using 1.0")
        if len(values) > MAX_SCALES:
            raise UserError(f"choose at most {MAX_SCALES} scales (got {len(values)}): each one runs both models again")
        resolution = ifa_resolution or (engine.load_pair(spec).best_resolution if spec is not None else "stride4")
        if not isinstance(resolution, str) or resolution not in dict((v, k) for k, v in IFA_RESOLUTIONS):
            raise UserError(f"IFA output resolution must be 'stride4' or 'full', got {shorten(ifa_resolution)}")
        return Options(tuple(values), _bool(flip, "flip"), resolution), notices

    def plan(self, result_id, scales, flip, ifa_resolution):
        """What the options will run as on the shown image (or a 1024 px one), before the run: (scales, markdown).
        More than MAX_SCALES ticked keeps the first MAX_SCALES (so the page never asks for what is refused); what
        the work budget would drop is said."""
        ticked = [s for s in SCALE_CHOICES if s in (scales or [])]
        note = ""
        if len(ticked) > MAX_SCALES:
            note = f" At most {MAX_SCALES} scales: kept {', '.join(ticked[:MAX_SCALES])}."
            ticked = ticked[:MAX_SCALES]
        options, _ = self._options(ticked, flip, ifa_resolution)
        result = self.results.get(result_id)
        h, w = result.size if result is not None else (768, 1024)
        fitted, dropped = options.within(h, w, engine.WORK_BUDGET_MPX)
        where = "the shown image" if result is not None else "a 1024 × 768 image"
        text = (f"On {where}: {options.work_mpx(h, w):.1f} Mpx of model input (the limit is "
                f"{engine.WORK_BUDGET_MPX:g} Mpx a request).")
        text += f" ⚠️ {dropped[0]}" if dropped else f" Runs as chosen: {fitted.describe()}."
        return ticked, text + note

    def _image(self, image, sample, ground_truth, label_set, num_classes: int, dataset: str):
        """(name, uint8 image, gt or None, notices) from an upload (its label in `label_set`, "" = the pair's)
        or a sample name (its label in the sample's declared set)."""
        with received_file(image, self.files_root) as path:
            return self._image_from(path, image, sample, ground_truth, label_set, num_classes, dataset)

    def _image_from(self, path, image, sample, ground_truth, label_set, num_classes: int, dataset: str):
        notices: list[str] = []
        label_path = None
        if path:
            name = Path(path).name
            if isinstance(image, dict) and image.get("orig_name"):
                name = str(image["orig_name"])
            loaded = self._load_image(path)
            with received_file(ground_truth, self.files_root) as label_file:
                return self._with_label(name, loaded, label_file, label_set, num_classes, dataset, notices)
        elif sample:
            if sample not in self._samples_by_name:
                raise UserError(f"unknown sample {shorten(sample)}; {len(self.samples)} samples are listed "
                                f"(see /catalog)")
            s = self._samples_by_name[sample]
            name = s.name
            loaded = self._load_image(s.image)
            label_path, label_set = s.label, s.label_set
            if _path_of(ground_truth):  # a sample brings its own label (or none): one sent with it is not used
                notices.append(f"the label sent with the sample is ignored: a sample is scored with its own "
                               f"{'label' if s.label else 'label, and ' + s.name + ' has none'}; upload the image "
                               f"to score it with another label")
        else:
            raise UserError("no image: upload one or pick a sample")
        return self._with_label(name, loaded, label_path, label_set, num_classes, dataset, notices)

    def _load_image(self, path):
        """An image at this server's limits (settings.max_side, max_pixels)."""
        return load_image(path, self.settings.max_side, self.settings.max_pixels)

    @staticmethod
    def _with_label(name, loaded, label_path, label_set, num_classes: int, dataset: str, notices: list[str]):
        notices = notices + loaded.notices
        gt = None
        if label_path:
            try:
                w, h = loaded.image.shape[1], loaded.image.shape[0]
                gt, label_notices = load_label(label_path, (w, h), num_classes, str(label_set or ""), dataset)
                notices += label_notices
            except ImageLoadError as err:
                notices.append(f"ground truth not used: {err}")
        return name, loaded.image, gt, notices

    # --- the main run ---------------------------------------------------------------------------
    @guarded("segmenting the image")
    def segment(self, image, ground_truth, sample, pair_id, scales, flip, ifa_resolution, opacity, classes,
                min_area, label_set="", previous_result_id=None, progress=PROGRESS, request: gr.Request = None):
        """The main run; `label_set` is the uploaded label's format (ifa.data.label_sets, "" = the pair's);
        `previous_result_id` (the session's state) is the run it replaces in the store; `request` (Gradio's) says
        which client ran it (ifa.app.results.client_of), for the store's fairness."""
        spec = self._spec(pair_id)
        options, notices = self._options(scales, flip, ifa_resolution, spec)
        pair = engine.load_pair(spec)
        name, array, gt, image_notices = self._image(image, sample, ground_truth, label_set, pair.num_classes,
                                                     pair.dataset)
        options, budget_notices = options.within(*array.shape[:2], engine.WORK_BUDGET_MPX)
        notices = image_notices + notices + budget_notices  # shown once, in the notices above the outputs
        progress(0.1, desc=f"running both models ({options.describe()})")
        result = self._compare(spec, name, array, gt, options, notices)
        progress(0.9, desc="comparing the predictions")
        return self._show(result, previous_result_id, opacity, classes, min_area, client_of(request))

    def segment_in_page(self, image, ground_truth, sample, pair_id, scales, flip, ifa_resolution, opacity, classes,
                        min_area, label_set="", previous_result_id=None, progress=PROGRESS,
                        request: gr.Request = None):
        """The page's runs (Run, an upload, a sample, a pair switch): /segment, except that a mistake (a bad upload,
        option or label) while a run is shown keeps that run on screen and says what was wrong in a warning; with
        nothing shown the error takes the outputs, as /segment's. With no image at all (a pair switch before any
        run) nothing happens."""
        if not _path_of(image) and not sample:
            return Segment.kept()
        try:
            return self.segment(image, ground_truth, sample, pair_id, scales, flip, ifa_resolution, opacity, classes,
                                min_area, label_set, previous_result_id, progress, request)
        except gr.Error as err:
            if self.results.get(previous_result_id) is None:
                raise
            gr.Warning(f"{err.message} (the result shown is unchanged)")
            return Segment.kept()

    def _compare(self, spec: PairSpec, name: str, array: np.ndarray, gt, options: Options, notices,
                 analyse: bool | None = None) -> Result:
        """Both models on one image -> a Result (not yet stored); `analyse` as engine.compare's."""
        pair = engine.load_pair(spec)
        baseline, ifa, analysis = engine.compare(spec, array, options, analyse)
        if _domain(pair, baseline, ifa)[0] is False:
            notices = [*notices, _outside_notice(pair, baseline, ifa)]
        return Result(name=name, image=array, gt=gt, spec=spec, class_names=pair.class_names, palette=pair.palette,
                      baseline_align_corners=bool(pair.baseline.config.align_corners), options=options,
                      baseline=baseline, ifa=ifa, notices=notices, device=engine.device_description(),
                      dataset=pair.dataset, analysis=analysis)

    def _show(self, result: Result, previous_result_id, opacity, classes, min_area, client: str = "") -> tuple:
        """Store a session's new run (compacted, replacing its previous one), write its files -> SEGMENT_OUTPUTS."""
        self.results.add(result.compact(), replaces=previous_result_id, client=client)
        result.files = views.write_label_maps(result, self.results.folder(result))
        outputs = self._views(result, opacity, classes, min_area)
        return Segment(result.id, *outputs, click_view=result.image, downloads=result.files)

    # --- the first page ----------------------------------------------------------------------------
    def first_paint(self) -> Result | None:
        """The comparison a new page shows: the gallery's first sample on the default pair, default options,
        feature views included; computed once per server (None when there is no pair or sample)."""
        with self._first_lock:
            if self._first is None and self.default_pair:
                items = self._gallery_items(self.default_pair)
                if not items:
                    return None
                spec, sample = self._spec(self.default_pair), items[0][1]
                pair = engine.load_pair(spec)
                name, array, gt, notices = self._image(None, sample.name, None, "", pair.num_classes, pair.dataset)
                options, more = Options((1.0,), False, "stride4").within(*array.shape[:2], engine.WORK_BUDGET_MPX)
                result = self._compare(spec, name, array, gt, options, notices + more)
                self._feature_views(result)
                result.compact()
                result.shared = array_ids(result)  # the sessions' copies share these arrays: not counted
                self._first = (sample, result)
        return self._first[1] if self._first else None

    def welcome(self, previous_result_id=None, request: gr.Request = None):
        """Page load: a copy of `first_paint` for this session -> (sample, sample info, *SEGMENT_OUTPUTS)."""
        try:
            template = self.first_paint()
        except Exception:  # noqa: BLE001 - the page then simply starts empty
            log.exception("the first comparison could not be computed")
            template = None
        if template is None:
            return Welcome.kept()
        sample = self._first[0]
        result = dataclasses.replace(template, id=uuid.uuid4().hex[:12], notices=list(template.notices), files=[])
        return Welcome(sample.name, sample.describe(),
                       *self._show(result, previous_result_id, DEFAULT_OPACITY, None, DEFAULT_MIN_AREA,
                                   client_of(request)))

    def _result(self, result_id) -> Result:
        """The session's stored run, else a one-line UserError: evicted (memory), expired, or none yet."""
        result = self.results.get(result_id)
        if result is not None:
            return result
        gone = self.results.why_gone(result_id)
        if gone:
            raise UserError(gone)
        if result_id:
            raise UserError(f"this run is no longer kept (runs are kept {self.results.ttl / 60:g} min after their "
                            f"last use): press Run to compute it again")
        raise UserError("no result to show yet: run a segmentation first (API: segment; on the page: Run)")

    @guarded("redrawing the results")
    def render(self, result_id, opacity, classes, min_area):
        return self._views(self._result(result_id), opacity, classes, min_area)

    @guarded("attaching the ground truth")
    def attach_label(self, result_id, ground_truth, opacity, classes, min_area, label_set=""):
        """A label attached to (or removed from) the shown run: re-score it without running the models again.
        `label_set`: the label's format (ifa.data.label_sets), "" = the pair's classes."""
        result = self.results.get(result_id)
        path = _path_of(ground_truth)
        if result is None:
            gone = self.results.why_gone(result_id)
            if gone:
                gr.Warning(gone)
            elif path:
                gr.Info("upload or pick the image first, then attach its label: a new image clears the label")
            return Views.kept()
        if path:
            w, h = result.image.shape[1], result.image.shape[0]
            try:
                gt, notices = load_label(path, (w, h), result.num_classes, str(label_set or ""), result.dataset)
            except ImageLoadError as err:  # a side input: the shown run stays as it is
                gr.Warning(public_message(f"ground truth not used, the shown result is unchanged: {err}",
                                          self.settings.home))
                return Views.kept()
            result.gt, result.ablation = gt, None  # the ablation's verdicts depend on the label
            result.notices = [n for n in result.notices if not n.startswith("ground truth")] + notices
        else:
            result.gt, result.ablation = None, None
        self.results.update(result)
        return self._views(result, opacity, classes, min_area)

    def _views(self, result: Result, opacity, classes, min_area) -> tuple:
        opacity = _float(opacity, "opacity", 0.0, 1.0, 0.5)
        min_area = int(_float(min_area, "the smallest region size", 1, 10 ** 7, DEFAULT_MIN_AREA))
        classes, class_notice = _classes(classes, result.class_names)
        visible = views.visible_mask(result.class_names, classes)
        comparison = views.compare(result, min_area)
        top = comparison.regions[:TOP_REGIONS]
        gt_view, base_plain, ifa_plain = views.overlays(result, opacity, visible)
        base_view, ifa_view = views.boxed(base_plain, top), views.boxed(ifa_plain, top)
        h, w = result.size
        b_ms, i_ms = 1000 * result.baseline.seconds, 1000 * result.ifa.seconds
        run_on = f"on {result.device}, {w} × {h} px, {result.options.describe()}"
        baseline_time = f"**Semantic FPN: {b_ms:.0f} ms** wall time {run_on}"
        ifa_time = f"**FPN + IFA: {i_ms:.0f} ms** wall time {run_on}"
        legend = legend_html(result.class_names, result.palette, views.present_classes(result), visible)
        summary = self._summary(result, comparison, min_area)
        summary_scores, curves = summary["scores"], summary["boundary_accuracy"]
        region_rows = views.region_rows(result, top)
        notices = [f"**{result.name}** · {w} × {h} px · pair {result.spec.title} · the models disagree on "
                   f"{summary['differing_percent']:.2f}% of the pixels ({len(comparison.regions)} regions of "
                   f"≥ {min_area} px)"
                   + ("" if result.gt is not None else " · no ground truth: scores and verdicts need a label map")]
        notices += [f"- {n}" for n in result.notices] + ([f"- {class_notice}"] if class_notice else [])
        notices += [f"- {n}" for n in views.false_positive_notes(summary_scores)] if summary_scores else []
        return Views(
            notices="\n".join(notices), input_view=result.image, gt_view=gt_view, baseline_view=base_view,
            ifa_view=ifa_view, baseline_time=baseline_time, ifa_time=ifa_time, legend=legend,
            slider=(base_plain, ifa_plain), diff_view=views.difference_view(result, comparison, TOP_REGIONS),
            verdict_legend=verdict_legend_html(result.gt is not None),
            regions=_table(views.REGION_HEADERS, region_rows),
            scores=_table(views.SCORE_HEADERS, views.score_rows(result, summary_scores) if summary_scores else []),
            boundary_plot=views.boundary_figure(curves) if curves else None, summary=_jsonable(summary))

    @staticmethod
    def _summary(result: Result, comparison, min_area: int) -> dict:
        """Every number of a run as plain data (the summary JSON of /segment and of the stateless tool)."""
        h, w = result.size
        b_ms, i_ms = 1000 * result.baseline.seconds, 1000 * result.ifa.seconds
        differing = 100 * comparison.differing / max(comparison.total, 1)
        return {
            "result_id": result.id, "image": result.name, "size": {"height": h, "width": w},
            "pair": engine.pair_summary(result.spec), "device": result.device,
            "options": {"scales": list(result.options.scales), "flip": result.options.flip,
                        "ifa_resolution": result.options.ifa_resolution},
            "timings_ms": {"baseline": round(b_ms, 1), "ifa": round(i_ms, 1)},
            "notices": result.notices, "has_ground_truth": result.gt is not None,
            "differing_pixels": comparison.differing, "differing_percent": round(differing, 3),
            "verdict_pixels": {VERDICTS[v]: int((comparison.verdicts == v).sum()) for v in VERDICTS},
            "min_area": min_area,
            "regions": [dict(r.to_dict(), rank=k + 1, baseline_class_name=result.class_names[r.baseline_class],
                             ifa_class_name=result.class_names[r.ifa_class])
                        for k, r in enumerate(comparison.regions[:50])],
            "region_count": len(comparison.regions),
            "scores": views.scores(result), "boundary_accuracy": views.boundary_curves(result),
            "class_names": result.class_names, "palette": result.palette,
            **dict(zip(("in_domain", "confidence"), _domain(engine.load_pair(result.spec), result.baseline,
                                                           result.ifa))),
        }

    # --- the stateless tool (API /compare_models and the MCP server) ---------------------------------
    @guarded("comparing the models")
    def compare_models(self, image, label=None, pair_id=None, scales=None, flip=False, ifa_resolution="",
                       label_set=""):
        """Compare a Semantic FPN baseline with FPN + IFA (implicit feature alignment, ECCV 2022) on one image.

        Stateless: everything comes back in one answer, nothing is kept for a later call.

        Args:
            image: the image to segment (a file; over MCP an http(s) URL or a data: URL).
            label: optional ground-truth label map, a single-channel PNG whose format `label_set` names.
            pair_id: a model pair id (see the catalog); empty for the default pair.
            scales: inference scales between 0.25 and 2.0, e.g. ["1.0"] (default) or ["0.75", "1.0", "1.25"].
            flip: also average a left-right flipped copy.
            ifa_resolution: "stride4" (the IFA head on the stride-4 grid + bilinear upsampling, as trained), "full"
                (IFA queried at every pixel), or empty (default) for the pair's better one on val, as the IFA model's
                card records it (the catalog's "ifa_resolution").
            label_set: the label's format: "" (the pair's class indices), "camvid", "cityscapes_labelids",
                "cityscapes_trainids", "ade20k", "pascal_context" or "pascal_context_60".

        Returns:
            A JSON document: "summary" (every number: per-class IoU and mIoU of both models when a label is given,
            pixels where they disagree and who is right there, the largest disagreement regions, boundary-band
            accuracy, timings, notices) and "label_maps" ({"semantic-fpn", "fpn-ifa"}: base64 palette PNGs, pixel
            value = class index, colours = the summary's palette).
        """
        spec = self._spec(pair_id or self.default_pair)
        options, notices = self._options(scales or ["1.0"], flip, ifa_resolution, spec)
        pair = engine.load_pair(spec)
        name, array, gt, image_notices = self._image(image, None, label, label_set, pair.num_classes, pair.dataset)
        options, budget_notices = options.within(*array.shape[:2], engine.WORK_BUDGET_MPX)
        result = self._compare(spec, name, array, gt, options, image_notices + notices + budget_notices,
                               analyse=False)
        summary = self._summary(result, views.compare(result, DEFAULT_MIN_AREA), DEFAULT_MIN_AREA)
        summary.pop("result_id")  # nothing is kept: there is no run to refer to later
        maps = {tag: base64.b64encode(data).decode("ascii") for tag, data in views.label_map_pngs(result).items()}
        return json.dumps({"summary": _jsonable(summary), "label_maps": maps})

    # --- feature alignment ----------------------------------------------------------------------
    def _analysed(self, result: Result) -> Result:
        if result.analysis is None:
            engine.load_pair(result.spec)  # loaded outside the GPU function (a no-op when cached)
            result.analysis = engine.analyse(result.spec, result.image, result.options.ifa_resolution,
                                             result.baseline, result.ifa)
            self.results.update(result)
        return result

    @guarded("analysing the features")
    def analyse(self, result_id, progress=PROGRESS):
        result = self._result(result_id)
        views_ = self._feature_views(result, progress)
        self.results.update(result.compact())  # the heads' inside and features are shown: freed
        return views_

    def _feature_views(self, result: Result, progress=PROGRESS) -> tuple:
        """ANALYSE_OUTPUTS of a run, computed once and kept with it."""
        if result.feature_views is None:
            start = time.perf_counter()
            progress(0.1, desc="looking inside both models")
            a = self._analysed(result).analysis
            ifa_panel, fpn_panel = views.level_panels(result)
            ifa_pca, fpn_pca, ifa_var, fpn_var = views.pca_images(result)
            a.ifa_features = a.fpn_features = None  # shown now; the probe needs only the levels and logits
            result.baseline.inside = result.ifa.inside = None  # the analysis holds what it needs of them
            where = ("queried at every pixel" if a.ifa_query_size == a.padded_size else
                     f"on the stride-4 grid ({a.ifa_query_size[0]} × {a.ifa_query_size[1]})")
            md = (f"{LEVELS_EXPLAINED}\n\n{PCA_EXPLAINED}\n\n"
                  f"Computed at scale 1, unflipped; IFA {where}; baseline grid {a.fpn_grid_size[0]} × "
                  f"{a.fpn_grid_size[1]}. Variance explained by the three components: FPN + IFA "
                  f"{', '.join(f'{100 * v:.0f}%' for v in ifa_var)}; Semantic FPN "
                  f"{', '.join(f'{100 * v:.0f}%' for v in fpn_var)}. "
                  f"Analysis took {time.perf_counter() - start:.2f} s on {result.device}.\n\n"
                  f"{views.offsets_explained(engine.load_pair(result.spec).ifa_offset_ablation)}")
            result.feature_views = (ifa_panel, fpn_panel, ifa_pca, fpn_pca, md)
        return result.feature_views

    @guarded("zeroing the offsets")
    def alignment_ablation(self, result_id):
        """The offset ablation of the shown run (ifa.app.ablation) -> ABLATION_OUTPUTS; computed once per run."""
        result = self._analysed(self._result(result_id))
        if not engine.load_pair(result.spec).ifa.is_ifa:
            raise UserError("the pair's second model is not an IFA model: it has no offsets to zero")
        if result.ablation is None:
            a = result.analysis
            strides = [round(a.padded_size[1] / w) for _, w in a.ifa_level_sizes]
            labels = engine.offset_ablation(result.spec, a.ifa_levels, result.size)
            result.ablation = ablation_summary(result, labels, strides, DEFAULT_MIN_AREA, TOP_REGIONS)
            self.results.update(result)
        image, summary = result.ablation
        return image, ablation_markdown(summary), _jsonable({"image": result.name, **summary})

    @guarded("probing the pixel")
    def probe(self, result_id, x, y):
        result = self._analysed(self._result(result_id))
        h, w = result.size
        if x is None or y is None or x == "" or y == "":
            raise UserError("give the pixel to probe: x (column) and y (row)")
        xi, yi = _float(x, "x", -1e9, 1e9, 0), _float(y, "y", -1e9, 1e9, 0)
        if not (0 <= xi < w and 0 <= yi < h):
            raise UserError(f"pixel ({xi:g}, {yi:g}) is outside the {w} × {h} image (x in 0..{w - 1}, y in 0..{h - 1})")
        point = (int(xi), int(yi))
        a = result.analysis
        ifa_point = engine.query_point(result.spec, a.ifa_levels, np.array([normalised_point(point, a.padded_size)]))[0]
        view = views.probe_view(result, point, ifa_point)
        names = result.class_names
        top = lambda d: max(d, key=d.get)  # noqa: E731
        mode_note = ("IFA was queried exactly at this pixel (full-resolution mode)."
                     if result.options.ifa_resolution == "full" else
                     "In stride-4 mode IFA's output here is bilinearly interpolated from the four nearest "
                     "stride-4 queries, like the baseline's; the cells drawn are what a query exactly at this "
                     "pixel reads (what full-resolution mode computes).")
        multi = (len(result.options.scales) > 1 or result.options.flip)
        gt_value = int(result.gt[point[1], point[0]]) if result.gt is not None else 255
        gt_name = names[gt_value] if gt_value < len(names) else "unknown"
        md = (f"**Pixel (x={point[0]}, y={point[1]})** — ground truth: {gt_name}"
              f" · Semantic FPN says **{top(view.baseline_probs)}** ({max(view.baseline_probs.values()):.2f}) · "
              f"FPN + IFA says **{top(view.ifa_probs)}** ({max(view.ifa_probs.values()):.2f})"
              + (" (averaged over scales / flips)" if multi else "") + ".\n\n"
              f"IFA queried exactly here (scale 1): **{top(view.ifa_point_probs)}** "
              f"({max(view.ifa_point_probs.values()):.2f}); the baseline's four-cell mix (scale 1): "
              f"**{top(view.baseline_mix_probs)}** ({max(view.baseline_mix_probs.values()):.2f}). {mode_note}\n\n"
              "Left: for each level the cell whose feature IFA reads (nearest cell, one colour per level) and the "
              "offset r from its centre to the query point, which IFA encodes with its position encoding. Right: "
              "the four stride-4 cells whose logits Semantic FPN's final bilinear upsampling mixes here, with "
              "their weights (line thickness).")
        return (view.panel, view.baseline_probs, view.ifa_probs,
                _table(views.PROBE_HEADERS, view.rows), md, view.marked, point[0], point[1])

    def probe_select(self, result_id, evt: gr.SelectData):
        """Click on the image (gr.Image select event: evt.index == [x, y])."""
        index = evt.index if isinstance(evt.index, (list, tuple)) and len(evt.index) == 2 else None
        if index is None:
            raise gr.Error("click inside the image to probe a pixel", print_exception=False)
        return self.probe(result_id, index[0], index[1])

    @guarded("probing the largest difference")
    def auto_probe(self, result_id):
        """Probe the centre of the largest difference region (else the image centre) after a run."""
        result = self.results.get(result_id)
        if result is None:
            return Probe.kept()
        b, i = result.baseline.labels, result.ifa.labels
        regions = views.compare(result, DEFAULT_MIN_AREA).regions
        if regions:
            cy, cx = regions[0].centroid
            ys, xs = np.nonzero(b != i)
            k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))  # a differing pixel nearest the centroid
            x, y = int(xs[k]), int(ys[k])
        else:
            y, x = result.size[0] // 2, result.size[1] // 2
        return self.probe(result_id, x, y)

    # --- samples ----------------------------------------------------------------------------------
    def pick_gallery(self, pair_id, evt: gr.SelectData):
        """Gallery click -> (sample name, cleared upload, cleared upload label, the sample's attribution)."""
        items = self._gallery_items(pair_id or self.default_pair)
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(items):
            raise gr.Error("pick a sample from the gallery", print_exception=False)
        sample = items[index][1]
        return sample.name, None, None, sample.describe()
