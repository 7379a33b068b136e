"""The shipped samples and label sets in the app: every sample exists with its attribution, each label is
read in its declared format (Cityscapes labelIds mapped to CamVid, ADE20K only for an ADE20K pair), the
gallery puts what the pair can score first, an upload's label format is the user's choice, and a new page
gets a finished comparison computed once per server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from ifa.app.images import ImageLoadError, load_label
from ifa.app.samples import manifest_samples
from ifa.data.classes import get_dataset_info
from ifa.data.label_sets import LABEL_SETS, label_lut

ADE = get_dataset_info("ade20k")


def test_manifest_lists_real_samples_with_labels_and_attribution():
    samples = manifest_samples()
    assert [s.dataset for s in samples].count("CamVid") >= 3
    assert [s.dataset for s in samples].count("KITTI") == 6 and [s.dataset for s in samples].count("ADE20K") == 3
    for s in samples:
        assert s.image.is_file() and s.label is not None and s.label.is_file(), s.name
        assert s.label_set in LABEL_SETS and s.source and s.licence, s.name
        with Image.open(s.image) as img, Image.open(s.label) as label:
            assert img.size == label.size and label.mode in ("L", "P"), s.name
        assert s.licence in s.describe() and s.dataset in s.describe()
    raw = json.loads((ROOT / "assets" / "samples.json").read_text())
    files = [item[k] for item in raw["samples"] for k in ("image", "label")]
    assert len(files) == len(set(files))  # no duplicates
    camvid = sorted(s.image.name for s in samples if s.dataset == "CamVid")
    frames = [int(name.split("_")[1].split(".")[0]) for name in camvid]
    assert min(np.diff(frames)) >= 30  # different scenes of the drive, not neighbouring frames


def test_sample_scorability_follows_the_pair():
    by_dataset = {s.dataset: s for s in manifest_samples()}
    assert by_dataset["CamVid"].scorable("camvid") and by_dataset["KITTI"].scorable("camvid")
    assert not by_dataset["ADE20K"].scorable("camvid") and by_dataset["ADE20K"].scorable("ade20k")
    assert not by_dataset["KITTI"].scorable("ade20k") and by_dataset["KITTI"].scorable("cityscapes")


def test_label_formats_of_an_upload(tmp_path):
    raw = np.zeros((40, 60), dtype=np.uint8)
    raw[:20] = 7  # Cityscapes labelId road
    raw[20:, :30] = 26  # car
    path = tmp_path / "label.png"
    Image.fromarray(raw).save(path)
    camvid = get_dataset_info("camvid").class_names
    label, notices = load_label(path, (60, 40), 11, "cityscapes_labelids", "camvid")
    assert (label[:20] == camvid.index("Road")).all() and (label[20:, :30] == camvid.index("Car")).all()
    assert (label[20:, 30:] == 255).all() and any("mapped to the pair's camvid classes" in n for n in notices)
    assert np.array_equal(label, label_lut("cityscapes_labelids", "camvid")[raw])
    # Declared as the pair's class indices, its values (26 > 11) are never scored as such: they fit one format a
    # CamVid pair can score, so the label is read in it, with a notice; without a class set they fit several:
    # refused, naming them.
    plain, notes = load_label(path, (60, 40), 11, "", "camvid")
    assert np.array_equal(plain, label) and any("the one format they fit" in n for n in notes)
    with pytest.raises(ImageLoadError, match="they fit Cityscapes labelIds"):
        load_label(path, (60, 40), 11)
    with pytest.raises(ImageLoadError, match="no mapping"):
        load_label(path, (60, 40), 11, "ade20k", "camvid")


@pytest.fixture(scope="module")
def ade_service(tmp_path_factory):
    """An AppService on a temp registry whose only pair is two small random-init 150-class ADE20K models."""
    import torch

    import ifa
    from ifa.app import AppService

    folder = tmp_path_factory.mktemp("ade-pair")
    common = dict(backbone="efficientnet_lite0", num_classes=150, class_names=list(ADE.class_names),
                  palette=[list(c) for c in ADE.palette], dataset="ade20k", neck_channels=16)
    torch.manual_seed(0)
    ifa.save_pretrained(ifa.create_model(architecture="fpn", head_channels=16, **common), folder / "fpn")
    ifa.save_pretrained(ifa.create_model(architecture="ifa", mlp_channels=[32, 32], **common), folder / "ifa")
    registry = folder / "registry.json"
    registry.write_text(json.dumps({"default": "ade", "pairs": [{
        "id": "ade", "title": "ADE20K · random-init test pair", "dataset": "ade20k",
        "baseline": {"source": "local", "path": str(folder / "fpn")},
        "ifa": {"source": "local", "path": str(folder / "ifa")}}]}))
    return AppService(registry)


def test_ade20k_sample_on_an_ade20k_pair_end_to_end(ade_service, monkeypatch):
    """Gallery: ADE20K samples first; a run scores the ADE20K label (0 = other ignored, 150-class legend);
    the first page is that comparison, computed once and copied per session."""
    from ifa.app.service import SEGMENT_OUTPUTS

    monkeypatch.setenv("IFA_SAMPLES_DIR", "")
    service = ade_service
    captions = [caption for _, caption in service.gallery("ade")]
    assert all(c.startswith("ADE20K") for c in captions[:3]) and "labelled" in captions[0]
    assert all("label not scored" in c for c in captions[3:])
    sample = next(s for s in service.samples if s.dataset == "ADE20K")
    out = dict(zip(SEGMENT_OUTPUTS, service.segment(None, None, sample.name, "ade", ["1.0"], False, "stride4",
                                                    0.5, None, 64)))
    summary = out["summary"]
    assert summary["has_ground_truth"] and summary["scores"]["FPN + IFA"]["mIoU"] is not None
    result = service.results.get(out["result_state"])
    with Image.open(sample.label) as img:
        raw = np.asarray(img)
    assert result.gt.shape == raw.shape and (result.gt[raw == 0] == 255).all()
    assert np.array_equal(result.gt[raw > 0], raw[raw > 0] - 1)
    assert result.num_classes == 150 and "wall" in out["legend"]

    # A CamVid sample on this pair: its label is not used, and the notice says why.
    camvid = next(s for s in service.samples if s.dataset == "CamVid")
    out = dict(zip(SEGMENT_OUTPUTS, service.segment(None, None, camvid.name, "ade", ["1.0"], False, "stride4",
                                                    0.5, None, 64)))
    assert not out["summary"]["has_ground_truth"] and "no mapping" in out["notices"]

    # First paint: the gallery's first sample, computed once; each page gets its own copy.
    first = service.welcome(None)
    second = service.welcome(None)
    assert first[0] == second[0] == service._gallery_items("ade")[0][1].name
    assert first[2] != second[2] and service.first_paint() is service.first_paint()
    a, b = service.results.get(first[2]), service.results.get(second[2])
    assert a is not b and a.feature_views is b.feature_views and np.array_equal(a.gt, b.gt)
