"""Fixtures of the training / evaluation tests: a tiny CamVid subset, one intra-op thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from training_support import CAMVID, TINY_SIZE


@pytest.fixture(scope="session")
def camvid_tiny(tmp_path_factory) -> Path:
    """4 train and 2 val CamVid images (and labels) shrunk to 64x80, in a temporary CamVid-layout folder."""
    if not (CAMVID / "train").is_dir() or not (CAMVID / "valannot").is_dir():
        message = f"CamVid not found at {CAMVID} (set IFA_CAMVID_ROOT)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("camvid")
    for split, count in (("train", 4), ("val", 2)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        for name in sorted(p.name for p in (CAMVID / split).glob("*.png"))[:count]:
            size = (TINY_SIZE[1], TINY_SIZE[0])
            with Image.open(CAMVID / split / name) as img:
                img.convert("RGB").resize(size, Image.BILINEAR).save(root / split / name)
            with Image.open(CAMVID / f"{split}annot" / name) as lab:
                lab.resize(size, Image.NEAREST).save(root / f"{split}annot" / name)
    return root


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscribing a shared machine and keeps runs reproducible."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
