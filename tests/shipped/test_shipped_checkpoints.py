"""The shipped CamVid checkpoints: each loads, is the architecture its name says, and reproduces the
val mIoU its model card records on the first val images (so a broken or swapped checkpoint fails)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ifa
from ifa.cards import card_records, resolution_record
from ifa.data.datasets import build_dataset
from ifa.evaluate import evaluate
from ifa.inference import Predictor
from ifa.metrics import summarize

ROOT = Path(__file__).resolve().parents[2]
CAMVID = Path(os.environ.get("IFA_CAMVID_ROOT", ROOT.parent / "shared" / "data" / "camvid"))
PAIR = {"camvid-effl0-fpn": "fpn", "camvid-effl0-ifa": "ifa", "camvid-effl0-ifa-lateral-wide": "ifa",
        "camvid-effl0-ifa-lateral-wide-ensemble": "ifa"}
# mIoU over 8 images moves by at most a few hundredths when float rounding differs between CPUs.
TOLERANCE = 0.25


@pytest.fixture(scope="module")
def val_set():
    if not CAMVID.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CamVid data missing at {CAMVID}")
        pytest.skip(f"CamVid data missing at {CAMVID}")
    return build_dataset("camvid", CAMVID, "val")


@pytest.mark.parametrize("name", sorted(PAIR))
def test_shipped_checkpoint_matches_its_card(name, val_set):
    folder = ROOT / "checkpoints" / name
    model = ifa.load_model(folder)
    assert model.config.architecture == PAIR[name]
    assert model.config.backbone == "efficientnet_lite0"
    assert model.config.class_names == list(val_set.info.class_names)
    recorded = card_records(folder)["check"]  # the card's own records, not its model-index results
    check, limit = recorded["mIoU"], recorded["images"]
    cm = evaluate(Predictor(model, device="cpu"), val_set, limit=limit, progress=False)
    measured = summarize(cm, list(val_set.info.class_names))["mIoU"]
    assert abs(measured - check) <= TOLERANCE, f"{name}: measured {measured:.3f}, card says {check:.3f}"


@pytest.mark.parametrize("name", sorted(n for n in PAIR if (card_records(ROOT / "checkpoints" / n).get("resolution")
                                                              or {}).get("check")))
def test_shipped_every_pixel_record_matches(name, val_set):
    """A card that records its every-pixel mIoU (tools.resolution_study --record; the app defaults to the better
    resolution) reproduces it on the first val images, as tools.resolution_study measures it (fp32)."""
    folder = ROOT / "checkpoints" / name
    recorded = card_records(folder)["resolution"]["check"]
    predictor = Predictor(ifa.load_model(folder), device="cpu", precision="fp32", ifa_resolution="full")
    cm = evaluate(predictor, val_set, limit=recorded["images"], progress=False)
    measured = summarize(cm, list(val_set.info.class_names))["mIoU"]
    assert abs(measured - recorded["full"]) <= TOLERANCE, f"{name}: measured {measured:.3f}, card says " \
                                                           f"{recorded['full']:.3f}"


def test_registry_offers_the_shipped_pair():
    import json

    registry = json.loads((ROOT / "checkpoints" / "registry.json").read_text())
    paper = next(p for p in registry["pairs"] if p["id"] == registry["default"])  # the paper's IFA in front
    assert paper["id"] == "camvid-effl0-paper-ifa" and registry["pairs"][0] is paper
    assert paper["baseline"]["path"] == "checkpoints/camvid-effl0-fpn"
    assert paper["ifa"]["path"] == "checkpoints/camvid-effl0-ifa-lateral-wide"
    assert ifa.load_model(ROOT / paper["ifa"]["path"]).config.ifa_features == "lateral"
    neck = next(p for p in registry["pairs"] if p["id"] == "camvid-effl0")  # the FPN-neck variant, second
    assert neck["ifa"]["path"] == "checkpoints/camvid-effl0-ifa" and "variant" in neck["title"]
    # The study's result (issue 30): the paper's IFA with the local-ensemble read, a variant, better at every pixel
    # than on its grid on val, as its card records; the app starts that pair on every pixel.
    ensemble = next(p for p in registry["pairs"] if p["id"] == "camvid-effl0-paper-ifa-ensemble")
    assert ensemble["ifa"]["path"] == "checkpoints/camvid-effl0-ifa-lateral-wide-ensemble"
    assert "variant" in ensemble["title"] and ensemble["baseline"]["path"] == "checkpoints/camvid-effl0-fpn"
    config = ifa.load_model(ROOT / ensemble["ifa"]["path"]).config
    assert (config.ifa_features, config.ifa_read) == ("lateral", "ensemble")
    assert resolution_record(ROOT / ensemble["ifa"]["path"])["best"] == "full"
    for pair in (paper, neck):  # the others stay on their grid, as their cards say
        assert resolution_record(ROOT / pair["ifa"]["path"])["best"] == "stride4"
