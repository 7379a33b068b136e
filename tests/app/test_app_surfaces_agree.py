"""One truth: every surface that shows a per-image score shows the same number, on real images with labels.

A CamVid frame and a KITTI frame (Cityscapes labelIds scored in CamVid's classes through ifa.data.label_sets), both
shipped samples, go through the comparison (/segment: the Scores table, the boundary plot's whole-image line and
its bands, the summary JSON), the stateless tool (/compare_models, the MCP tool), the dataset view's ranking and
the figure it exports (ifa.figures); each number is recomputed with the library and must be equal on all of them.
"""

from __future__ import annotations

import json

import pytest

from ifa.compare import MODELS, boundary_bands, pair_scores
from ifa.data.images import load_image, load_label

SAMPLES = ("CamVid 0016E5_07959 (shops, cyclists)", "KITTI 000005_10")


def _table_value(table: dict, row: str, column: int) -> float:
    return next(r for r in table["data"] if r[0] == row)[column]


def test_every_surface_shows_the_same_scores(pair_registry, monkeypatch):
    from ifa.app import service as S

    monkeypatch.delenv("IFA_SAMPLES_DIR", raising=False)
    service = S.AppService(pair_registry[0])
    pair = pair_registry[1]
    names = service.class_names(pair)
    _, _, _, ranking = service.dataset_rank("shipped samples", pair, ["1.0"], False, "stride4")
    ranked = {r["image"]: r for r in ranking["rows"]}
    for name in SAMPLES:
        sample = service._samples_by_name[name]
        out = service.segment(None, None, name, pair, ["1.0"], False, "stride4", 0.5, None, 16)
        summary, table = out[15], out[13]
        # The library, from the files: the app's loader, both models' label maps as the app computed them.
        image = load_image(sample.image).image
        gt, _ = load_label(sample.label, (image.shape[1], image.shape[0]), len(names), sample.label_set, "camvid")
        result = service._result(summary["result_id"])
        assert (result.gt == gt).all()
        truth = pair_scores(result.baseline.labels, result.ifa.labels, gt, names)
        bands = boundary_bands([(result.baseline.labels, result.ifa.labels, gt)], len(names))
        tool = json.loads(service.compare_models(str(sample.image), str(sample.label), pair, ["1.0"], False,
                                                 "stride4", sample.label_set))["summary"]
        for column, role in enumerate(MODELS, start=1):
            shown = MODELS[role]
            miou = truth[role]["mIoU"]
            assert summary["scores"][shown]["mIoU"] == pytest.approx(miou, abs=1e-9)  # summary JSON
            assert tool["scores"][shown]["mIoU"] == pytest.approx(miou, abs=1e-9)  # /compare_models, MCP
            assert _table_value(table, "mIoU (classes in the ground truth)", column) == round(miou, 2)  # table
            plot = summary["boundary_accuracy"][shown]  # the plot's curves and its whole-image line
            assert plot["overall"]["mIoU"] == pytest.approx(miou, abs=1e-9)
            assert plot["mIoU"] == pytest.approx(bands[role]["mIoU"], abs=1e-9)
            assert tool["boundary_accuracy"][shown]["mIoU"] == pytest.approx(bands[role]["mIoU"], abs=1e-9)
            assert ranked[name][f"{role}_mIoU"] == round(miou, 2)  # dataset view
    # The exported figure (drawn by ifa.figures) scores its rows as the ranking does (the KITTI frame is wider
    # than the working size: the figure must prepare it as the app does).
    top = [ranked[name] for name in SAMPLES]
    files, _ = service.export_figure({"rows": top}, pair, ["1.0"], False, "stride4", len(top), "png")
    manifest = json.loads(open(files[1]).read())
    for row in manifest["rows"]:
        for role in MODELS:
            assert round(row["scores"][f"{role}_mIoU"], 2) == ranked[row["name"]][f"{role}_mIoU"], row["name"]
