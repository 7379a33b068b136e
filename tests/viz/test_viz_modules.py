"""Direct tests of the drawing modules (ifa.viz.draw, boxes, heatmaps, probe) and of ifa.timing: shapes, dtypes,
where the pixels go, and what each promises in its docstring. Tiny images; no model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw

from ifa.compare import BOTH_WRONG, IFA_BROKE, IFA_FIXED
from ifa.timing import measure_times
from ifa.viz.boxes import draw_boxes, verdict_image
from ifa.viz.colors import VERDICT_COLORS
from ifa.viz.draw import (
    LEVEL_COLORS,
    YELLOW,
    apply_colormap,
    colorbar,
    grid,
    label_box,
    resize,
    text_size,
    titled,
)
from ifa.viz.heatmaps import level_share_panel
from ifa.viz.probe import CellMark, crosshair, probe_panel


def grey(h: int, w: int, value: int = 128) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


# --- ifa.viz.draw ------------------------------------------------------------------------------------
def test_apply_colormap_maps_the_range_and_nan_to_black():
    values = np.array([[0.0, 0.5, 1.0, np.nan], [-3.0, 4.0, 0.25, 0.75]])
    rgb = apply_colormap(values, 0.0, 1.0, "viridis")
    assert rgb.shape == (2, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 3] == 0).all()  # NaN is black
    np.testing.assert_array_equal(rgb[1, 0], rgb[0, 0])  # clipped below
    np.testing.assert_array_equal(rgb[1, 1], rgb[0, 2])  # clipped above
    assert not np.array_equal(rgb[0, 0], rgb[0, 2])
    assert (apply_colormap(values, 0.0, 1.0, "magma")[0, 2] != rgb[0, 2]).any()  # the map is honoured


def test_titled_grid_resize_and_colorbar_sizes():
    assert titled(grey(10, 20), "t", size=14).shape == (10 + 14 + 8, 20, 3)
    assert colorbar(50, height=12).shape == (12 + 16, 50, 3)
    tiles = [grey(10, 20, 0), grey(15, 5, 50), grey(8, 8, 100)]
    laid = grid(tiles, columns=2, gap=6)
    # columns as wide as their widest tile (20, 5), rows as tall as their tallest (15, 8), `gap` between
    assert laid.shape == (15 + 6 + 8, 20 + 6 + 5, 3) and laid.dtype == np.uint8
    assert (laid[15:21] == 255).all()  # the gap is background
    assert (laid[:10, :20] == 0).all()  # the first tile at the top-left
    small = resize(np.arange(12, dtype=np.uint8).reshape(2, 2, 3), (4, 6), nearest=True)
    assert small.shape == (6, 4, 3)  # size is (width, height)
    assert set(np.unique(small)) <= set(range(12))  # nearest: no new values


def test_label_box_draws_text_on_its_fill():
    canvas = Image.new("RGB", (80, 30), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    w, h = text_size(draw, "12", size=12)
    assert w > 0 and h > 0
    label_box(draw, (5, 5), "12", fill=YELLOW, color=(0, 0, 0), size=12, pad=1)
    pixels = np.asarray(canvas)
    assert (pixels == YELLOW).all(axis=-1).any() and (pixels.max(axis=-1) < 100).any()  # dark text on yellow
    assert (pixels[:4] == 255).all()  # nothing above the box


# --- ifa.viz.boxes -----------------------------------------------------------------------------------
def region(top, left, bottom, right):
    return SimpleNamespace(box=(top, left, bottom, right))


def test_draw_boxes_outlines_each_region_and_leaves_the_input_alone():
    image = grey(60, 80)
    out = draw_boxes(image, [region(20, 30, 40, 50)], width=2, numbers=False)
    assert out.shape == image.shape and out.dtype == np.uint8 and (image == 128).all()
    yellow = (out == YELLOW).all(axis=-1)
    assert yellow[19, 29:51].all() and yellow[40, 29:51].all()  # top edge one pixel outside, bottom inclusive
    assert yellow[19:41, 29].all() and yellow[19:41, 50].all()
    assert not yellow[25:35, 35:45].any()  # inside is untouched
    assert not yellow.any(axis=0)[:28].any()
    numbered = draw_boxes(image, [region(20, 30, 40, 50)], width=2)
    assert (numbered != out).any()  # the rank label
    assert np.array_equal(draw_boxes(image, []), image)


def test_verdict_image_paints_each_verdict_and_dims_the_rest():
    image = grey(20, 30, 200)
    verdicts = np.zeros((20, 30), dtype=np.uint8)
    verdicts[2, 2], verdicts[2, 5], verdicts[2, 8] = IFA_FIXED, IFA_BROKE, BOTH_WRONG
    out = verdict_image(image, verdicts, [])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[10, 10].max() < 200  # dimmed
    for x, verdict in ((2, IFA_FIXED), (5, IFA_BROKE), (8, BOTH_WRONG)):
        colour = np.asarray(VERDICT_COLORS[verdict])
        assert np.abs(out[2, x].astype(int) - colour).max() <= 0.15 * 255 + 1  # mostly the verdict's colour


# --- ifa.viz.heatmaps --------------------------------------------------------------------------------
def test_level_share_panel_layout_and_dominant_level():
    shares = np.zeros((4, 3, 4), dtype=np.float32)
    shares[2] = 1.0  # level 3 dominates everywhere
    panel = level_share_panel(shares, size=(80, 60), tile_width=40, title="IFA")
    assert panel.ndim == 3 and panel.shape[2] == 3 and panel.dtype == np.uint8
    untitled = level_share_panel(shares, size=(80, 60), tile_width=40)
    assert panel.shape[0] == untitled.shape[0] + 16 + 8 and panel.shape[1] == untitled.shape[1]
    assert (untitled == LEVEL_COLORS[2]).all(axis=-1).sum() > (untitled == LEVEL_COLORS[0]).all(axis=-1).sum()


# --- ifa.viz.probe -----------------------------------------------------------------------------------
def test_crosshair_marks_the_point_only_nearby():
    out = crosshair(grey(64, 64, 0), (32, 20))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    marked = (out != 0).any(axis=-1)
    assert marked[20, 32] or marked[20, 25:40].any()
    assert not marked[55:, :].any() and not marked[:, :8].any()


def test_probe_panel_size_and_both_panels_drawn():
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    cells = [CellMark("level 1", LEVEL_COLORS[0], (28.0, 16.0, 32.0, 20.0), (30.0, 18.0)),
             CellMark("level 2", LEVEL_COLORS[1], (24.0, 16.0, 32.0, 24.0), (28.0, 20.0))]
    footprint = [CellMark(f"{w:.2f}", YELLOW, (28.0 + 4 * i, 16.0, 32.0 + 4 * i, 20.0), (30.0 + 4 * i, 18.0), w)
                 for i, w in enumerate((0.5, 0.5))]
    panel = probe_panel(image, (30, 18), cells, footprint, panel_px=120)
    assert panel.dtype == np.uint8 and panel.shape[1] == 2 * 120 + 10 and panel.shape[0] > 120 + 22
    for colour in (LEVEL_COLORS[0], LEVEL_COLORS[1]):
        assert (panel[:, :120] == colour).all(axis=-1).any()  # each level's cell in the IFA panel
    assert (panel[:, 130:] == YELLOW).all(axis=-1).any()


# --- ifa.timing --------------------------------------------------------------------------------------
def test_measure_times_interleaves_rounds_and_reports_medians():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = measure_times(fns, torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then 3 rounds running every function once
    assert set(out) == {"a", "b"}
    for times in out.values():
        assert set(times) == {"wall_ms", "cpu_ms"} and times["wall_ms"] >= 0 and times["cpu_ms"] >= 0


def test_measure_times_median_ignores_one_slow_round():
    import time

    state = {"n": 0}

    def sometimes_slow():
        state["n"] += 1
        time.sleep(0.05 if state["n"] == 2 else 0.0)

    out = measure_times({"f": sometimes_slow}, torch.device("cpu"), warmup=0, repeats=3)
    assert out["f"]["wall_ms"] < 25  # the median of (fast, slow, fast)


def test_measure_times_runs_under_inference_mode():
    seen = []
    measure_times({"f": lambda: seen.append(torch.is_inference_mode_enabled())}, torch.device("cpu"), 1, 1)
    assert seen == [True, True]
