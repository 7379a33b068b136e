"""The app's logic without a server: probe geometry against the models' own arithmetic, the level
decompositions against the heads, image loading, the registry, samples, the feature PCA and the output images'
encoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ifa.app.images import ImageLoadError, load_image, load_label
from ifa.app.probe import bilinear_footprint, ifa_reads, mix_logits, normalised_point
from ifa.app.registry import PairError, RegistryError, hub_pair, parse_hub_pair_id, read_registry
from ifa.models import create_model
from ifa.models.geometry import CENTRE_SHIFT, grid_reads
from ifa.models.ifa import grid_cells, query_centres
from ifa.viz.colors import overlay
from ifa.viz.pca import pca_rgb


@pytest.mark.parametrize("size,grid,align", [((360, 480), (90, 120), False), ((37, 53), (10, 14), False),
                                             ((37, 53), (10, 14), True), ((64, 64), (16, 16), True)])
def test_bilinear_footprint_reproduces_torch_upsampling(size, grid, align):
    logits = torch.randn(1, 5, *grid, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=align)[0].numpy()
    rng = np.random.default_rng(0)
    points = [(0, 0), (size[1] - 1, size[0] - 1)] + [(int(rng.integers(size[1])), int(rng.integers(size[0])))
                                                     for _ in range(40)]
    for x, y in points:
        cells = bilinear_footprint((x, y), size, grid, align)
        assert sum(c.weight for c in cells) == pytest.approx(1.0)
        np.testing.assert_allclose(mix_logits(logits[0].numpy(), cells), up[:, y, x], atol=1e-5)


@pytest.mark.parametrize("size,levels", [((360, 480), [(90, 120), (45, 60), (23, 30), (12, 15)]),
                                         ((37, 53), [(10, 14), (5, 7), (3, 4), (2, 2)])])
def test_ifa_reads_use_the_heads_cell_rule(size, levels):
    h, w = size
    for level, (h_l, w_l) in enumerate(levels):
        ky, ry = grid_cells(h, h_l)
        kx, rx = grid_cells(w, w_l)
        for x, y in [(0, 0), (w - 1, h - 1), (w // 3, h // 2), (7, 11)]:
            read = ifa_reads((x, y), size, levels)[level]
            assert read.cell == (int(ky[y]), int(kx[x]))
            assert read.offset == pytest.approx((float(ry[y]), float(rx[x])), abs=1e-5)
            qy, qx = normalised_point((x, y), size)  # the pixel centre the head is queried at, as its grid holds it
            assert (qy, qx) == (float(query_centres(h)[y]), float(query_centres(w)[x]))
            assert qy == pytest.approx(-1 + (2 * y + 1) / h, abs=1e-6) and qx == pytest.approx(-1 + (2 * x + 1) / w,
                                                                                                abs=1e-6)
            cx, cy = read.centre
            assert read.box[0] <= x + 0.5 <= read.box[2] and read.box[1] <= y + 0.5 <= read.box[3]
            assert read.offset_px == pytest.approx((x + 0.5 - cx, y + 0.5 - cy))


@pytest.mark.parametrize("size,levels", [((360, 480), [(90, 120), (45, 60), (23, 30), (12, 15)]),
                                         ((37, 53), [(10, 14), (5, 7), (3, 4), (2, 2)])])
def test_ifa_reads_follow_the_centred_read(size, levels):
    """A centred-read model (a variant): the probe shows the cell the head reads (its own grid_reads), the offset
    from where that cell's feature sits (CENTRE_SHIFT of a cell up-left), and a box of the queries that read it."""
    h, w = size
    for level, (h_l, w_l) in enumerate(levels):
        (ky, ry), (kx, rx) = grid_reads(h, h_l, "centred"), grid_reads(w, w_l, "centred")
        ch, cw = h / h_l, w / w_l
        for x, y in [(0, 0), (w - 1, h - 1), (w // 3, h // 2), (7, 11)]:
            read = ifa_reads((x, y), size, levels, read="centred")[level]
            assert read.cell == (int(ky[y]), int(kx[x]))
            assert read.offset == pytest.approx((float(ry[y]), float(rx[x])), abs=1e-5)
            cx, cy = read.centre
            assert (cx, cy) == pytest.approx(((read.cell[1] + 0.5 - CENTRE_SHIFT) * cw,
                                              (read.cell[0] + 0.5 - CENTRE_SHIFT) * ch))
            # the offset in cell units is the pixel offset over half a cell, as the head measures it
            assert read.offset == pytest.approx(((y + 0.5 - cy) / (ch / 2), (x + 0.5 - cx) / (cw / 2)), abs=1e-4)
            inside = 0 < x < w - 1 and 0 < y < h - 1
            if inside:
                assert read.box[0] <= x + 0.5 <= read.box[2] and read.box[1] <= y + 0.5 <= read.box[3]


def test_inspect_returns_the_heads_own_decompositions():
    """SegmentationModel.inspect: per-level norms of exactly the terms each head sums, its features and logits."""
    import ifa
    from ifa.app.engine import _shares

    torch.manual_seed(0)
    common = dict(backbone="efficientnet_lite0", num_classes=4, neck_channels=16)
    fpn = ifa.create_model(architecture="fpn", head_channels=8, **common).eval()
    model = ifa.create_model(architecture="ifa", mlp_channels=[32, 16], **common).eval()
    x = torch.randn(1, 3, 72, 88)
    with torch.no_grad():
        levels = fpn.levels(x)
        inside = fpn.inspect(levels)
        branches = fpn.decoder.head.level_branches(levels)
        torch.testing.assert_close(inside.level_norms[0], torch.stack([b[0].norm(dim=0) for b in branches]))
        torch.testing.assert_close(inside.features, sum(branches))
        torch.testing.assert_close(inside.logits, fpn.head_logits(levels))
        feats = model.levels(x)
        head = model.decoder.head
        terms = head.first_layer_terms(feats, (18, 22))
        inside = head.inspect(feats, (18, 22))
        torch.testing.assert_close(inside.level_norms[0], torch.stack([t[0].norm(dim=0) for t in terms]))
        torch.testing.assert_close(inside.features, head.decode_features(feats, (18, 22)))
        torch.testing.assert_close(inside.logits, model.head_logits(feats, (18, 22)), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.inspect(feats, (18, 22)).logits, inside.logits)
        with pytest.raises(ValueError, match="only an IFA head"):
            fpn.inspect(levels, (18, 22))
    shares = _shares(inside.level_norms[0].numpy())
    np.testing.assert_allclose(shares.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("read", ["nearest", "ensemble", "centred"])
@pytest.mark.parametrize("size", [(18, 22), (9, 11), (36, 44), (25, 31), (40, 17)])
def test_level_term_norms_equal_the_terms_norms(size, read):
    """The norms from the expansion ||z||^2 + ||e||^2 + 2 z.e (by rows or by columns, in chunks; the variant reads:
    the terms in row chunks) equal the norms of the terms first_layer_terms builds, at grid sizes with integer,
    non-integer and tied level ratios."""
    torch.manual_seed(1)
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=4, neck_channels=16,
                         mlp_channels=[32, 16], ifa_read=read).eval()
    with torch.no_grad():
        feats = model.levels(torch.randn(2, 3, 72, 88))
        head = model.decoder.head
        expected = torch.stack([t.norm(dim=1) for t in head.first_layer_terms(feats, size)], dim=1)
        for budget in (2 ** 22, 100):  # 100: one query row (column) per chunk
            torch.testing.assert_close(head.level_term_norms(feats, size, budget=budget), expected,
                                       rtol=1e-5, atol=1e-5)


def test_load_image_conversions_and_refusals(tmp_path):
    gray16 = tmp_path / "g16.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).save(gray16)
    loaded = load_image(gray16)
    assert loaded.image.shape == (48, 64, 3) and loaded.image.dtype == np.uint8 and loaded.notices
    big = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (10, 20, 30)).save(big)
    loaded = load_image(big, max_side=500)
    assert loaded.image.shape == (250, 500, 3) and "downscaled from 2000 x 1000" in loaded.notices[-1]
    with pytest.raises(ImageLoadError, match="at least 32 px"):
        load_image(_save(tmp_path / "tiny.png", Image.new("RGB", (20, 500))))
    with pytest.raises(ImageLoadError, match="Mpx"):
        load_image(big, max_pixels=1_000_000)
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")


def _save(path, img):
    img.save(path)
    return path


def test_load_label_checks_values_against_the_format_and_checks_size(tmp_path):
    raw = np.array([[0, 3, 11], [11, 255, 10]], dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    path = _save(tmp_path / "l.png", Image.fromarray(raw))
    label, notes = load_label(path, (48, 32), 11)  # 11 (unlabelled) and 255 are legal and not scored
    assert set(np.unique(label)) == {0, 3, 10, 255} and not notes
    # A value the format does not hold is never scored silently: it fits several formats here, so it is refused.
    bad = _save(tmp_path / "bad.png", Image.fromarray(np.where(raw == 11, 12, raw).astype(np.uint8)))
    with pytest.raises(ImageLoadError, match=r"outside the pair's class indices \(0-10.*\(12: 33.3% .*they fit"):
        load_label(bad, (48, 32), 11)
    label, notes = load_label(path, (96, 64), 11)  # same aspect: resized with a notice
    assert label.shape == (64, 96) and notes
    with pytest.raises(ImageLoadError, match="is 48 x 32 px but the image"):
        load_label(path, (100, 20), 11)
    with pytest.raises(ImageLoadError, match="single-channel"):
        load_label(_save(tmp_path / "rgb.png", Image.new("RGB", (48, 32))), (48, 32), 11)


def test_registry_parsing_and_hub_pair_ids(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"pairs": [{"id": "a", "baseline": {"source": "local", "path": "x"},
                                           "ifa": {"source": "hub", "repo_id": "org/i", "revision": "v1"}}]}))
    registry = read_registry(path)
    assert registry.default == "a" and registry.pairs["a"].ifa.revision == "v1"
    spec = parse_hub_pair_id("hub:org/b@abc|org/i")
    assert (spec.baseline.location, spec.baseline.revision, spec.ifa.revision) == ("org/b", "abc", None)
    assert hub_pair("org/b", "org/i", "abc").id == spec.id
    with pytest.raises(PairError, match="unknown model pair"):
        registry.get("zzz")
    with pytest.raises(PairError, match="IFA repo id is empty"):
        hub_pair("org/b", " ")
    with pytest.raises(PairError, match="not a Hub repo id"):
        hub_pair("a b", "org/i")
    for bad, message in (("[]", "'pairs' list"), ("{", "not valid JSON"),
                         ('{"pairs": [{"id": "a", "baseline": {"source": "ftp"}, "ifa": {}}]}', "'local' or 'hub'"),
                         ('{"default": "b", "pairs": []}', "default pair 'b'")):
        path.write_text(bad)
        with pytest.raises(RegistryError, match=message):
            read_registry(path)


def test_folder_samples_find_camvid_style_labels(tmp_path, monkeypatch):
    from ifa.app.samples import folder_samples

    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    for name in ("b.png", "a.png"):
        _save(tmp_path / "val" / name, Image.new("RGB", (40, 40)))
    _save(tmp_path / "valannot" / "a.png", Image.new("L", (40, 40)))
    monkeypatch.setenv("IFA_SAMPLES_DIR", str(tmp_path / "val"))
    samples = folder_samples()
    assert [s.name for s in samples] == ["val/a.png", "val/b.png"]
    assert samples[0].label is not None and samples[1].label is None


def test_pca_rgb_separates_two_feature_clusters():
    feats = np.zeros((8, 10, 12), dtype=np.float32)
    feats[0, :, :6] = 5.0
    feats += np.random.default_rng(0).normal(0, 0.01, feats.shape).astype(np.float32)
    rgb, explained = pca_rgb(feats, (24, 20))
    assert rgb.shape == (20, 24, 3) and explained[0] > 0.9
    assert abs(int(rgb[:, :10, 0].mean()) - int(rgb[:, 14:, 0].mean())) > 150


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_blends_drawn_pixels_and_keeps_the_rest(alpha):
    """overlay against the formula per pixel: round((1 - alpha) image + alpha colour) where the class is drawn
    (a class past the palette in black, negative labels as 0); the image where the label is ignored (255 and
    above) or its class hidden."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    labels = rng.integers(0, 7, (13, 17)).astype(np.int64)
    labels[0, :4] = [255, -3, 300, 4]
    palette = rng.integers(0, 256, (5, 3))
    visible = np.array([True, False, True, True, True, True])
    out = overlay(image, labels, palette, alpha, visible=visible)
    clipped = np.clip(labels, 0, 255)
    drawn = (clipped < 255) & (clipped != 1)
    colours = np.concatenate([palette, np.zeros((251, 3), int)])[clipped]
    a = np.float32(alpha)  # the blend in float32
    expected = np.floor((1 - a) * image.astype(np.float32) + a * colours.astype(np.float32) + np.float32(0.5))
    np.testing.assert_array_equal(out, np.where(drawn[..., None], expected.astype(np.uint8), image))
    assert np.array_equal(overlay(image, labels, palette, alpha, visible=np.zeros(7, bool)), image)


def test_zero_gpu_one_call_per_comparison_with_a_duration_from_the_request():
    """With a `spaces` package present, spaces.GPU wraps `compare` (one call per comparison; its duration a
    function of the image size and options), the lazy `analyse` and the on-request offset ablation; the probe
    is not a GPU call (a subprocess,
    so that this process keeps its own engine)."""
    import subprocess
    import sys

    code = ("import sys, types\n"
            "calls = []\n"
            "fake = types.ModuleType('spaces')\n"
            "fake.GPU = lambda duration=None: (lambda fn: calls.append((fn.__name__, duration)) or fn)\n"
            "sys.modules['spaces'] = fake\n"
            "import ifa.app.engine as e\n"
            "print(sorted((name, d if isinstance(d, int) else d.__name__) for name, d in calls))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    assert out.stdout.strip() == "[('analyse', 60), ('compare', 'gpu_seconds'), ('offset_ablation', 30)]"

    from ifa.app.engine import GPU_BASE_SECONDS, GPU_MAX_SECONDS, Options, gpu_seconds

    small, large = np.zeros((360, 480, 3), np.uint8), np.zeros((1024, 2048, 3), np.uint8)
    one = gpu_seconds(None, small, Options(), analyse=False)
    assert GPU_BASE_SECONDS < one < gpu_seconds(None, small, Options(), analyse=True)
    assert one < gpu_seconds(None, large, Options()) < gpu_seconds(None, large, Options((0.5, 1.0, 1.5), True))
    assert gpu_seconds(None, large, Options((1.0, 1.5, 2.0), True, "full")) == GPU_MAX_SECONDS


def test_missing_default_pair_is_reported_not_raised(tmp_path):
    import gradio as gr

    from ifa.app import AppService

    registry = tmp_path / "registry.json"
    gone = {"id": "gone", "baseline": {"source": "local", "path": str(tmp_path / "a")},
            "ifa": {"source": "local", "path": str(tmp_path / "b")}}
    registry.write_text(json.dumps({"pairs": [gone]}))
    service = AppService(registry)
    status = service.preload_default()
    assert "could not be loaded" in status and "checkpoint folder not found" in status
    with pytest.raises(gr.Error, match="cannot load the baseline model"):
        service.segment(None, None, None, "gone", ["1.0"], False, "stride4", 0.5, None, 64)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    service = AppService(broken)
    assert "not valid JSON" in service.preload_default()
    with pytest.raises(gr.Error, match="no model pairs"):
        service.load_pair("x")


def test_result_store_keeps_each_sessions_latest_run(tmp_path, monkeypatch):
    """A session's new run replaces its previous one (files deleted); other sessions' runs stay until more than
    `capacity` sessions are live (least recently used first) or a run goes unused for `ttl` seconds."""
    from types import SimpleNamespace

    from ifa.app import results as results_module
    from ifa.app.results import ResultStore

    clock = [0.0]
    monkeypatch.setattr(results_module.time, "monotonic", lambda: clock[0])
    store = ResultStore(capacity=3, files_root=tmp_path, ttl=100)
    runs = [SimpleNamespace(id=f"r{i}") for i in range(6)]
    for run in runs[:3]:
        store.add(run)
        store.folder(run)
    store.add(runs[3], replaces="r0")  # session 0 runs again
    assert store.get("r0") is None and not (tmp_path / "r0").exists() and len(store) == 3
    assert store.get("r1") is runs[1]  # r1 used: r2 is now the least recently used
    store.add(runs[4])  # a fourth session
    assert store.get("r2") is None and store.get("r1") is runs[1] and store.get("r3") is runs[3]
    clock[0] = 150  # r4 unused since t=0, r1 and r3 since t=0 too: all expire
    assert store.get("r4") is None and len(store) == 0


def test_attaching_and_removing_a_label_rescores_the_shown_run(pair_registry, camvid_val, tmp_path):
    """The service directly: a run without ground truth, a label attached (scores appear, the models do not run
    again), the label removed (scores gone); before any run the label is refused with what to do."""
    from ifa.app.service import RENDER_OUTPUTS, SEGMENT_OUTPUTS, AppService

    service = AppService(pair_registry[0])
    sample = sorted(p.name for p in camvid_val.glob("*.png"))[0]
    image = str(camvid_val / sample)
    label = str(camvid_val.parent / f"{camvid_val.name}annot" / sample)
    out = dict(zip(SEGMENT_OUTPUTS, service.segment({"path": image}, None, None, pair_registry[1], ["1.0"], False,
                                                    "stride4", 0.5, None, 64)))
    assert out["summary"]["has_ground_truth"] is False and out["summary"]["scores"] is None
    result = service.results.get(out["result_state"])
    outputs_before = (result.baseline, result.ifa)
    attached = dict(zip(RENDER_OUTPUTS, service.attach_label(out["result_state"], {"path": label}, 0.5, None, 64)))
    assert attached["summary"]["has_ground_truth"] and attached["summary"]["scores"]["FPN + IFA"]["mIoU"] > 0
    assert (result.baseline, result.ifa) == outputs_before  # re-scored, not re-run
    removed = dict(zip(RENDER_OUTPUTS, service.attach_label(out["result_state"], None, 0.5, None, 64)))
    assert removed["summary"]["scores"] is None
    # classes=None (all) redraws
    redrawn = dict(zip(RENDER_OUTPUTS, service.render(out["result_state"], 0.5, None, 64)))
    assert redrawn["summary"]["differing_pixels"] == out["summary"]["differing_pixels"]
    # no run yet: nothing is redrawn (the user is told to pick the image first)
    assert all(v == {"__type__": "update"} for v in service.attach_label(None, {"path": label}, 0.5, None, 64))


def test_local_folders_in_typed_pairs_only_when_the_operator_allows(monkeypatch):
    monkeypatch.delenv("IFA_APP_ALLOW_LOCAL_PAIRS", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    names = ("checkpoints/camvid-effl0-fpn", "checkpoints/camvid-effl0-ifa")
    assert hub_pair(*names).baseline.source == "hub"  # read as a repo id: the Hub is asked, not the disk
    monkeypatch.setenv("IFA_APP_ALLOW_LOCAL_PAIRS", "1")
    spec = hub_pair(*names)
    assert (spec.baseline.source, spec.ifa.source) == ("local", "local")
    monkeypatch.setenv("SPACE_ID", "org/space")  # never on a Space
    assert hub_pair(*names).ifa.source == "hub"


def test_options_are_reduced_to_the_work_budget_with_a_notice():
    from ifa.app.engine import FULL_RESOLUTION_WORK, Options

    asked = Options((0.5, 1.0, 1.5, 2.0), True, "full")
    assert asked.work_mpx(480, 640) == pytest.approx(480 * 640 * 7.5 * 2 * FULL_RESOLUTION_WORK / 1e6)
    kept, notices = asked.within(480, 640, 2.0)
    assert kept == Options((0.5, 1.0, 1.5), False, "stride4") and kept.work_mpx(480, 640) <= 2.0
    assert "full-resolution IFA, the flip, scale 2 dropped" in notices[0] and "2 Mpx" in notices[0]
    assert asked.within(480, 640, 100.0) == (asked, [])
    alone, notices = Options((2.0,), False, "stride4").within(1000, 1000, 2.0)
    assert alone.scales == (1.0,) and "1.0 used instead" in notices[0]


def test_fast_image_components_encode_arrays_into_gradios_cache(tmp_path):
    from ifa.app.components import FastImage, FastImageSlider, encoded

    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    png = encoded(smooth, str(tmp_path), "png")
    assert Path(png).parent.parent == tmp_path and np.array_equal(np.asarray(Image.open(png)), smooth)  # lossless
    jpeg = np.asarray(Image.open(encoded(smooth, str(tmp_path), "jpeg"))).astype(int)
    assert jpeg.shape == smooth.shape and np.abs(jpeg - smooth).mean() < 4  # quality 90, no chroma subsampling
    assert encoded("a/path.png", str(tmp_path), "png") == "a/path.png" and encoded(None, str(tmp_path), "png") is None
    image, slider = FastImage(format="png"), FastImageSlider(format="png")
    assert image.get_block_name() == "image" and slider.get_block_name() == "imageslider"  # Gradio's own frontend
    data = image.postprocess(smooth)
    assert np.array_equal(np.asarray(Image.open(data.path)), smooth)
    pair = slider.postprocess((smooth, smooth[::-1]))
    assert np.array_equal(np.asarray(Image.open(pair.root[1].path)), smooth[::-1])
