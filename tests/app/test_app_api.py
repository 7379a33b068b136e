"""The app through its API (gradio_client against the app launched on localhost, once for this module).

A CamVid val sample with ground truth and an upload without: every output is present and consistent
with the library (label maps at the image's size, difference regions = the maps' disagreement,
per-class IoU = ifa.metrics on the same maps, probe probabilities = the label maps at that pixel).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SAMPLE, LaunchedApp, app_env, camvid_label, samples_folder
from PIL import Image

from ifa.cards import offset_ablation
from ifa.compare import difference_regions
from ifa.metrics import DEFAULT_TRIMAP_WIDTHS, boundary_distance

pytestmark = [pytest.mark.slow,  # gradio's own pandas deprecation notices
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
SEGMENT = ("notices", "input_view", "gt_view", "baseline_view", "ifa_view", "baseline_time", "ifa_time", "legend",
           "slider",
           "diff_view", "verdict_legend", "regions", "scores", "boundary_plot", "summary", "click_view", "downloads")


@pytest.fixture(scope="module")
def app(pair_registry, tmp_path_factory):
    registry, _ = pair_registry
    launched = LaunchedApp(app_env(registry, samples_folder(), tmp_path_factory.mktemp("dl")))
    yield launched
    launched.close()


def segment(client, pair_id, image=None, sample=None, scales=("1.0",), flip=False, resolution="stride4",
            opacity=0.5, classes=None, min_area=64, ground_truth=None) -> dict:
    from gradio_client import handle_file

    out = client.predict(handle_file(str(image)) if image else None, handle_file(str(ground_truth)) if ground_truth
                         else None, sample, pair_id, list(scales), flip, resolution, opacity, classes, min_area,
                         api_name="/segment")
    return dict(zip(SEGMENT, out))


def assert_offsets_explained(md: str, pair_registry) -> None:
    """The analysis quotes the IFA model card's offset ablation (or says there is none) and points to the
    per-image ablation (its counts: tests/app/test_app_ablation.py)."""
    registry, pair_id = pair_registry
    spec = next(p for p in json.loads(Path(registry).read_text())["pairs"] if p["id"] == pair_id)
    recorded = offset_ablation(ROOT / spec["ifa"]["path"])
    if recorded:  # the shipped model's card records its ablation; the app quotes it
        assert f"{recorded['offsets_zeroed']:.2f} with offsets zeroed" in md
    else:
        assert "records no offset ablation" in md
    assert "Zero the IFA offsets on this image" in md


def read(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_catalog_lists_pairs_samples_and_device(app, pair_registry):
    catalog = app.client.predict(api_name="/catalog")
    assert catalog["default_pair"] == pair_registry[1]
    assert catalog["pairs"][0]["id"] == pair_registry[1]  # the default first (the shipped registry has a second)
    names = [s["name"] for s in catalog["samples"]]
    assert any(n.startswith("KITTI") for n in names) and any(n.startswith("ADE20K") for n in names)
    assert catalog["device"].startswith(("CPU", "CUDA"))


def test_sample_with_ground_truth_everything_consistent(app, pair_registry, camvid_val):
    pair_id = pair_registry[1]
    start = time.perf_counter()
    out = segment(app.client, pair_id, sample=f"{camvid_val.name}/{SAMPLE}")
    first_result = time.perf_counter() - start
    print(f"first result (both models + comparison) for a 480x360 CamVid image: {first_result:.2f} s wall")
    summary = out["summary"]
    assert summary["size"] == {"height": 360, "width": 480} and summary["has_ground_truth"]
    for key in ("input_view", "gt_view", "baseline_view", "ifa_view", "diff_view", "click_view"):
        assert out[key] and read(out[key]).shape[:2] == (360, 480), key
    assert len(out["slider"]) == 2 and all(read(p).shape[:2] == (360, 480) for p in out["slider"])
    assert "ms" in out["baseline_time"] and "Semantic FPN" in out["baseline_time"] and "ms" in out["ifa_time"]
    assert "Road" in out["legend"] and "IFA fixed it" in out["verdict_legend"]
    assert out["boundary_plot"] and out["boundary_plot"]["type"] == "matplotlib"

    # The downloadable label maps: palette PNGs at the image's size.
    assert len(out["downloads"]) == 2
    maps = {}
    for path in out["downloads"]:
        with Image.open(path) as img:
            assert img.mode == "P" and img.size == (480, 360)
            maps["ifa" if "fpn-ifa" in Path(path).name else "baseline"] = np.asarray(img).astype(np.int64)
    baseline, ifa = maps["baseline"], maps["ifa"]
    gt = camvid_label(camvid_val)

    # Difference regions are exactly the components of the two maps' disagreement.
    assert summary["differing_pixels"] == int((baseline != ifa).sum())
    expected = difference_regions(baseline, ifa, gt, min_area=64)
    assert summary["region_count"] == len(expected)
    for got, want in zip(summary["regions"], expected):
        assert tuple(got["box"]) == want.box and got["area"] == want.area and got["verdict"] == want.verdict
    assert [row[3] for row in out["regions"]["data"]] == [r.area for r in expected[:len(out["regions"]["data"])]]

    # Per-class IoU (table and JSON), recomputed by hand: both models over the classes in the ground truth,
    # other predicted classes as false-positive pixel counts.
    names = summary["class_names"]
    scored = gt != 255
    present = sorted(int(c) for c in np.unique(gt[scored]))
    for key, pred in (("Semantic FPN", baseline), ("FPN + IFA", ifa)):
        p, t = pred[scored], gt[scored]
        want = {names[c]: 100 * ((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in present}
        got = summary["scores"][key]
        assert got["mIoU"] == pytest.approx(np.mean(list(want.values())), abs=1e-6)
        assert {n: v for n, v in got["per_class"].items() if v is not None}.keys() == want.keys()
        for name, value in want.items():
            assert got["per_class"][name] == pytest.approx(value, abs=1e-6)
        false_positives = {names[c]: int((p == c).sum()) for c in set(np.unique(p).tolist()) - set(present)}
        assert got["false_positive_pixels"] == false_positives
    table = {row[0]: row for row in out["scores"]["data"]}
    assert table["mIoU (classes in the ground truth)"][1] == pytest.approx(summary["scores"]["Semantic FPN"]["mIoU"],
                                                                         abs=0.006)
    for name in names:
        want_b = summary["scores"]["Semantic FPN"]["per_class"][name]
        if want_b is not None:
            assert table[name][1] == pytest.approx(want_b, abs=0.006)
    curves = summary["boundary_accuracy"]  # ifa.compare.boundary_bands of this image, recounted here
    assert curves["widths"] == list(DEFAULT_TRIMAP_WIDTHS)
    near = boundary_distance(gt) < 4
    for key, pred in (("Semantic FPN", baseline), ("FPN + IFA", ifa)):
        j = curves["widths"].index(4)
        assert curves[key]["pixels"][j] == int(near.sum())
        assert curves[key]["accuracy"][j] == pytest.approx(100 * (pred[near] == gt[near]).mean(), abs=1e-6)
        assert curves[key]["overall"]["accuracy"] == pytest.approx(100 * (pred[scored] == gt[scored]).mean(),
                                                                   abs=1e-6)

    # Feature analysis, then a probe: same session, so the same result.
    ifa_levels, fpn_levels, ifa_pca, fpn_pca, md = app.client.predict(api_name="/analyse")
    for path in (ifa_levels, fpn_levels):
        assert read(path).ndim == 3
    for path in (ifa_pca, fpn_pca):
        assert read(path).shape[:2] == (360, 480)
    assert "exactly" in md and "principal components" in md
    assert_offsets_explained(md, pair_registry)
    x, y = 100, 200
    panel, b_probs, i_probs, table, probe_md, marked, px, py = app.client.predict(x, y, api_name="/probe")
    assert read(panel).ndim == 3 and read(marked).shape[:2] == (360, 480) and (px, py) == (x, y)
    assert b_probs["label"] == names[baseline[y, x]] and i_probs["label"] == names[ifa[y, x]]
    for probs in (b_probs, i_probs):  # the top 5 of a distribution, best first
        confidences = [c["confidence"] for c in probs["confidences"]]
        assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1.01
    rows = table["data"]
    assert [r[0] for r in rows[:4]] == [f"IFA level {i} (stride {4 * 2 ** (i - 1)})" for i in range(1, 5)]
    assert sum(r[6] for r in rows[4:]) == pytest.approx(1.0, abs=1e-3)
    assert f"x={x}, y={y}" in probe_md

    # Redraw with another opacity and one class shown: same maps and regions, different overlay.
    redrawn = dict(zip(SEGMENT, app.client.predict(0.9, ["Road"], 64, api_name="/render")))
    assert redrawn["summary"]["regions"] == summary["regions"]
    assert not np.array_equal(read(redrawn["baseline_view"]), read(out["baseline_view"]))


def test_upload_without_ground_truth_multiscale_flip_full_resolution(app, pair_registry, tmp_path):
    path = tmp_path / "upload.jpg"
    with Image.open(ROOT / "assets/samples/kitti/000003_10.png") as img:
        img.resize((224, 168)).save(path, quality=90)
    out = segment(app.client, pair_registry[1], image=path, scales=("1.0", "0.75"), flip=True, resolution="full")
    summary = out["summary"]
    assert summary["size"] == {"height": 168, "width": 224} and not summary["has_ground_truth"]
    assert summary["options"] == {"scales": [0.75, 1.0], "flip": True, "ifa_resolution": "full"}
    assert out["gt_view"] is None and out["boundary_plot"] is None and out["scores"]["data"] == []
    assert summary["scores"] is None and "no ground truth" in out["notices"]
    maps = [read(p) for p in out["downloads"]]
    assert all(m.shape == (168, 224) for m in maps)
    assert summary["differing_pixels"] == int((maps[0] != maps[1]).sum())
    assert all(r["verdict_name"] == "no ground truth" for r in summary["regions"])
    *_, md = app.client.predict(api_name="/analyse")
    assert "queried at every pixel" in md
