"""Evaluation: a hand-computed confusion matrix; sliding-window, multi-scale and flip inference against
whole-image inference; the Table 3 command and the evaluate command on a tiny checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from training_support import save_png

from ifa.data.classes import get_dataset_info
from ifa.data.datasets import build_dataset
from ifa.evaluate import evaluate
from ifa.evaluate import main as evaluate_main
from ifa.inference import Predictor, _starts
from ifa.metrics import summarize
from ifa.models import ModelConfig, create_model, save_pretrained
from ifa.table3 import format_table3, table3
from ifa.table3 import main as table3_main

K = 11  # CamVid


# --- a dataset whose images carry the "prediction" in their red channel --------------------------------------
RED = [np.array([[0, 1, 2], [2, 2, 0]]), np.array([[1, 1, 0], [3, 0, 2]])]
GT = [np.array([[0, 1, 1], [2, 11, 0]]), np.array([[1, 0, 0], [3, 3, 2]])]  # 11 = Unlabelled: ignored
# rows = ground truth, columns = prediction, classes 0..3 (the other 7 never occur)
EXPECTED = np.array([[3, 1, 0, 0],
                     [0, 2, 1, 0],
                     [0, 0, 2, 0],
                     [1, 0, 0, 1]])


@pytest.fixture
def red_camvid(tmp_path):
    for i, (red, gt) in enumerate(zip(RED, GT)):
        img = np.zeros((*red.shape, 3), dtype=np.uint8)
        img[..., 0], img[..., 1] = red, 200
        save_png(tmp_path / "val" / f"{i}.png", img)
        save_png(tmp_path / "valannot" / f"{i}.png", gt)
    return build_dataset("camvid", tmp_path, "val")


class RedPredictor:
    """Predicts the red channel of the image."""

    config = SimpleNamespace(num_classes=K)

    def predict(self, image):
        return SimpleNamespace(labels=image[..., 0].astype(np.int64))


def test_confusion_matrix_by_hand(red_camvid):
    cm = evaluate(RedPredictor(), red_camvid, progress=False)
    assert cm.shape == (K, K) and cm.dtype == np.int64
    np.testing.assert_array_equal(cm[:4, :4], EXPECTED)
    assert cm[4:].sum() == 0 and cm[:, 4:].sum() == 0
    result = summarize(cm, list(red_camvid.info.class_names))
    ious = [3 / 5, 2 / 4, 2 / 3, 1 / 2]  # TP / (row + column - TP)
    assert result["mIoU"] == pytest.approx(100 * np.mean(ious))
    assert result["aAcc"] == pytest.approx(100 * 8 / 11)
    assert result["mAcc"] == pytest.approx(100 * np.mean([3 / 4, 2 / 3, 2 / 2, 1 / 2]))
    names = red_camvid.info.class_names
    assert result["per_class"][names[0]] == pytest.approx(60.0) and result["per_class"][names[5]] is None
    first = evaluate(RedPredictor(), red_camvid, limit=1, progress=False)
    np.testing.assert_array_equal(first[:4, :4], [[2, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


def test_evaluate_rejects_a_class_count_mismatch(red_camvid):
    predictor = RedPredictor()
    predictor.config = SimpleNamespace(num_classes=19)
    with pytest.raises(ValueError, match="predicts 19 classes but camvid has 11"):
        evaluate(predictor, red_camvid, progress=False)


# --- inference paths --------------------------------------------------------------------------------------
class ConvModel(nn.Module):
    """A stand-in segmentation model: one conv (1x1 = pointwise, 3x3 = border-dependent), optional x ramp."""

    def __init__(self, kernel: int = 1, ramp: bool = False, k: int = 4):
        super().__init__()
        self.config = ModelConfig(architecture="fpn", backbone="efficientnet_lite0", num_classes=k)
        self.is_ifa = False
        self.ramp = ramp
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, kernel, padding=kernel // 2)

    def forward(self, x):
        out = self.conv(x)
        if self.ramp:  # not flip-equivariant
            ramp = torch.linspace(0, 3, x.shape[-1]).view(1, 1, 1, -1)
            out = out + ramp * torch.arange(out.shape[1]).view(1, -1, 1, 1)
        return out


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_window_starts():
    assert _starts(10, 4, 3) == [0, 3, 6]
    assert _starts(11, 4, 3) == [0, 3, 6, 7]  # the last window flush with the end
    assert _starts(5, 8, 3) == [0]


def test_slide_and_flip_equal_whole_for_a_pointwise_model():
    model, image = ConvModel(kernel=1), rgb(37, 45)
    whole = Predictor(model, device="cpu").predict(image)
    slide = Predictor(model, device="cpu", mode="slide", window=(16, 20)).predict(image)
    flip = Predictor(model, device="cpu", flip=True).predict(image)
    torch.testing.assert_close(slide.probs, whole.probs, rtol=0, atol=1e-6)
    assert torch.equal(flip.probs, whole.probs)
    np.testing.assert_array_equal(slide.labels, whole.labels)


def test_slide_averages_overlapping_windows():
    model, image = ConvModel(kernel=3), rgb(20, 30, seed=1)
    predictor = Predictor(model, device="cpu", mode="slide", window=(20, 20), stride=(20, 10))
    x = predictor.preprocess(image)
    with torch.no_grad():
        logits = torch.zeros(1, 4, 20, 30)
        counts = torch.zeros(1, 1, 20, 30)
        for left in (0, 10):  # windows [0, 20) and [10, 30)
            logits[..., left:left + 20] += model(x[..., left:left + 20])
            counts[..., left:left + 20] += 1
        expected = (logits / counts).softmax(1)
        whole = model(x).softmax(1)
    got = predictor.probabilities(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, whole, atol=1e-3)  # the 3x3 conv sees the window borders: it matters


def test_multi_scale_and_flip_average_the_views():
    model, image = ConvModel(kernel=3, ramp=True), rgb(21, 27, seed=2)
    predictor = Predictor(model, device="cpu", scales=(0.5, 1.0, 1.5), flip=True)
    x = predictor.preprocess(image)
    views = []
    with torch.no_grad():
        for scale in (0.5, 1.0, 1.5):
            size = (round(21 * scale), round(27 * scale))
            xs = x if scale == 1.0 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True):
                out = model(xs.flip(-1)).flip(-1) if flipped else model(xs)
                if scale != 1.0:
                    out = F.interpolate(out, size=(21, 27), mode="bilinear", align_corners=False)
                views.append(out.softmax(1))
    got = predictor.probabilities(x)
    assert got.shape == (1, 4, 21, 27)
    torch.testing.assert_close(got, torch.stack(views).mean(0))
    torch.testing.assert_close(got.sum(1), torch.ones(1, 21, 27))


@pytest.mark.parametrize("architecture", ["fpn", "ifa"])
def test_real_tiny_model_paths(architecture, one_thread):
    torch.manual_seed(0)
    model = create_model(architecture=architecture, backbone="efficientnet_lite0", num_classes=5, neck_channels=8,
                         head_channels=8, mlp_channels=[8], pos_dim=4).eval()
    image = rgb(37, 45, seed=3)
    whole = Predictor(model, device="cpu").predict(image)
    assert whole.labels.shape == (37, 45) and whole.probs.shape == (5, 37, 45)
    big_window = Predictor(model, device="cpu", mode="slide", window=(64, 64)).predict(image)
    assert torch.equal(big_window.probs, whole.probs)  # one window covering the image: exactly whole
    one_scale = Predictor(model, device="cpu", scales=(1.0,), flip=False).predict(image)
    assert torch.equal(one_scale.probs, whole.probs)
    for kwargs in ({"mode": "slide", "window": (24, 32)}, {"scales": (0.5, 1.25), "flip": True},
                   {"mode": "slide", "window": (24, 32), "scales": (0.75, 1.5), "flip": True}):
        pred = Predictor(model, device="cpu", **kwargs).predict(image)
        assert pred.labels.shape == (37, 45) and pred.probs.shape == (5, 37, 45)
        torch.testing.assert_close(pred.probs.sum(0), torch.ones(37, 45))
    if architecture == "ifa":
        full = Predictor(model, device="cpu", mode="slide", window=(24, 32), ifa_resolution="full").predict(image)
        assert full.probs.shape == (5, 37, 45)


# --- Table 3 and the command lines ------------------------------------------------------------------------
def test_table3_rows(red_camvid):
    model = ConvModel(kernel=1, k=K)
    rows = table3(model, red_camvid, scales=(1.0,), device="cpu", progress=False)
    assert list(rows) == ["single scale", "multi-scale", "flip", "multi-scale + flip"]
    single = summarize(evaluate(Predictor(model, device="cpu"), red_camvid, progress=False),
                       list(red_camvid.info.class_names))
    for row in rows.values():  # one scale (1.0) and a pointwise model: every row equals single scale
        assert row == single
    text = format_table3(rows, {"single scale": 79.49})
    assert text.splitlines()[2].startswith("single scale") and "79.49" in text


@pytest.fixture
def tiny_checkpoint(tmp_path):
    info = get_dataset_info("camvid")
    torch.manual_seed(0)
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=K, neck_channels=8,
                         mlp_channels=[8], pos_dim=4, class_names=list(info.class_names),
                         palette=[list(c) for c in info.palette], dataset="camvid")
    return save_pretrained(model, tmp_path / "ckpt")


@pytest.fixture
def rgb_camvid(tmp_path):
    for i in range(2):
        save_png(tmp_path / "data" / "val" / f"{i}.png", rgb(24, 32, seed=i))
        save_png(tmp_path / "data" / "valannot" / f"{i}.png", np.random.default_rng(i).integers(0, 12, (24, 32)))
    return tmp_path / "data"


def test_evaluate_and_table3_commands(tiny_checkpoint, rgb_camvid, tmp_path, capsys, one_thread):
    common = ["--model", str(tiny_checkpoint), "--dataset", "camvid", "--root", str(rgb_camvid), "--device", "cpu"]
    assert evaluate_main([*common, "--mode", "slide", "--window", "16", "16", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert {"mIoU", "mAcc", "aAcc", "per_class"} <= set(result) and len(result["per_class"]) == K
    assert "mIoU" in capsys.readouterr().out
    assert table3_main([*common, "--scales", "0.75", "1.0", "--limit", "1", "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    for row in ("single scale", "multi-scale", "flip", "multi-scale + flip"):
        assert row in out
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert list(rows) == ["single scale", "multi-scale", "flip", "multi-scale + flip"]
    assert all(0 <= r["mIoU"] <= 100 for r in rows.values())


@pytest.mark.parametrize("main", [evaluate_main, table3_main])
def test_commands_fail_in_one_line(main, tiny_checkpoint, tmp_path, capsys):
    assert main(["--model", str(tiny_checkpoint), "--dataset", "camvid", "--root", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: camvid root") and "does not exist" in err and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--model" in capsys.readouterr().out
