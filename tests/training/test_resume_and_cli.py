"""Resuming: a run interrupted after k iterations and resumed ends identical to an uninterrupted run.
The training command line: --help, one-line errors, the run's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from training_support import REPO, write_recipe

import ifa.train
from ifa import load_model
from ifa.train import load_checkpoint, load_config, train
from ifa.train import main as train_main

# Semantic FPN (dropout in the head: the RNG state must be restored too), SGD with momentum and warmup, random
# scale, crop and flip: everything that a resume has to reproduce. Checkpoints every 2 iterations.
RESUME_RECIPE = {"model": {"architecture": "fpn"},
                 "data": {"crop_size": [48, 64], "scale_range": [0.75, 1.25], "flip": True},
                 "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0005},
                 "schedule": {"iters": 4, "warmup_iters": 1}, "train": {"batch_size": 2, "ckpt_interval": 2}}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, dict):
            assert_same_state(value, b[key])
        elif isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], rtol=0, atol=1e-6, msg=key)
        else:
            assert value == b[key], key


def test_resume_matches_an_uninterrupted_run(camvid_tiny, tmp_path, monkeypatch, one_thread):
    full = load_config(write_recipe(tmp_path / "full.yaml", camvid_tiny, tmp_path / "full", **RESUME_RECIPE))
    result = train(full, device="cpu")
    reference = load_checkpoint(tmp_path / "full" / "last.pt")
    assert reference["iter"] == 4 and result["final"] is not None

    cut = load_config(write_recipe(tmp_path / "cut.yaml", camvid_tiny, tmp_path / "cut", **RESUME_RECIPE))
    real_loss, calls = ifa.train.compute_loss, []

    def killed_at_iteration_4(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")  # mid-interval: iteration 3 is lost, the checkpoint of 2 is not
        return real_loss(*args)

    monkeypatch.setattr(ifa.train, "compute_loss", killed_at_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        train(cut, device="cpu")
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iter"] == 2
    monkeypatch.setattr(ifa.train, "compute_loss", real_loss)
    train(cut, resume=True, device="cpu")
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert resumed["iter"] == 4
    for key in ("model", "optimizer", "scaler"):
        assert_same_state(reference[key], resumed[key])
    assert torch.equal(reference["rng"], resumed["rng"])
    log = (tmp_path / "cut" / "train.log").read_text()
    assert "resumed from" in log and "at iteration 2" in log
    losses = {}
    for run in ("full", "cut"):
        for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses.setdefault(run, {})[record["iter"]] = record["loss"]
    assert losses["cut"][4] == pytest.approx(losses["full"][4], abs=1e-6)  # the same last batch and weights

    # The run's deliverables: the Hub-style folder with a model card, loadable by the library.
    final = tmp_path / "full" / "final"
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    card = (final / "README.md").read_text()
    assert "val mIoU" in card and "lr: 0.02" in card and "Hardware:" in card
    model = load_model(final)
    assert model.aux_head is None and model.config.num_classes == 11


def test_resume_without_checkpoint_starts_fresh(camvid_tiny, tmp_path, one_thread):
    cfg = load_config(write_recipe(tmp_path / "r.yaml", camvid_tiny, tmp_path / "run",
                                   schedule={"iters": 1}, model={"aux_channels": 0}))
    train(cfg, resume=True, device="cpu")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "--resume: no checkpoint" in log and "1 process(es) on cpu" in log
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iter"] == 1


def test_train_help_and_one_line_errors(camvid_tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--config" in out and "--resume" in out
    recipe = write_recipe(tmp_path / "r.yaml", camvid_tiny, tmp_path / "run")
    cases = {("--config", str(tmp_path / "nope.yaml")): "does not exist",
             ("--config", str(recipe), "optim.name=adam"): "unknown optimizer 'adam'",
             ("--config", str(recipe), "data.root=/nowhere"): "camvid root /nowhere does not exist",
             ("--config", str(recipe), "train.batch_size=8"): "has 4 images, fewer than one batch of 8"}
    for argv, message in cases.items():
        code = train_main(list(argv))
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and message in err and "\n" not in err, (argv, err)


def test_bad_config_from_the_shell(tmp_path):
    """The real command: a config with a typo exits non-zero with one line on stderr."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nschedule: {itres: 10}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "ifa.train", "--config", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown config key 'schedule.itres'; valid here: ['iters', 'min_lr', 'power', 'warmup_iters']"]
