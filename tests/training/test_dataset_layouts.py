"""Dataset loaders on tiny directory trees of each standard layout, built here; augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from training_support import save_png

from ifa.data.datasets import DatasetError, build_dataset
from ifa.data.transforms import TrainAugment

H, W = 4, 6


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3))


def raw_label(values: list[int]) -> np.ndarray:
    """The given values in the first cells (row-major), the rest copies of the first."""
    out = np.full(H * W, values[0])
    out[:len(values)] = values
    return out.reshape(H, W)


# --- Cityscapes: leftImg8bit/{split}/CITY/*_leftImg8bit.png + gtFine/{split}/CITY/*_gtFine_labelIds.png --------
def cityscapes_tree(root, split="val", labels=True):
    for city, n in (("frankfurt", 2), ("lindau", 1)):
        for i in range(n):
            stem = f"{city}_000000_{i:06d}"
            save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image(i))
            if labels:
                raw = raw_label([0, 7, 8, 11, 26, 33, 34, 255, 6, 24])
                save_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
                save_png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", image(9))  # ignored
    return root


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    ds = build_dataset("cityscapes", cityscapes_tree(tmp_path), "val")
    assert len(ds) == 3 and ds.info.num_classes == 19
    assert [ds.image_name(i) for i in range(3)] == ["frankfurt_000000_000000_leftImg8bit.png",
                                                    "frankfurt_000000_000001_leftImg8bit.png",
                                                    "lindau_000000_000000_leftImg8bit.png"]
    img, lab = ds[0]
    assert img.shape == (H, W, 3) and img.dtype == np.uint8 and lab.dtype == np.uint8
    # 0 unlabeled, 7 road, 8 sidewalk, 11 building, 26 car, 33 bicycle, 34 (no such id), 255, 6 ground, 24 person
    assert lab.reshape(-1)[:10].tolist() == [255, 0, 1, 2, 13, 18, 255, 255, 255, 11]
    np.testing.assert_array_equal(img, image(0))


def test_cityscapes_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"cityscapes root .*nowhere does not exist"):
        build_dataset("cityscapes", tmp_path / "nowhere", "val")
    root = cityscapes_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"cityscapes split 'train'.*leftImg8bit/train does not exist "
                                           r"\(expected leftImg8bit/train/CITY/\*_leftImg8bit.png"):
        build_dataset("cityscapes", root, "train")
    (root / "gtFine" / "val" / "lindau" / "lindau_000000_000000_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match=r"label .*lindau_000000_000000_gtFine_labelIds.png for image "
                                           r".*lindau_000000_000000_leftImg8bit.png is missing"):
        build_dataset("cityscapes", root, "val")
    cityscapes_tree(tmp_path / "nolabels", labels=False)
    with pytest.raises(DatasetError, match=r"cityscapes split 'val' labels: .*gtFine/val does not exist"):
        build_dataset("cityscapes", tmp_path / "nolabels", "val")


# --- ADE20K: ADEChallengeData2016/images/{training,validation}/*.jpg + annotations/.../*.png -----------------
def ade_tree(root):
    base = root / "ADEChallengeData2016"
    for sub, stem in (("training", "ADE_train_00000001"), ("validation", "ADE_val_00000001"),
                      ("validation", "ADE_val_00000002")):
        (base / "images" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image().astype(np.uint8)).save(base / "images" / sub / f"{stem}.jpg")
        save_png(base / "annotations" / sub / f"{stem}.png", raw_label([0, 1, 2, 150, 151, 255]))
    return root


@pytest.mark.parametrize("inside", [False, True])
def test_ade20k_zero_ignored_and_shifted(tmp_path, inside):
    root = ade_tree(tmp_path)
    root = root / "ADEChallengeData2016" if inside else root  # the folder itself or its parent
    val = build_dataset("ade20k", root, "val")
    assert len(val) == 2 and len(build_dataset("ade20k", root, "training")) == 1
    img, lab = val[0]
    assert img.shape == (H, W, 3) and val.info.num_classes == 150
    assert lab.reshape(-1)[:6].tolist() == [255, 0, 1, 149, 255, 255]


def test_ade20k_errors(tmp_path):
    root = ade_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"ade20k split must be one of .*'val'.*got 'test'"):
        build_dataset("ade20k", root, "test")
    with pytest.raises(DatasetError, match=r"ade20k split 'val'.*expected ADEChallengeData2016"):
        build_dataset("ade20k", tmp_path / "ADEChallengeData2016" / "images", "val")
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(DatasetError, match=r"label .*ADE_val_00000002.png for image .*ADE_val_00000002.jpg is missing"):
        build_dataset("ade20k", root, "val")


# --- PASCAL Context: VOC2010/JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext/{split}.txt ---
def pascal_tree(root):
    voc = root / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    for stem in ("2008_000002", "2008_000003", "2008_000007"):
        Image.fromarray(image().astype(np.uint8)).save(voc / "JPEGImages" / f"{stem}.jpg")
        save_png(voc / "SegmentationClassContext" / f"{stem}.png", raw_label([0, 1, 2, 59, 60, 255]))
    (voc / "ImageSets" / "SegmentationContext" / "train.txt").write_text("2008_000002\n2008_000007\n")
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000003\n")
    return root


def test_pascal_context_59_and_60(tmp_path):
    root = pascal_tree(tmp_path)
    ds59, ds60 = build_dataset("pascal_context", root, "train"), build_dataset("pascal_context_60", root, "train")
    assert len(ds59) == len(ds60) == 2 and len(build_dataset("pascal_context", root / "VOC2010", "val")) == 1
    assert (ds59.info.num_classes, ds60.info.num_classes) == (59, 60)
    assert [ds59.image_name(i) for i in range(2)] == ["2008_000002.jpg", "2008_000007.jpg"]  # the split file's order
    assert ds59[0][1].reshape(-1)[:6].tolist() == [255, 0, 1, 58, 255, 255]  # background ignored, shifted
    assert ds60[0][1].reshape(-1)[:6].tolist() == [0, 1, 2, 59, 255, 255]  # background is class 0


def test_pascal_context_errors(tmp_path):
    root = pascal_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"split file .*SegmentationContext/test.txt is missing \(expected VOC2010"):
        build_dataset("pascal_context", root, "test")
    (root / "VOC2010" / "SegmentationClassContext" / "2008_000007.png").unlink()
    with pytest.raises(DatasetError, match=r"2008_000007.png listed in train.txt is missing"):
        build_dataset("pascal_context", root, "train")


# --- CamVid: {split}/NAME.png + {split}annot/NAME.png --------------------------------------------------------
def camvid_tree(root):
    for i in range(2):
        save_png(root / "val" / f"0001TP_{i:06d}.png", image(i))
        save_png(root / "valannot" / f"0001TP_{i:06d}.png", raw_label([0, 10, 11, 3, 12, 255]))
    return root


def test_camvid_unlabelled_ignored(tmp_path):
    ds = build_dataset("camvid", camvid_tree(tmp_path), "val")
    assert len(ds) == 2 and ds.info.num_classes == 11
    assert ds[1][1].reshape(-1)[:6].tolist() == [0, 10, 255, 3, 255, 255]
    np.testing.assert_array_equal(ds[1][0], image(1))


def test_camvid_and_generic_errors(tmp_path):
    root = camvid_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"camvid split 'train': .*train does not exist \(expected train/\*.png "
                                           r"and trainannot/\*.png\)"):
        build_dataset("camvid", root, "train")
    with pytest.raises(DatasetError, match=r"unknown dataset 'camvd'; valid: camvid, cityscapes, ade20k"):
        build_dataset("camvd", root, "val")
    (root / "empty").mkdir()
    (root / "emptyannot").mkdir()
    with pytest.raises(DatasetError, match=r"camvid: no images for split 'empty' under"):
        build_dataset("camvid", root, "empty")
    save_png(root / "valannot" / "0001TP_000001.png", np.zeros((H + 1, W)))
    with pytest.raises(DatasetError, match=r"0001TP_000001.png is 6x5 but its image .* is 6x4"):
        build_dataset("camvid", root, "val")[1]
    save_png(root / "valannot" / "0001TP_000001.png", image())  # an RGB label
    with pytest.raises(DatasetError, match="labels must be single-channel, got mode RGB"):
        build_dataset("camvid", root, "val")[1]


# --- augmentation ---------------------------------------------------------------------------------------------
def test_train_augment_crop_pad_flip_and_determinism():
    img = image().astype(np.uint8)
    lab = np.arange(H * W).reshape(H, W)
    aug = TrainAugment(crop_size=(8, 10), scale_range=(1.0, 1.0), flip=False)
    x, y = aug(img, lab, np.random.default_rng(0))
    assert x.shape == (3, 8, 10) and y.shape == (8, 10) and y.dtype == torch.int64
    assert (y[H:] == 255).all() and (y[:, W:] == 255).all() and (x[:, H:] == 0).all()  # pad: ignore / the mean
    np.testing.assert_array_equal(y[:H, :W].numpy(), lab)
    mean, std = np.array(aug.mean), np.array(aug.std)
    np.testing.assert_allclose(x[:, :H, :W].permute(1, 2, 0).numpy(), (img - mean) / std, rtol=1e-5, atol=1e-5)
    aug = TrainAugment(crop_size=(3, 4), scale_range=(0.5, 2.0), flip=True, photometric=True)
    first, again = aug(img, lab, np.random.default_rng(7)), aug(img, lab, np.random.default_rng(7))
    assert all((a == b).all() for a, b in zip(first, again))  # the seed alone decides
    flips = {bool(TrainAugment(crop_size=(H, W), scale_range=(1.0, 1.0))(img, lab, np.random.default_rng(s))[1][0, 0]
                  != lab[0, 0]) for s in range(8)}
    assert flips == {True, False}


def test_train_augment_base_sizes():
    assert TrainAugment().base(360, 480) == (360, 480)
    assert TrainAugment(base_size=(512, 1024)).base(360, 480) == (512, 1024)
    # mmsegmentation's keep-ratio rule: long side <= 2048, short side <= 512
    assert TrainAugment(img_scale=(2048, 512)).base(375, 500) == pytest.approx((512, 512 * 500 / 375))
    assert TrainAugment(img_scale=(2048, 512)).base(100, 1000) == pytest.approx((204.8, 2048))
    x, y = TrainAugment(crop_size=(2, 2), img_scale=(16, 8), scale_range=(1.0, 1.0))(
        image().astype(np.uint8), np.zeros((H, W)), np.random.default_rng(0))
    assert x.shape == (3, 2, 2)
    with pytest.raises(ValueError, match="base_size or img_scale"):
        TrainAugment(base_size=(1, 1), img_scale=(2, 1))
