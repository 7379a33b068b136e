"""Tests of the class-name and palette tables in ifa.data.classes."""

import dataclasses

import numpy as np
import pytest

from ifa.data.classes import DATASETS, DatasetInfo, get_dataset_info, palette_array

COUNTS = {"cityscapes": 19, "ade20k": 150, "pascal_context": 59, "pascal_context_60": 60, "camvid": 11}


def test_registry_and_counts():
    assert set(DATASETS) == set(COUNTS)
    for name, count in COUNTS.items():
        info = get_dataset_info(name)
        assert info.name == name
        assert len(info.class_names) == len(info.palette) == info.num_classes == count
        assert info.ignore_index == 255


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_names_and_colours_are_valid(name):
    info = DATASETS[name]
    assert len(set(info.class_names)) == len(info.class_names)
    assert all(isinstance(n, str) and n and n == n.strip() for n in info.class_names)
    for colour in info.palette:
        assert isinstance(colour, tuple) and len(colour) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
    arr = palette_array(info.palette)
    assert arr.dtype == np.uint8 and arr.shape == (len(info.palette), 3)


def test_cityscapes_and_camvid_colours_are_distinct():
    # (ADE20K / PASCAL Context repeat (140, 140, 140) once, as in mmsegmentation.)
    for name in ("cityscapes", "camvid"):
        assert len(set(DATASETS[name].palette)) == len(DATASETS[name].palette)


def _colour(name, class_name):
    info = DATASETS[name]
    return info.palette[info.class_names.index(class_name)]


def test_official_spot_checks():
    cs = DATASETS["cityscapes"]
    assert cs.class_names[0] == "road" and cs.palette[0] == (128, 64, 128)
    assert cs.class_names[18] == "bicycle" and cs.palette[18] == (119, 11, 32)
    assert _colour("cityscapes", "car") == (0, 0, 142) == cs.palette[13]
    assert _colour("cityscapes", "sky") == (70, 130, 180)
    assert _colour("cityscapes", "traffic light") == (250, 170, 30)

    ade = DATASETS["ade20k"]
    assert ade.class_names[:5] == ("wall", "building", "sky", "floor", "tree")
    assert ade.palette[:2] == ((120, 120, 120), (180, 120, 120))
    assert ade.class_names[7] == "bed"
    assert ade.class_names[12] == "person" and ade.palette[12] == (150, 5, 61)
    assert ade.class_names[149] == "flag" and ade.palette[149] == (92, 0, 255)

    pc59, pc60 = DATASETS["pascal_context"], DATASETS["pascal_context_60"]
    assert pc60.class_names[0] == "background" and pc60.palette[0] == (120, 120, 120)
    assert pc59.class_names == pc60.class_names[1:] and pc59.palette == pc60.palette[1:]
    assert pc59.class_names[0] == "aeroplane" and pc59.palette[0] == (180, 120, 120)
    assert pc59.class_names[-1] == "wood" and pc59.class_names.index("person") == 36
    assert list(pc59.class_names) == sorted(pc59.class_names)  # the common 59-class list is alphabetical

    cv = DATASETS["camvid"]
    assert cv.class_names == (
        "Sky", "Building", "Pole", "Road", "Sidewalk", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    )  # fmt: skip
    assert cv.palette[0] == (128, 128, 128) and cv.palette[4] == (60, 40, 222)
    assert cv.palette[10] == (0, 128, 192) and _colour("camvid", "Road") == (128, 64, 128)


def test_raw_ignore_indices():
    raw = {name: info.raw_ignore_index for name, info in DATASETS.items()}
    expected = {"cityscapes": 255, "ade20k": 0, "pascal_context": 0, "pascal_context_60": 255, "camvid": 11}
    assert raw == expected


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ValueError, match="camvid"):
        get_dataset_info("kitti")


def test_info_is_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["camvid"].ignore_index = 0
    with pytest.raises(ValueError):
        DatasetInfo("x", ("a", "b"), ((0, 0, 0),), 255, 255)


def test_palette_array_rejects_bad_colours():
    np.testing.assert_array_equal(palette_array([(1, 2, 3)]), [[1, 2, 3]])
    assert palette_array([]).shape == (0, 3)
    with pytest.raises(ValueError):
        palette_array([(0, 0, 256)])
    with pytest.raises(ValueError):
        palette_array([(0, 0)])
