"""OHEM cross-entropy by hand, the learning-rate schedule, parameter groups, batch padding, atomic checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ifa.losses import ohem_cross_entropy
from ifa.models import create_model
from ifa.train import (
    _AuxForward,
    build_optimizer,
    compute_loss,
    learning_rate,
    load_checkpoint,
    pad_batch,
    point_labels,
    save_checkpoint,
)

# Ground-truth probabilities of five pixels (two classes, target 0); the sixth pixel is ignored.
P = [0.9, 0.6, 0.3, 0.8, 0.75]


def two_class_logits(probs: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (1, 2, 1, 6) whose softmax gives class 0 the probabilities `probs`; target (1, 1, 6)."""
    p = torch.tensor(probs + [0.5], dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()])[None, :, None, :]
    target = torch.tensor([[[0, 0, 0, 0, 0, 255]]])
    return logits.requires_grad_(), target


def nll(*probs: float) -> float:
    return sum(-math.log(p) for p in probs) / len(probs)


@pytest.mark.parametrize("min_kept,kept", [
    (0, [0.6, 0.3]),  # below the 0.7 threshold only
    (1, [0.6, 0.3]),  # the hardest pixel is already below the threshold
    (2, [0.6, 0.3]),
    (3, [0.6, 0.3, 0.75]),  # the 3rd hardest (0.75) raises the threshold
    (4, [0.6, 0.3, 0.75, 0.8]),
    (5, P),  # as many valid pixels as min_kept: all of them
    (100000, P),
])
def test_ohem_by_hand(min_kept, kept):
    logits, target = two_class_logits(P)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=min_kept)
    assert loss.item() == pytest.approx(nll(*kept), rel=1e-9)
    loss.backward()
    hard = logits.grad[0, 0, 0].abs() > 0
    assert hard.tolist() == [p in kept for p in P] + [False]  # only kept pixels get gradient


def test_ohem_edge_cases():
    logits, target = two_class_logits(P)
    assert ohem_cross_entropy(logits, target, thresh=1.0, min_kept=1).item() == pytest.approx(nll(*P))
    nothing_kept = ohem_cross_entropy(logits, target, thresh=0.1, min_kept=0)  # none below 0.1 and no floor
    assert nothing_kept.item() == 0.0 and nothing_kept.requires_grad
    all_ignored = torch.full_like(target, 255)
    loss = ohem_cross_entropy(logits, all_ignored)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0
    plain = F.cross_entropy(logits, target, ignore_index=255)
    assert ohem_cross_entropy(logits, target, thresh=1.0, min_kept=0).item() == pytest.approx(plain.item())


def test_loss_with_auxiliary_head():
    class Fixed(torch.nn.Module):
        def forward(self, x, coords=None):
            return main, aux, None

    gen = torch.Generator().manual_seed(0)
    main, aux = torch.randn(2, 3, 8, 12, generator=gen), torch.randn(2, 3, 2, 3, generator=gen)
    labels = torch.randint(0, 3, (2, 8, 12), generator=gen)
    labels[0, :2] = 255
    cfg = {"ohem": False, "ohem_thresh": 0.7, "ohem_min_kept": 1, "aux_weight": 0.4, "grid_weight": 1.0,
           "point_samples": 0, "point_weight": 1.0}
    up = F.interpolate(aux, size=(8, 12), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(main, labels, ignore_index=255) + 0.4 * F.cross_entropy(up, labels, ignore_index=255)
    torch.testing.assert_close(compute_loss(Fixed(), None, labels, cfg), expected)
    assert compute_loss(Fixed(), None, labels, {**cfg, "aux_weight": 0.0}) == F.cross_entropy(main, labels,
                                                                                               ignore_index=255)


def test_point_labels_read_the_pixel_containing_each_point():
    labels = torch.arange(12).view(1, 3, 4)
    # pixel (i, j) spans y in [-1 + 2i/3, -1 + 2(i+1)/3), x in [-1 + j/2, -1 + (j+1)/2); edges belong to the next
    coords = torch.tensor([[[-1.0, -1.0], [-0.34, -0.51], [-1 / 3 + 1e-6, 0.0], [0.999, 0.999], [1.0, 1.0]]])
    assert point_labels(labels, coords)[0, :, 0].tolist() == [0, 0, 6, 11, 11]


def test_point_supervision_adds_ifa_queried_at_random_points():
    """loss = grid loss + point_weight x cross-entropy of IFA's logits at the drawn points against the labels of
    the pixels that contain them; the same generator seed draws the same points."""
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                         mlp_channels=[8], pos_dim=4, aux_channels=0).train()
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 33, 41, generator=gen), torch.randint(0, 3, (2, 33, 41), generator=gen)
    labels[:, :5] = 255
    cfg = {"ohem": False, "ohem_thresh": 0.7, "ohem_min_kept": 1, "aux_weight": 0.0, "grid_weight": 1.0,
           "point_samples": 50, "point_weight": 0.5}
    torch.manual_seed(1)
    got = compute_loss(_AuxForward(model), images, labels, cfg, torch.Generator().manual_seed(7))
    coords = torch.rand(2, 50, 2, generator=torch.Generator().manual_seed(7)) * 2 - 1
    rows = ((coords[..., 0] + 1) / 2 * 33).floor().long()
    cols = ((coords[..., 1] + 1) / 2 * 41).floor().long()
    expected_labels = torch.stack([labels[b, rows[b], cols[b]] for b in range(2)])
    torch.manual_seed(1)
    logits, _, points = model.forward_train(images, coords)
    expected = (F.cross_entropy(logits, labels, ignore_index=255)
                + 0.5 * F.cross_entropy(points, expected_labels, ignore_index=255))
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="IFA"):
        fpn = create_model(architecture="fpn", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                           head_channels=8)
        fpn.forward_train(images, coords)


def test_learning_rate_schedule():
    poly = {"iters": 100, "warmup_iters": 0, "power": 0.9, "min_lr": 0.0}
    assert learning_rate(0.01, 0, poly) == 0.01
    assert learning_rate(0.01, 50, poly) == pytest.approx(0.01 * 0.5 ** 0.9)  # 0.0053589
    assert learning_rate(0.01, 50, poly) == pytest.approx(0.0053589, abs=1e-7)
    assert learning_rate(0.01, 99, poly) == pytest.approx(0.01 * 0.01 ** 0.9)
    floor = {**poly, "min_lr": 1e-4}
    assert learning_rate(0.01, 50, floor) == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    assert learning_rate(0.01, 100, floor) == pytest.approx(1e-4)
    warm = {**poly, "warmup_iters": 10}
    assert learning_rate(0.01, 0, warm) == pytest.approx(0.01 * (1 - 0 / 100) ** 0.9 * 0.1)
    assert learning_rate(0.01, 4, warm) == pytest.approx(0.01 * 0.96 ** 0.9 * 0.5)
    assert learning_rate(0.01, 10, warm) == pytest.approx(0.01 * 0.9 ** 0.9)  # warmup over
    values = [learning_rate(0.01, it, poly) for it in range(100)]
    assert values == sorted(values, reverse=True)


def test_parameter_groups(one_thread):
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                         mlp_channels=[8], pos_dim=4, aux_channels=4)
    optim = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "head_lr_mult": 10.0,
             "ifa_head_lr_mult": None, "decay_norm_bias": False}
    optimizer = build_optimizer(model, optim)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert group["lr_mult"] == (1.0 if names[id(p)].startswith("backbone.") else 10.0)
            assert group["weight_decay"] == (5e-4 if p.ndim > 1 else 0.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    optimizer = build_optimizer(model, {**optim, "decay_norm_bias": True, "name": "adamw"})
    assert isinstance(optimizer, torch.optim.AdamW)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {5e-4}
    with pytest.raises(ValueError, match="unknown optimizer 'adam'; valid: sgd, adamw"):
        build_optimizer(model, {**optim, "name": "adam"})


def test_ifa_head_learning_rate(one_thread):
    """ifa_head_lr_mult moves only the IFA head (encodings + MLP) to its own rate; the neck keeps head_lr_mult."""
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                         mlp_channels=[8], pos_dim=4, aux_channels=4, ifa_features="fpn")
    optim = {"name": "adamw", "lr": 0.01, "weight_decay": 5e-4, "head_lr_mult": 2.0, "ifa_head_lr_mult": 0.5,
             "decay_norm_bias": False}
    optimizer = build_optimizer(model, optim)
    mult = {id(p): g["lr_mult"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 1.0 if name.startswith("backbone.") else 0.5 if name.startswith("decoder.head.") else 2.0
        assert mult[id(p)] == expected, name
    assert {n.split(".")[2] for n, p in model.named_parameters() if mult[id(p)] == 0.5} >= {"pos", "classifier"}
    assert any(n.startswith("decoder.neck.") for n, p in model.named_parameters() if mult[id(p)] == 2.0)
    fpn = create_model(architecture="fpn", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                       head_channels=8, aux_channels=4)
    with pytest.raises(ValueError, match="ifa_head_lr_mult is for IFA models"):
        build_optimizer(fpn, optim)


def test_pad_batch_for_hrnet():
    images, labels = torch.randn(2, 3, 65, 70), torch.randint(0, 5, (2, 65, 70))
    same = pad_batch(images, labels, 1)
    assert same[0] is images and same[1] is labels
    padded, padded_labels = pad_batch(images, labels, 32)
    assert padded.shape == (2, 3, 96, 96) and padded_labels.shape == (2, 96, 96)
    assert torch.equal(padded[..., :65, :70], images) and (padded[..., 65:, :] == 0).all()
    assert torch.equal(padded_labels[:, :65, :70], labels) and (padded_labels[:, :, 70:] == 255).all()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while last.pt is being written leaves the previous last.pt intact and no partial file."""
    path = tmp_path / "last.pt"
    good = {"model": {"w": torch.arange(4.0)}, "iter": 2, "elapsed": 1.5}
    save_checkpoint(path, good)

    def crash(state, tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a pickle")
        raise OSError("disk full")

    monkeypatch.setattr("ifa.train.write_checkpoint", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(4)}, "iter": 3, "elapsed": 2.0})
    state = load_checkpoint(path)
    assert state["iter"] == 2 and torch.equal(state["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
