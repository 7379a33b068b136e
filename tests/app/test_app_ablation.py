"""The offset ablation of a shown run (service.alignment_ablation, API /alignment_ablation): its numbers against
an independent recomputation with the library (model.levels, head_logits under offsets_zeroed), no backbone
pass of its own, and reset when the label changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE, camvid_label

import ifa
from ifa.app.service import ABLATION_OUTPUTS, SEGMENT_OUTPUTS, AppService
from ifa.inference import Predictor
from ifa.metrics import image_summary


@pytest.fixture(scope="module")
def service(pair_registry):
    return AppService(pair_registry[0])


def library_labels(model, image: np.ndarray, levels=None) -> np.ndarray:
    """IFA labels at scale 1 on the stride-4 grid, offsets of `levels` zeroed ("all" = every level)."""
    x = Predictor(model, device="cpu").preprocess(image)
    with torch.inference_mode():
        feats = model.levels(x)
        if levels is None:
            logits = model.head_logits(feats)
        else:
            with model.offsets_zeroed(None if levels == "all" else levels):
                logits = model.head_logits(feats)
        return model.upsample_logits(logits, image.shape[:2])[0].argmax(0).numpy()


def test_offset_ablation_matches_the_library_and_reuses_the_runs_levels(service, pair_registry, camvid_val,
                                                                        monkeypatch):
    from ifa.app import engine

    image_path = camvid_val / SAMPLE
    out = dict(zip(SEGMENT_OUTPUTS, service.segment({"path": str(image_path)}, None, None, pair_registry[1],
                                                    ["1.0"], False, "stride4", 0.5, None, 64)))
    rid = out["result_state"]
    label = camvid_label(camvid_val)
    service.attach_label(rid, {"path": str(camvid_val.parent / f"{camvid_val.name}annot" / SAMPLE)}, 0.5, None, 64)
    service.analyse(rid)

    pair = engine.load_pair(service.results.get(rid).spec)
    calls = []
    original = type(pair.ifa).levels
    monkeypatch.setattr(type(pair.ifa), "levels", lambda self, x: calls.append(1) or original(self, x))
    view, md, summary = dict(zip(ABLATION_OUTPUTS, service.alignment_ablation(rid))).values()
    assert not calls  # the head only, from the run's stored inputs
    monkeypatch.undo()

    image = service.results.get(rid).image
    model = ifa.load_model(pair.spec.ifa.location)
    trained = library_labels(model, image)
    zeroed = library_labels(model, image, "all")
    scored = label != 255
    assert summary["changed_pixel_count"] == int(((trained != zeroed) & scored).sum())
    assert summary["scored_pixels"] == int(scored.sum())
    names = pair.class_names
    expected = image_summary(zeroed, label, names)["mIoU"] - image_summary(trained, label, names)["mIoU"]
    assert summary["mIoU"]["change"] == pytest.approx(expected, abs=1e-3)
    level4 = library_labels(model, image, [3])
    assert summary["levels"][3]["stride"] == 32
    assert summary["levels"][3]["changed_pixel_count"] == int(((trained != level4) & scored).sum())
    assert [row["stride"] for row in summary["levels"]] == [4, 8, 16, 32]
    assert view.shape == (*image.shape[:2], 3) and "nearest-cell upsampling" in md
    assert sum(summary["verdict_pixels"][k] for k in ("the offsets fixed it", "the offsets broke it",
                                                      "both wrong")) == int(((trained != zeroed) & scored).sum())

    # A label removed: the ablation is recomputed without ground truth (no mIoU, every pixel scored).
    service.attach_label(rid, None, 0.5, None, 64)
    _, _, bare = service.alignment_ablation(rid)
    assert bare["mIoU"] is None and bare["scored_pixels"] == image.shape[0] * image.shape[1]
    assert bare["changed_pixel_count"] == int((trained != zeroed).sum())
