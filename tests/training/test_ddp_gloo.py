"""A real distributed run: two CPU processes (gloo) under torchrun train a tiny model on CamVid images."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from training_support import REPO, write_recipe


@pytest.mark.slow
def test_two_processes_train_in_lockstep(camvid_tiny, tmp_path):
    """Ranks end with identical parameters and BatchNorm statistics, CPUSyncBatchNorm matches BatchNorm on the
    whole batch, the loss of the fixed batch falls, and only rank 0 writes the run's files."""
    out_dir = tmp_path / "run"
    recipe = write_recipe(tmp_path / "recipe.yaml", camvid_tiny, out_dir)  # batch 4 = 2 per process, 4 iterations
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "training" / "ddp_worker.py"), str(recipe), str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["sync_bn"]["type"] == "CPUSyncBatchNorm"
        for key in ("output", "input_grad", "weight_grad", "running_mean", "running_var"):
            assert report["sync_bn"][key] < 1e-5, (key, report)
        assert set(report["bn_types"]) == {"CPUSyncBatchNorm", "CPUSyncBatchNormAct"}  # Lite0's BN + ReLU6 kept

    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for key, value in weights[0].items():  # parameters and buffers (synchronised running statistics)
        assert torch.equal(value, weights[1][key]), key

    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert losses[-1] < 0.9 * losses[0], losses
    log = (out_dir / "train.log").read_text()
    assert "2 process(es) on cpu, 2 images each per iteration, BatchNorm synchronised" in log
    last = torch.load(out_dir / "last.pt", weights_only=True)
    assert last["iter"] == 4
    for key, value in last["model"].items():
        assert torch.equal(value, weights[0][key]), key
    assert (out_dir / "final" / "model.safetensors").is_file()
