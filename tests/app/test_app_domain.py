"""The in-domain rule (ifa.domain, calibrated by tools.calibrate_domain into the shipped cards): a CamVid val
frame is in domain, a cat is not and gets the notice; the summary JSON carries both models' confidence."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ifa.domain import calibrate, confidence, domain_reference


def test_confidence_and_calibration_by_hand():
    logits = np.zeros((2, 1, 2), np.float32)
    logits[0, 0, 0] = 10.0  # one sure pixel, one coin flip
    assert confidence(logits, logits=True) == pytest.approx((1 / (1 + np.exp(-10)) + 0.5) / 2)
    reference = calibrate([0.9, 0.8, 0.95, 0.85] * 25, [0.5, 0.99], max_false_alarm=0.02)
    assert reference.val_false_alarm_percent <= 2.0 and reference.threshold < 0.8 + 1e-9
    assert reference.outside_missed_percent == 50.0


def test_a_cat_is_outside_what_the_pair_knows(pair_registry, camvid_val, tmp_path, monkeypatch):
    skimage_data = pytest.importorskip("skimage.data")
    from ifa.app import service as S

    monkeypatch.delenv("IFA_SAMPLES_DIR", raising=False)
    service = S.AppService(pair_registry[0])
    spec = service.registry.get(pair_registry[1])
    if domain_reference(spec.ifa.location) is None:
        pytest.skip("the pair's cards record no in-domain calibration (random-init test pair)")
    cat = tmp_path / "cat.png"
    Image.fromarray(skimage_data.chelsea()).save(cat)
    street = camvid_val / "0016E5_07959.png"
    answers = {}
    for name, path in (("cat", cat), ("street", street)):
        out = service.segment(str(path), None, None, pair_registry[1], ["1.0"], False, "stride4", 0.5, None, 16)
        answers[name] = out[15]
    assert answers["street"]["in_domain"] is True and answers["cat"]["in_domain"] is False
    assert all(0 < c <= 1 for c in answers["cat"]["confidence"].values())
    assert any("unlike the pair's training data" in n for n in answers["cat"]["notices"])
    assert not any("unlike" in n for n in answers["street"]["notices"])
