"""Fast CPU training options: the training set decoded once into memory, bf16 autocast (refused clearly where the
CPU has no native bf16), channels_last, and point supervision resuming exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_resume_and_cli import assert_same_state
from training_support import write_recipe

import ifa.train
from ifa.data.datasets import InMemory, build_dataset, decoded_bytes_estimate
from ifa.models.config import ConfigError
from ifa.train import autocast_dtype, load_checkpoint, load_config, train


def test_in_memory_dataset_holds_the_same_items(camvid_tiny):
    dataset = build_dataset("camvid", camvid_tiny, "train")
    cached = InMemory(dataset)
    assert len(cached) == len(dataset) and cached.info == dataset.info
    for i in range(len(dataset)):
        for a, b in zip(cached[i], dataset[i]):
            np.testing.assert_array_equal(a, b)
    assert decoded_bytes_estimate(dataset) == cached.nbytes  # equal-size images: the estimate is exact


def test_in_memory_setting(camvid_tiny, tmp_path):
    log = ifa.train.Logger(tmp_path, enabled=True)
    base = {"dataset": "camvid", "root": str(camvid_tiny), "train_split": "train"}
    assert isinstance(ifa.train.training_set({**base, "in_memory": True}, log), InMemory)
    assert not isinstance(ifa.train.training_set({**base, "in_memory": False}, log), InMemory)
    assert isinstance(ifa.train.training_set({**base, "in_memory": "auto"}, log), InMemory)  # 4 tiny images fit
    with pytest.raises(ConfigError, match="in_memory"):
        ifa.train.training_set({**base, "in_memory": "yes"}, log)


def test_cpu_bf16_is_refused_clearly_without_native_support(monkeypatch):
    cpu = torch.device("cpu")
    assert autocast_dtype({"amp": True, "cpu_bf16": False}, cpu) is None
    monkeypatch.setattr(ifa.train, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16"):
        autocast_dtype({"amp": True, "cpu_bf16": True}, cpu)
    monkeypatch.setattr(ifa.train, "cpu_supports_bf16", lambda: True)
    assert autocast_dtype({"amp": True, "cpu_bf16": True}, cpu) == torch.bfloat16


FAST = {"data": {"crop_size": [49, 63], "in_memory": True, "crop_jitter": 4},
        "loss": {"point_samples": 64, "point_weight": 0.5},
        "train": {"channels_last": True, "ckpt_interval": 2}}


def test_point_supervised_channels_last_run_resumes_exactly(camvid_tiny, tmp_path, monkeypatch, one_thread):
    """IFA with odd, per-batch random crops (non-integer level ratios), point supervision and channels_last: a run
    interrupted after iteration 2 and resumed ends as an uninterrupted one (crops and points are drawn from the
    seed and the iteration)."""
    full = load_config(write_recipe(tmp_path / "full.yaml", camvid_tiny, tmp_path / "full", **FAST))
    train(full, device="cpu")
    reference = load_checkpoint(tmp_path / "full" / "last.pt")
    cut = load_config(write_recipe(tmp_path / "cut.yaml", camvid_tiny, tmp_path / "cut", **FAST))
    real_loss, calls = ifa.train.compute_loss, []

    def killed_at_iteration_3(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_loss(*args)

    monkeypatch.setattr(ifa.train, "compute_loss", killed_at_iteration_3)
    with pytest.raises(KeyboardInterrupt):
        train(cut, device="cpu")
    monkeypatch.setattr(ifa.train, "compute_loss", real_loss)
    train(cut, resume=True, device="cpu")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert_same_state(resumed["model"], reference["model"])


@pytest.mark.skipif(not ifa.train.cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_cpu_bf16_run_trains(camvid_tiny, tmp_path, one_thread):
    cfg = load_config(write_recipe(tmp_path / "bf16.yaml", camvid_tiny, tmp_path / "bf16",
                                   train={"cpu_bf16": True, "channels_last": True}))
    result = train(cfg, device="cpu")
    assert "bfloat16 autocast" in (tmp_path / "bf16" / "train.log").read_text()
    assert all(v.dtype == torch.float32 for v in result["model"].state_dict().values() if v.is_floating_point())
    assert np.isfinite(result["val"]["mIoU"])


def test_point_supervision_needs_an_ifa_model(camvid_tiny, tmp_path):
    cfg = load_config(write_recipe(tmp_path / "p.yaml", camvid_tiny, tmp_path / "p", model={"architecture": "fpn"},
                                   loss={"point_samples": 8}))
    with pytest.raises(ConfigError, match="point_samples"):
        train(cfg, device="cpu")


def test_random_crop_sizes_per_batch_are_deterministic_and_bounded():
    """data.crop_jitter: one crop size per global batch, within crop_size +- jitter, from (seed, epoch) alone;
    ranks see the same size; without jitter the batches (order, seeds) are those of before."""
    from ifa.train import EpochBatches

    a = EpochBatches(40, 8, seed=3, epoch=1, rank=0, world_size=1, crop_size=(256, 320), crop_jitter=32)
    b = EpochBatches(40, 8, seed=3, epoch=1, rank=0, world_size=1, crop_size=(256, 320), crop_jitter=32)
    assert a.batches == b.batches
    sizes = [{(h, w) for _, _, h, w in batch} for batch in a.batches]
    assert all(len(s) == 1 for s in sizes) and len(set().union(*sizes)) > 1
    assert all(224 <= h <= 288 and 288 <= w <= 352 for s in sizes for h, w in s)
    ranks = [EpochBatches(40, 8, 3, 1, r, 2, crop_size=(256, 320), crop_jitter=32) for r in range(2)]
    assert [{(h, w) for *_, h, w in batch} for batch in ranks[1].batches] == sizes
    plain = EpochBatches(40, 8, seed=3, epoch=1, rank=0, world_size=1, crop_size=(256, 320))
    assert [[k[:2] for k in batch] for batch in plain.batches] == [[k[:2] for k in batch] for batch in a.batches]
    assert all(k[2:] == (256, 320) for batch in plain.batches for k in batch)
