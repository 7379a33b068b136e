"""Label sets: each stored format decodes to its class set; Cityscapes labels map onto CamVid's classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ifa.data.classes import get_dataset_info
from ifa.data.datasets import DatasetError, build_dataset
from ifa.data.label_sets import (
    CITYSCAPES_LABELID_TO_TRAINID,
    CITYSCAPES_TO_CAMVID,
    LABEL_SETS,
    convert_label,
    get_label_set,
    label_lut,
    scoring_lut,
)
from ifa.data.samples import Sample

KITTI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "samples" / "kitti"
CAMVID = get_dataset_info("camvid").class_names
CITYSCAPES = get_dataset_info("cityscapes").class_names


def test_each_label_set_decodes_its_own_values():
    values = np.arange(-2, 300).reshape(1, -1)
    expected = {
        "camvid": lambda v: v if 0 <= v <= 10 else 255,  # 11 Unlabelled ignored
        "cityscapes_trainids": lambda v: v if 0 <= v <= 18 else 255,
        "cityscapes_labelids": lambda v: CITYSCAPES_LABELID_TO_TRAINID.get(v, 255),
        "ade20k": lambda v: v - 1 if 1 <= v <= 150 else 255,  # 0 = other ignored
        "pascal_context": lambda v: v - 1 if 1 <= v <= 59 else 255,
        "pascal_context_60": lambda v: v if 0 <= v <= 59 else 255,
    }
    assert set(expected) == set(LABEL_SETS)
    for name, rule in expected.items():
        decoded = get_label_set(name).decode(values)[0]
        assert decoded.dtype == np.uint8
        assert decoded.tolist() == [rule(int(v)) for v in values[0]], name
        assert (decoded[decoded != 255] < get_dataset_info(get_label_set(name).classes).num_classes).all()


def test_cityscapes_to_camvid_table_is_complete_and_reasoned():
    assert [row[0] for row in CITYSCAPES_TO_CAMVID] == list(range(34))
    for label_id, _, target, reason in CITYSCAPES_TO_CAMVID:
        assert target is None or target in CAMVID
        obvious = target is not None and label_id in CITYSCAPES_LABELID_TO_TRAINID and (
            CITYSCAPES[CITYSCAPES_LABELID_TO_TRAINID[label_id]].lower() == target.lower())
        assert obvious or reason, f"labelId {label_id} needs its reasoning written down"
    by_name = {name: target for _, name, target, _ in CITYSCAPES_TO_CAMVID}
    assert by_name["rider"] == "Bicyclist" and by_name["truck"] == "Car" and by_name["wall"] == "Building"
    assert by_name["terrain"] is None and by_name["vegetation"] == "Tree"


def test_trainids_and_labelids_map_to_camvid_alike():
    to_camvid_ids, to_camvid_train = label_lut("cityscapes_labelids", "camvid"), label_lut("cityscapes_trainids",
                                                                                          "camvid")
    for label_id, train_id in CITYSCAPES_LABELID_TO_TRAINID.items():
        assert to_camvid_train[train_id] == to_camvid_ids[label_id]
    assert to_camvid_train[255] == 255 and to_camvid_ids[0] == 255


def test_no_mapping_means_none():
    raw = np.ones((2, 2), dtype=np.uint8)
    assert convert_label(raw, "ade20k", "camvid") is None
    assert convert_label(raw, "camvid", "cityscapes") is None
    assert convert_label(raw, "pascal_context", "ade20k") is None
    with pytest.raises(ValueError, match="unknown label set"):
        get_label_set("voc")


def test_one_scoring_rule_for_uploads_and_samples():
    """scoring_lut decides how a label is scored; a sample's label_mapper follows it (uploads: ifa.app.images)."""
    raw = np.array([[0, 10, 11, 200]], dtype=np.uint8)
    assert scoring_lut("", "camvid", 11) == (None, None)  # no declared set: the values are class indices
    lut, notice = scoring_lut("camvid", "camvid", 11)
    assert notice is None and lut[11] == 255
    lut, notice = scoring_lut("cityscapes_labelids", "camvid", 11)
    assert "mapped to the pair's camvid classes" in notice
    lut, _ = scoring_lut("camvid", "my-classes", 11)  # an unnamed class set of 11: CamVid's decoding
    np.testing.assert_array_equal(lut[raw], [[0, 10, 255, 255]])
    for args, reason in ((("camvid", "my-classes", 5), "have 11 classes, the pair predicts 5"),
                         (("ade20k", "camvid", 11), "no mapping"), (("voc", "camvid", 11), "unknown label set")):
        with pytest.raises(ValueError, match=reason):
            scoring_lut(*args)
    sample = Sample("s", Path("s.png"), Path("s_L.png"), "camvid", "camvid", "", "")
    np.testing.assert_array_equal(sample.label_mapper("my-classes", 11)(raw), [[0, 10, 255, 255]])
    assert sample.label_mapper("my-classes", 5) is None and sample.label_mapper("ade20k", 150) is None
    unlabelled_set = Sample("t", Path("t.png"), Path("t_L.png"), "", "", "", "")
    np.testing.assert_array_equal(unlabelled_set.label_mapper("camvid", 11)(raw), [[0, 10, 255, 255]])


@pytest.mark.skipif(not KITTI.is_dir(), reason="../shared/data/samples/kitti missing")
def test_kitti_layout_reads_cityscapes_labels_in_either_class_set():
    own = build_dataset("kitti", KITTI, "val")
    mapped = build_dataset("kitti", KITTI, "val", classes="camvid")
    assert len(own) == len(mapped) == 6 and own.info.name == "cityscapes" and mapped.info.name == "camvid"
    _, label_own = own[0]
    image, label_camvid = mapped[0]
    with Image.open(KITTI / "semantic" / own.image_name(0)) as img:
        raw = np.asarray(img)
    assert image.shape[:2] == raw.shape == (375, 1242)
    assert np.array_equal(label_camvid, label_lut("cityscapes_labelids", "camvid")[raw])
    assert np.array_equal(label_own, label_lut("cityscapes_labelids", "cityscapes")[raw])
    # road (7) is Road in both; sky (23) is Sky
    assert (label_camvid[raw == 7] == CAMVID.index("Road")).all() and (label_own[raw == 7] == 0).all()
    with pytest.raises(DatasetError, match="no mapping"):
        build_dataset("kitti", KITTI, "val", classes="ade20k")


@pytest.mark.skipif(not KITTI.is_dir(), reason="../shared/data/samples/kitti missing")
def test_evaluate_scores_a_camvid_model_on_kitti_through_the_mapping(tmp_path):
    import torch

    import ifa
    from ifa.evaluate import main

    info = get_dataset_info("camvid")
    torch.manual_seed(0)
    model = ifa.create_model(architecture="fpn", backbone="efficientnet_lite0", num_classes=11, neck_channels=16,
                             head_channels=16, class_names=list(info.class_names), dataset="camvid")
    ifa.save_pretrained(model, tmp_path / "m")
    assert main(["--model", str(tmp_path / "m"), "--dataset", "kitti", "--root", str(KITTI), "--limit", "1",
                 "--json", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["label_set"] == "cityscapes_labelids" and out["classes"] == "camvid" and out["images"] == 6
    assert set(out["per_class"]) == set(info.class_names) and 0 <= out["mIoU"] <= 100
