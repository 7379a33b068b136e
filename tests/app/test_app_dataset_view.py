"""The dataset view (service.dataset_rank, API /dataset_rank): both models' per-image scores over a folder,
ranked, numbers recomputed independently with the library; a second ranking comes from the prediction cache;
a request's new work is bounded and the next request continues; a row opens its image."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import camvid_label
from PIL import Image

import ifa
from ifa.inference import Predictor
from ifa.metrics import image_summary, trimap_accuracy

NAMES = ("0016E5_07959.png", "0016E5_08061.png", "0016E5_08139.png")


@pytest.fixture(scope="module")
def folder(camvid_val, tmp_path_factory):
    """Three CamVid val images in a CamVid-layout folder (val/ + valannot/)."""
    root = tmp_path_factory.mktemp("rank") / "camvid"
    for sub in ("val", "valannot"):
        (root / sub).mkdir(parents=True)
        for name in NAMES:
            shutil.copy(camvid_val.parent / sub / name, root / sub / name)
    return root / "val"


def test_dataset_rank_scores_caches_bounds_and_opens(pair_registry, folder, camvid_val, monkeypatch):
    from ifa.app import dataset_view
    from ifa.app import service as S

    monkeypatch.setenv("IFA_SAMPLES_DIR", str(folder))
    service = S.AppService(pair_registry[0])
    source = "IFA_SAMPLES_DIR folder"
    assert source in service.rank_sources() and "shipped samples" in service.rank_sources()
    options = (pair_registry[1], ["1.0"], False, "stride4")

    monkeypatch.setattr(dataset_view, "RANK_SECONDS", 0.0)  # one new image per request
    table, _, status, first = service.dataset_rank(source, *options)
    assert first["computed"] == 1 and first["pending"] == 2 and "press *Rank* again" in status
    monkeypatch.setattr(dataset_view, "RANK_SECONDS", 600.0)
    _, gallery, _, second = service.dataset_rank(source, *options)
    assert second["computed"] == 2 and second["pending"] == 0 and second["ranked"] == 3
    table, gallery, status, cached = service.dataset_rank(source, *options)
    assert cached["computed"] == 0 and "0 computed now, 3 from the cache" in status
    assert cached["seconds"] < second["seconds"]
    gains = [r["gain"] for r in cached["rows"]]
    assert gains == sorted(gains, reverse=True) and len(gallery) == 3
    assert [row[0] for row in table["data"]] == [r["image"] for r in cached["rows"]]

    # One row recomputed with the library: both models, the ground truth's classes, the boundary band.
    row = next(r for r in cached["rows"] if r["image"].endswith(NAMES[1]))
    gt = camvid_label(camvid_val, NAMES[1])
    image = np.asarray(Image.open(camvid_val / NAMES[1]).convert("RGB"))
    registry = service.registry.get(pair_registry[1])
    labels = [Predictor(ifa.load_model(src.location), device="cpu").predict(image).labels
              for src in (registry.baseline, registry.ifa)]
    names = service.class_names(pair_registry[1])
    b, i = (image_summary(x, gt, names)["mIoU"] for x in labels)
    assert row["baseline_mIoU"] == pytest.approx(b, abs=0.01) and row["gain"] == pytest.approx(i - b, abs=0.02)
    assert row["disagreement"] == pytest.approx(100 * float((labels[0] != labels[1]).mean()), abs=0.01)
    band = trimap_accuracy(labels[1], gt, (4,), len(names))[4]["accuracy"]
    assert row["ifa_band_acc"] == pytest.approx(band, abs=0.01)

    # A click on a row (or a thumbnail) opens that image in the comparison.
    picked = service.pick_ranked(cached, SimpleNamespace(row_value=table["data"][0], index=[0, 0]))
    assert picked[0] == cached["rows"][0]["image"] and picked[1] is None
    picked = service.pick_ranked(cached, SimpleNamespace(row_value=None, index=2))
    assert picked[0] == cached["rows"][2]["image"]


def test_figure_export_redraws_byte_for_byte_from_its_manifest(pair_registry, folder, monkeypatch, tmp_path):
    """The ranking's top rows exported as ifa.figures' figure (PNG and PDF); `--from-manifest` redraws the PNG
    byte for byte."""
    import json

    from ifa import figures
    from ifa.app import service as S

    monkeypatch.setenv("IFA_SAMPLES_DIR", str(folder))
    service = S.AppService(pair_registry[0])
    options = (pair_registry[1], ["1.0"], False, "stride4")
    _, _, _, ranking = service.dataset_rank("IFA_SAMPLES_DIR folder", *options)
    files, md = service.export_figure(ranking, *options, 2, "png")
    figure, manifest_path, samples, rows, archive = files
    manifest = json.loads(open(manifest_path).read())
    assert [r["name"] for r in manifest["rows"]] == [r["image"] for r in ranking["rows"][:2]]
    assert "--from-manifest" in md and open(rows).read().split() == [r["image"] for r in ranking["rows"][:2]]
    again = tmp_path / "again.png"
    assert figures.main(["--from-manifest", manifest_path, "--out", str(again), "--no-cache", "--no-progress"]) == 0
    assert again.read_bytes() == open(figure, "rb").read()
    # The zip is the whole bundle: unpacked elsewhere it redraws the same bytes, and it names no server path.
    import shutil
    import zipfile

    with zipfile.ZipFile(archive) as bundle:
        texts = [bundle.read(n).decode() for n in bundle.namelist() if n.endswith((".json", ".txt"))]
    assert not any(str(service.files_root) in t or str(folder) in t for t in texts)
    shutil.unpack_archive(archive, tmp_path / "elsewhere")
    moved = tmp_path / "elsewhere" / "ifa-figure" / "figure.manifest.json"
    redrawn = tmp_path / "redrawn.png"
    assert figures.main(["--from-manifest", str(moved), "--out", str(redrawn), "--no-cache", "--no-progress"]) == 0
    assert redrawn.read_bytes() == open(figure, "rb").read()
    pdf, *_ = service.export_figure(ranking, *options, 1, "pdf")[0]
    assert open(pdf, "rb").read(5) == b"%PDF-"
    with pytest.raises(Exception, match="rank a set of images first"):
        service.export_figure({}, *options, 2, "png")
    with pytest.raises(Exception, match="not one this app made"):
        service.export_figure({"rows": [{"img": 1}]}, *options, 2, "png")
    with pytest.raises(Exception, match="does not offer"):
        service.export_figure({"rows": [{"image": "../../etc/passwd"}]}, *options, 2, "png")
