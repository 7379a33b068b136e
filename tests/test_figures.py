"""Tests of ifa.figures, ifa.viz.figure and ifa.prediction_cache.

The command-line tests run the shipped CamVid pair (checkpoints/camvid-effl0-{fpn,ifa}) when it is
there, two small random-init models otherwise, on 3 CamVid val images downscaled to 240 px:
two shards, then the merge run (which must not predict again), then a regeneration from the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ifa.compare import boundary_bands, disagreement
from ifa.data.classes import get_dataset_info
from ifa.data.datasets import read_image
from ifa.figures import (
    DEFAULT_MAX_SIMILARITY,
    build_figure,
    image_descriptor,
    image_scores,
    main,
    make_row,
    select_images,
)
from ifa.inference import Predictor
from ifa.prediction_cache import (
    CacheItem,
    ModelIdentity,
    PredictionCache,
    array_key,
    identify_model,
    merge_caches,
    parse_shard,
    predict_to_cache,
)
from ifa.prediction_cache import main as cache_main
from ifa.viz.figure import PanelRow, columns, figure_bytes, pixel_size, square_box

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"baseline": REPO / "checkpoints" / "camvid-effl0-fpn", "ifa": REPO / "checkpoints" / "camvid-effl0-ifa"}
CAMVID = Path(os.environ.get("IFA_CAMVID_ROOT") or REPO.parent / "shared" / "data" / "camvid")
INFO = get_dataset_info("camvid")
ROWS = 3


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    """Small inputs on a shared machine: two intra-op threads at most."""
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The shipped CamVid pair when present, else two small random-init models with CamVid's classes."""
    if all((path / "config.json").is_file() for path in SHIPPED.values()):
        return SHIPPED
    import ifa

    folder = tmp_path_factory.mktemp("models")
    out = {}
    for role, arch, extra in (("baseline", "fpn", {"head_channels": 32}), ("ifa", "ifa", {"mlp_channels": [64, 32]})):
        torch.manual_seed(len(out))
        model = ifa.create_model(architecture=arch, backbone="efficientnet_lite0", num_classes=INFO.num_classes,
                                 class_names=list(INFO.class_names), palette=[list(c) for c in INFO.palette],
                                 dataset="camvid", neck_channels=32, **extra)
        out[role] = ifa.save_pretrained(model, folder / arch)
    return out


@pytest.fixture(scope="module")
def camvid() -> Path:
    if not (CAMVID / "val").is_dir() or not (CAMVID / "valannot").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CamVid val not found at {CAMVID} (set IFA_CAMVID_ROOT)")
        pytest.skip(f"CamVid val not found at {CAMVID} (set IFA_CAMVID_ROOT)")
    return CAMVID


@pytest.fixture(scope="module")
def figure_run(models, camvid, tmp_path_factory) -> dict:
    """Shards 0/2 and 1/2 fill the cache; the merge run then draws without predicting anything."""
    tmp = tmp_path_factory.mktemp("figure")
    common = ["--baseline", str(models["baseline"]), "--ifa", str(models["ifa"]), "--dataset", "camvid",
              "--root", str(camvid), "--split", "val", "--limit", str(ROWS), "--max-side", "240",
              "--rows", str(ROWS), "--boxes", "2", "--min-area", "16", "--max-box", "1", "--dpi", "100",
              "--panel-width", "1.5", "--batch-size", "1", "--boundary", "--boundary-widths", "1", "4", "16",
              "--cache", str(tmp / "cache"), "--no-progress"]
    for shard in ("0/2", "1/2"):
        assert main([*common, "--shard", shard]) == 0
    out = tmp / "fig.png"
    with pytest.MonkeyPatch.context() as mp:
        def no_prediction(self, x):
            raise AssertionError("the merge run predicted an image that the shards had cached")

        mp.setattr(Predictor, "probabilities", no_prediction)
        assert main([*common, "--out", str(out)]) == 0
    manifest = json.loads((tmp / "fig.manifest.json").read_text())
    return {"tmp": tmp, "out": out, "manifest": manifest, "cache": tmp / "cache"}


# --- the command line on CamVid val ------------------------------------------------------------------


def test_rows_and_panels_in_manifest_and_png(figure_run, camvid):
    manifest = figure_run["manifest"]
    fig = manifest["figure"]
    assert fig["rows"] == ROWS and len(manifest["rows"]) == ROWS
    assert fig["columns"] == ["Input", "Semantic FPN", "FPN + IFA", "Ground truth"]
    val_names = sorted(p.name for p in (camvid / "val").iterdir())
    assert sorted(manifest["images"]) == val_names[:ROWS]
    assert {row["name"] for row in manifest["rows"]} == set(val_names[:ROWS])
    with Image.open(figure_run["out"]) as png:
        assert png.size == tuple(fig["size_px"])
        assert png.size == (round(fig["size_in"][0] * 100), round(fig["size_in"][1] * 100))
    # the default ranking: largest mIoU gain of IFA over the baseline first
    gains = [row["scores"]["gain"] for row in manifest["rows"]]
    assert gains == sorted(gains, reverse=True)
    for model in manifest["models"].values():
        assert len(model["sha256"]) == 64 and model["revision"] is None
    here = Path(figure_run["out"]).parent  # the manifest names its own outputs relative to its folder
    boundary = json.loads((here / manifest["boundary"]["numbers"]).read_text())
    assert boundary["widths"] == [1, 4, 16] and boundary["images"] == ROWS
    assert (here / manifest["boundary"]["plot"]).is_file()


def test_regenerating_from_manifest_gives_identical_bytes(figure_run):
    """Without the cache: both models run again and the PNG comes out byte for byte the same."""
    again = figure_run["tmp"] / "again.png"
    manifest_path = figure_run["out"].with_name("fig.manifest.json")
    assert main(["--from-manifest", str(manifest_path), "--out", str(again), "--no-cache", "--no-progress"]) == 0
    assert again.read_bytes() == figure_run["out"].read_bytes()
    tmp = figure_run["tmp"]
    assert (tmp / "again.boundary.png").read_bytes() == (tmp / "fig.boundary.png").read_bytes()
    regenerated = json.loads((figure_run["tmp"] / "again.manifest.json").read_text())
    assert regenerated["rows"] == figure_run["manifest"]["rows"]


def test_boxes_lie_on_disagreement_regions(figure_run, models):
    manifest = figure_run["manifest"]
    labels = {}
    for role in ("baseline", "ifa"):
        _, identity = identify_model(models[role])
        (entry,) = figure_run["cache"].glob(f"{identity.sha256[:16]}/*/entry.json")
        cache = PredictionCache(figure_run["cache"], identity, json.loads(entry.read_text())["options"])
        labels[role] = {row["name"]: cache.get(row["key"]) for row in manifest["rows"]}
    boxed = 0
    for row in manifest["rows"]:
        differ = disagreement(labels["baseline"][row["name"]], labels["ifa"][row["name"]])
        assert row["scores"]["disagreement"] == pytest.approx(100 * differ.mean())
        assert len(row["regions"]) <= 2
        assert [r["area"] for r in row["regions"]] == sorted((r["area"] for r in row["regions"]), reverse=True)
        for region in row["regions"]:
            top, left, bottom, right = region["box"]
            inside = differ[top:bottom, left:right]
            assert region["area"] >= 16 and inside.sum() >= region["area"]
            # the region's bounding box is tight: every edge row / column holds a differing pixel
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            t, lft, b, r = region["drawn_box"]
            assert t <= top and lft <= left and b >= bottom and r >= right
            boxed += 1
        if differ.sum() >= 16 and not row["regions"]:
            pytest.fail(f"{row['name']} has disagreement but no box")
    assert boxed > 0


def test_image_folders_list_selection_and_no_ground_truth(figure_run, models, camvid, tmp_path):
    """--images/--labels with --select list; without labels: 3 columns, rows by disagreement (cache hits)."""
    names = sorted(p.name for p in (camvid / "val").iterdir())[:2]
    for sub in ("val", "valannot"):
        (tmp_path / sub).mkdir()
        for name in names:
            (tmp_path / sub / name).write_bytes((camvid / sub / name).read_bytes())
    (tmp_path / "list.txt").write_text(f"# two rows, in this order\n{Path(names[1]).stem}\n{names[0]}\n")
    common = ["--baseline", str(models["baseline"]), "--ifa", str(models["ifa"]), "--max-side", "240",
              "--dpi", "50", "--panel-width", "1.0", "--no-legend", "--cache", str(figure_run["cache"]),
              "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:  # same files and options as figure_run: all cached
        mp.setattr(Predictor, "probabilities", lambda self, x: pytest.fail("predicted a cached image"))
        assert main([*common, "--images", str(tmp_path / "val"), "--labels", str(tmp_path / "valannot"),
                     "--select", "list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "list.png")]) == 0
        assert main([*common, "--images", str(tmp_path / "val"), "--rows", "1",
                     "--out", str(tmp_path / "nogt.pdf")]) == 0
    listed = json.loads((tmp_path / "list.manifest.json").read_text())
    assert [row["name"] for row in listed["rows"]] == [names[1], names[0]]
    assert listed["figure"]["columns"][-1] == "Ground truth"
    assert listed["scores"] == {n: s for n, s in figure_run["manifest"]["scores"].items() if n in names}
    nogt = json.loads((tmp_path / "nogt.manifest.json").read_text())
    assert nogt["figure"]["columns"] == ["Input", "Semantic FPN", "FPN + IFA"]
    most = max(names, key=lambda n: figure_run["manifest"]["scores"][n]["disagreement"])
    assert [row["name"] for row in nogt["rows"]] == [most] and set(nogt["rows"][0]["scores"]) == {"disagreement"}
    assert (tmp_path / "nogt.pdf").read_bytes().startswith(b"%PDF")


def test_cli_errors_are_one_line_and_nonzero(capsys, tmp_path):
    cases = [
        ([], "give both models"),
        (["--baseline", "a", "--ifa", "b", "--images", str(tmp_path), "--out", "x.jpg"], "--out must end in"),
        (["--baseline", "a", "--ifa", "b", "--images", str(tmp_path), "--out", "x.png", "--select", "top"],
         "unknown --select"),
        (["--baseline", "a", "--ifa", "b", "--images", str(tmp_path), "--out", "x.png", "--select", "list"],
         "list FILE"),
        (["--baseline", str(tmp_path / "nope"), "--ifa", "b", "--images", str(tmp_path), "--out", "x.png"],
         "not found"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1


# --- the function API on synthetic arrays ---------------------------------------------------------------


def _two_halves(size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gt: class 0 left of column 4, class 1 from it; the baseline calls column 4 class 0; IFA is exact."""
    gt = np.zeros((size, size), np.int64)
    gt[:, 4:] = 1
    baseline = gt.copy()
    baseline[:, 4] = 0
    return baseline, gt.copy(), gt


def test_boundary_numbers_match_a_hand_check():
    baseline, ifa, gt = _two_halves()
    flat = np.ones((8, 8), np.int64)  # no boundary: counts in "overall" only
    result = boundary_bands([(baseline, ifa, gt), (flat, flat, flat)], num_classes=2, widths=[1, 2, 4])
    # distance to the boundary (columns 3 and 4 are boundary pixels): columns 2/5 -> 1, 1/6 -> 2, 0/7 -> 3.
    # width 1: columns 3-4 (16 px), baseline wrong on column 4: acc 8/16; IoU0 8/16, IoU1 0/8 -> mIoU 25.
    # width 2: columns 2-5 (32 px), 8 wrong: acc 24/32; IoU0 16/24, IoU1 8/16 -> mIoU (2/3 + 1/2) / 2.
    # width 4: all 64 px, 8 wrong: acc 56/64; IoU0 32/40, IoU1 24/32 -> mIoU 77.5.
    assert result["images"] == 2
    assert result["baseline"]["pixels"] == [16, 32, 64]
    assert result["baseline"]["accuracy"] == pytest.approx([50.0, 75.0, 87.5])
    assert result["baseline"]["mIoU"] == pytest.approx([25.0, 100 * (2 / 3 + 1 / 2) / 2, 77.5])
    assert result["ifa"]["accuracy"] == pytest.approx([100.0] * 3)
    assert result["ifa"]["mIoU"] == pytest.approx([100.0] * 3)
    # overall over both images: 120 of 128 right; IoU0 32/40, IoU1 88/96
    assert result["baseline"]["overall"]["accuracy"] == pytest.approx(93.75)
    assert result["baseline"]["overall"]["mIoU"] == pytest.approx(100 * (0.8 + 88 / 96) / 2)
    scores = image_scores(baseline, ifa, gt, num_classes=2)
    assert scores["baseline_mIoU"] == pytest.approx(77.5) and scores["ifa_mIoU"] == pytest.approx(100.0)
    assert scores["gain"] == pytest.approx(22.5) and scores["disagreement"] == pytest.approx(12.5)


def test_make_row_boxes_the_largest_differences_in_squares():
    image = np.zeros((60, 80, 3), np.uint8)
    baseline = np.zeros((60, 80), np.int64)
    ifa = baseline.copy()
    ifa[10:30, 20:26] = 3  # 120 px, tall and thin
    ifa[40:44, 60:64] = 5  # 16 px
    ifa[50, 5] = 2  # 1 px, under min_area
    row = make_row("a", image, baseline, ifa, boxes=5, min_area=10, box_pad=2)
    assert len(row.boxes) == 2
    t, lft, b, r = row.boxes[0]
    assert b - t == r - lft == 20 + 2 * 2 and t <= 10 and b >= 30 and lft <= 20 and r >= 26
    assert len(make_row("a", image, baseline, ifa, boxes=1, min_area=10).boxes) == 1
    # max_box drops regions longer than that fraction of the shorter side (60 px): 20 > 0.3 * 60
    assert len(make_row("a", image, baseline, ifa, boxes=5, min_area=10, max_box=0.3).boxes) == 1
    # fixed_only keeps regions where IFA matches the ground truth
    gt = ifa.copy()
    gt[10:30, 20:26] = 0  # the baseline was right on the big one
    fixed = make_row("a", image, baseline, ifa, gt, boxes=5, min_area=10, fixed_only=True)
    assert len(fixed.boxes) == 1 and fixed.boxes[0][0] <= 40 <= fixed.boxes[0][2]


@pytest.mark.parametrize("box", [(0, 0, 3, 3), (55, 70, 60, 80), (10, 0, 50, 80), (0, 0, 60, 80), (20, 30, 21, 31)])
def test_square_box_contains_the_region_and_stays_inside(box):
    t, lft, b, r = square_box(box, (60, 80), pad=4, min_side=16)
    assert 0 <= t <= box[0] and 0 <= lft <= box[1] and box[2] <= b <= 60 and box[3] <= r <= 80
    if max(box[2] - box[0], box[3] - box[1]) + 8 <= 60:
        assert b - t == r - lft


def test_grid_panels_sizes_and_deterministic_bytes():
    rng = np.random.default_rng(0)
    baseline, ifa, gt = _two_halves(32)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rows = [make_row(f"img{i}", image, baseline, ifa, gt if i else None, min_area=4) for i in range(2)]
    fig = build_figure(rows, INFO.class_names, INFO.palette, insets=True, panel_width=1.0)
    assert len(fig.axes) == 2 * len(columns(True, True)) == 14
    assert pixel_size(fig, 300) == tuple(round(v * 300) for v in fig.get_size_inches())
    def render(fmt):
        return figure_bytes(build_figure(rows, INFO.class_names, INFO.palette, panel_width=1.0), fmt, 72)

    for fmt in ("pdf", "png", "svg"):
        assert render(fmt) == render(fmt)
    pdf = render("pdf")
    assert b"/Subtype /Image" in pdf and b"CreationDate" not in pdf
    no_gt = build_figure([PanelRow("x", image, baseline, ifa)], INFO.class_names, INFO.palette, legend=False)
    assert len(no_gt.axes) == 3
    with pytest.raises(ValueError, match="format"):
        figure_bytes(fig, "jpg")


def test_select_images_orders():
    scores = {"a": {"gain": 1.0, "disagreement": 5.0}, "b": {"gain": 3.0, "disagreement": 1.0},
              "c": {"gain": None, "disagreement": 9.0}, "d": {"gain": -2.0, "disagreement": 2.0}}
    names = list(scores)
    assert select_images(names, scores, "best", 3) == ["b", "a", "d"]
    assert select_images(names, scores, "worst", 2) == ["d", "a"]
    no_gt = {n: {"disagreement": s["disagreement"]} for n, s in scores.items()}
    assert select_images(names, no_gt, "best", 2) == ["c", "a"]
    drawn = select_images(names, {}, "random", 3, seed=1)
    assert drawn == select_images(names, {}, "random", 3, seed=1) and len(set(drawn)) == 3


def test_row_diversity_skips_look_alike_images():
    """b and a look alike (cosine 0.99): with the rule on, the best rows are b, d (a skipped), then c."""
    scores = {"a": {"gain": 1.0}, "b": {"gain": 3.0}, "c": {"gain": None}, "d": {"gain": -2.0}}
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([0.99, 0.141]), "c": np.array([0.0, 1.0]),
               "d": np.array([0.6, -0.8])}
    names = list(scores)
    assert select_images(names, scores, "best", 2, max_similarity=0.9, descriptor=vectors.get) == ["b", "d"]
    assert select_images(names, scores, "best", 3, max_similarity=0.9, descriptor=vectors.get) == ["b", "d", "c"]
    # fewer distinct images than rows: the best skipped one fills in, rows in ranking order
    assert select_images(names, scores, "best", 4, max_similarity=0.9, descriptor=vectors.get) == ["b", "a", "d", "c"]
    assert select_images(names, scores, "best", 2, max_similarity=1.0, descriptor=vectors.get) == ["b", "a"]


def test_image_descriptor_tells_neighbouring_frames_from_distant_ones():
    val = CAMVID / "val"
    if not (val / "0016E5_08021.png").is_file():
        pytest.skip(f"CamVid val missing at {val}")
    d = {n: image_descriptor(read_image(val / f"0016E5_{n}.png")) for n in ("08019", "08021", "08139")}
    assert float(d["08019"] @ d["08021"]) > 0.95  # two frames apart
    assert float(d["08021"] @ d["08139"]) < DEFAULT_MAX_SIMILARITY  # 118 frames apart


# --- the prediction cache ------------------------------------------------------------------------------


class _FakePredictor:
    """Predicts class = image's red channel mod 3; counts the images it sees."""

    def __init__(self):
        self.seen = 0

    def preprocess(self, image):
        return torch.from_numpy(image[..., 0].astype(np.int64))[None]

    def probabilities(self, x):
        self.seen += x.shape[0]
        return torch.nn.functional.one_hot(x % 3, 3).permute(0, 3, 1, 2).float()


def _identity(name: str = "m") -> ModelIdentity:
    return ModelIdentity(spec=name, revision=None, sha256=(name * 64)[:64], architecture="fpn",
                         backbone="efficientnet_lite0", num_classes=3)


def test_cache_resumes_shards_and_merges(tmp_path):
    images = [np.full((4, 5, 3), v, np.uint8) for v in range(5)] + [np.full((6, 5, 3), 7, np.uint8)]
    items = [CacheItem(array_key(im), lambda im=im: im) for im in images]
    options = {"mode": "whole", "scales": [1.0]}
    shards = [PredictionCache(tmp_path / f"shard{i}", _identity(), options) for i in range(2)]
    predictor = _FakePredictor()
    assert [predict_to_cache(predictor, c, items, batch_size=4, shard=(i, 2), progress=False)
            for i, c in enumerate(shards)] == [3, 3]
    assert predict_to_cache(predictor, shards[0], items, shard=(0, 2), progress=False) == 0  # resumed: nothing to do
    assert predictor.seen == 6
    assert cache_main(["merge", str(tmp_path / "all"), str(tmp_path / "shard0"), str(tmp_path / "shard1")]) == 0
    merged = PredictionCache(tmp_path / "all", _identity(), options)
    assert len(merged.keys()) == 6
    assert predict_to_cache(predictor, merged, items, progress=False) == 0
    for item, image in zip(items, images):
        np.testing.assert_array_equal(merged.get(item.key), image[..., 0] % 3)
    assert merge_caches(tmp_path / "all", [tmp_path / "shard0"]) == {"copied": 0, "present": 3}
    other = PredictionCache(tmp_path / "all", _identity(), {**options, "flip": True})
    assert other.path != merged.path and other.get(items[0].key) is None
    memory = PredictionCache(None, _identity(), options)
    assert predict_to_cache(predictor, memory, items[:2], progress=False) == 2 and items[0].key in memory
    (merged.path / f"{items[0].key}.npz").write_bytes(b"broken")
    assert merged.get(items[0].key) is None  # an unreadable entry is recomputed, not an error
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("1of2")
    with pytest.raises(ValueError):
        parse_shard("2/2")
    assert cache_main(["merge", str(tmp_path / "x"), str(tmp_path / "missing")]) == 2
