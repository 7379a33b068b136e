"""Tests of ifa.metrics on tiny hand-computed examples."""

import warnings

import numpy as np
import pytest
import torch

from ifa.metrics import (
    DEFAULT_TRIMAP_WIDTHS,
    boundary_distance,
    boundary_distance_bands,
    boundary_mask,
    class_accuracy,
    confusion_matrix,
    iou_per_class,
    mean_accuracy,
    mean_iou,
    overall_accuracy,
    summarize,
    trimap_accuracy,
    trimap_confusion_matrices,
)

# 2x3 example, K = 3, one ignored pixel (bottom right).
TARGET = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])
# Scored (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); the (255, 2) pixel is skipped.
CM = np.array(
    [
        [1, 1, 0],  # gt 0: once right, once called 1
        [0, 2, 0],  # gt 1: twice right
        [1, 0, 0],  # gt 2: called 0
    ]
)


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TARGET, num_classes=3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, CM)


def test_iou_and_accuracies_by_hand():
    # class 0: TP 1, gt 2, pred 2 -> union 2 + 2 - 1 = 3 -> 1/3
    # class 1: TP 2, gt 2, pred 3 -> union 2 + 3 - 2 = 3 -> 2/3
    # class 2: TP 0, gt 1, pred 0 -> union 1            -> 0
    np.testing.assert_allclose(iou_per_class(CM), [1 / 3, 2 / 3, 0.0])
    assert mean_iou(CM) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    # recall: 1/2, 2/2, 0/1 -> mean 1/2; overall: 3 correct of 5 scored
    np.testing.assert_allclose(class_accuracy(CM), [0.5, 1.0, 0.0])
    assert mean_accuracy(CM) == pytest.approx(0.5)
    assert overall_accuracy(CM) == pytest.approx(0.6)


def test_absent_class_is_nan_and_left_out_of_means():
    cm = confusion_matrix(PRED, TARGET, num_classes=4)  # class 3 in neither gt nor pred
    iou = iou_per_class(cm)
    assert np.isnan(iou[3]) and np.isnan(class_accuracy(cm)[3])
    assert mean_iou(cm) == pytest.approx(1 / 3)
    assert mean_accuracy(cm) == pytest.approx(0.5)


def test_class_only_predicted_has_zero_iou_and_nan_accuracy():
    cm = confusion_matrix(np.array([1, 1]), np.array([0, 0]), num_classes=2)
    # class 1: TP 0, gt 0, pred 2 -> IoU 0 (defined), recall undefined
    np.testing.assert_allclose(iou_per_class(cm), [0.0, 0.0])
    assert np.isnan(class_accuracy(cm)[1])


def test_empty_matrix_gives_nan_without_warning():
    cm = np.zeros((2, 2), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(mean_iou(cm)) and np.isnan(mean_accuracy(cm)) and np.isnan(overall_accuracy(cm))


def test_ignore_and_out_of_range_targets_are_skipped():
    target = np.array([0, 255, -1, 5, 1])
    pred = np.array([0, 9, -3, 9, 1])  # garbage predictions on skipped pixels do not matter
    np.testing.assert_array_equal(confusion_matrix(pred, target, 2), [[1, 0], [0, 1]])
    # a custom ignore value
    cm = confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2, ignore_index=1)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 0]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shapes"):
        confusion_matrix(PRED, TARGET[:, :2], 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_torch_tensors_match_numpy_and_matrices_add_up():
    cm_torch = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TARGET).to(torch.uint8), 3)
    np.testing.assert_array_equal(cm_torch, CM)
    mixed = confusion_matrix(torch.from_numpy(PRED), TARGET, 3)
    np.testing.assert_array_equal(mixed, CM)
    batch = confusion_matrix(np.stack([PRED, PRED]), np.stack([TARGET, TARGET]), 3)
    np.testing.assert_array_equal(batch, 2 * CM)


def test_summarize_in_percent():
    out = summarize(confusion_matrix(PRED, TARGET, 4), ["a", "b", "c", "d"])
    assert out["mIoU"] == pytest.approx(100 / 3)
    assert out["mAcc"] == pytest.approx(50.0)
    assert out["aAcc"] == pytest.approx(60.0)
    assert out["per_class"]["a"] == pytest.approx(100 / 3)
    assert out["per_class"]["b"] == pytest.approx(200 / 3)
    assert out["per_class"]["c"] == 0.0
    assert out["per_class"]["d"] is None
    with pytest.raises(ValueError):
        summarize(CM, ["a", "b"])


# Two regions, 6 rows x 8 columns: class 0 in columns 0-3, class 1 in columns 4-7.
TWO = np.zeros((6, 8), dtype=np.int64)
TWO[:, 4:] = 1
# Prediction with the boundary one column too far right: columns 0-4 say 0, columns 5-7 say 1.
TWO_PRED = np.zeros((6, 8), dtype=np.int64)
TWO_PRED[:, 5:] = 1


def test_boundary_distance_and_masks():
    # columns 3 and 4 touch the boundary (distance 0); column 0 is 3 pixels from column 3
    np.testing.assert_array_equal(boundary_distance(TWO)[0], [3, 2, 1, 0, 0, 1, 2, 3])
    m1 = boundary_mask(TWO, 1)
    assert m1.dtype == bool
    np.testing.assert_array_equal(m1[0], [0, 0, 0, 1, 1, 0, 0, 0])
    m2 = boundary_mask(TWO, 2)
    np.testing.assert_array_equal(m2[0], [0, 0, 1, 1, 1, 1, 0, 0])
    assert m1.all(axis=0).sum() == 2 and m2.all(axis=0).sum() == 4  # every row alike
    bands = boundary_distance_bands(TWO)
    assert tuple(bands) == DEFAULT_TRIMAP_WIDTHS
    np.testing.assert_array_equal(bands[2], m2)
    with pytest.raises(ValueError):
        boundary_mask(TWO, 0)


def test_boundary_mask_ignore_and_stacks():
    target = np.zeros((3, 5), dtype=np.int64)
    target[:, 2] = 255
    # the edge of the ignored column is a boundary, the ignored pixels are never in the band
    np.testing.assert_array_equal(boundary_mask(target, 1)[1], [0, 1, 0, 1, 0])
    assert not boundary_mask(np.zeros((4, 4), dtype=np.int64), 32).any()  # no boundary at all
    stack = np.stack([TWO, TWO_PRED])
    masks = boundary_mask(torch.from_numpy(stack), 1)
    np.testing.assert_array_equal(masks[0], boundary_mask(TWO, 1))
    np.testing.assert_array_equal(masks[1], boundary_mask(stack[1], 1))


def test_trimap_accuracy_by_hand():
    out = trimap_accuracy(TWO_PRED, TWO, widths=(1, 2, 8), num_classes=2)
    # width 1 = columns 3, 4 (12 px). col 3: gt 0 -> 0 right; col 4: gt 1 -> 0 wrong.
    # cm [[6, 0], [6, 0]]: accuracy 6/12; IoU0 = 6/(6+6) = 1/2, IoU1 = 0 -> mIoU 1/4
    assert out[1] == pytest.approx({"accuracy": 50.0, "mIoU": 25.0, "pixels": 12})
    # width 2 = columns 2-5 (24 px). cols 2, 3 right (gt 0), col 4 wrong, col 5 right (gt 1).
    # cm [[12, 0], [6, 6]]: accuracy 18/24; IoU0 = 12/18 = 2/3, IoU1 = 6/12 = 1/2 -> mIoU 7/12
    assert out[2] == pytest.approx({"accuracy": 75.0, "mIoU": 700 / 12, "pixels": 24})
    # width 8 covers the whole image: cm [[24, 0], [6, 18]]: accuracy 42/48;
    # IoU0 = 24/30 = 0.8, IoU1 = 18/24 = 0.75 -> mIoU 0.775
    assert out[8] == pytest.approx({"accuracy": 87.5, "mIoU": 77.5, "pixels": 48})
    cms = trimap_confusion_matrices(torch.from_numpy(TWO_PRED), torch.from_numpy(TWO), (2,), 2)
    np.testing.assert_array_equal(cms[2], [[12, 0], [6, 6]])


def test_trimap_without_boundary_is_empty():
    flat = np.zeros((4, 4), dtype=np.int64)
    out = trimap_accuracy(flat, flat, widths=(4,), num_classes=2)
    assert out[4]["pixels"] == 0 and np.isnan(out[4]["accuracy"]) and np.isnan(out[4]["mIoU"])


def test_image_summary_scores_both_models_over_the_ground_truths_classes():
    """One image: a model's false positives of a class absent from the ground truth do not enter its mean as an
    IoU of 0 (which would rank a better model lower); they are counted apart, and still lower the IoU of the class
    whose pixels they took."""
    from ifa.metrics import image_summary

    names = ["road", "car", "fence"]
    gt = np.zeros((10, 10), np.int64)
    gt[:, 5:] = 1
    gt[0, 0] = 255
    better = gt.copy()
    better[9, 0:3] = 2  # 3 fence pixels where the road is; fence is not in the ground truth
    worse = gt.copy()
    worse[:, 4] = 1  # the 10 road pixels of column 4 taken by the car
    b, w = image_summary(better, gt, names), image_summary(worse, gt, names)
    assert b["per_class"]["fence"] is None and w["per_class"]["fence"] is None
    assert b["false_positive_pixels"] == {"fence": 3} and w["false_positive_pixels"] == {}
    road_b, car_b = 46 / 49, 1.0  # road: 49 scored, 3 lost
    road_w, car_w = 39 / 49, 50 / 60
    assert b["mIoU"] == pytest.approx(100 * (road_b + car_b) / 2)
    assert w["mIoU"] == pytest.approx(100 * (road_w + car_w) / 2)
    assert b["mIoU"] > w["mIoU"]
    # summarize() over all classes would give the better model the fence's IoU 0 and rank it lower
    assert summarize(confusion_matrix(better, gt, 3), names)["mIoU"] < w["mIoU"]
    assert b["aAcc"] == pytest.approx(100 * 96 / 99)
    empty = image_summary(better, np.full_like(gt, 255), names)
    assert np.isnan(empty["mIoU"]) and empty["false_positive_pixels"] == {}
