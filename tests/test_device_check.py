"""tools.device_check in its CPU quick mode, end to end: one subprocess, one JSON report with every step.

The GPU run is `python -m tools.device_check OUT_DIR` on a CUDA machine; here the same steps run at reduced sizes on
the CPU. CamVid comes from IFA_CAMVID_ROOT or ../shared/data/camvid; without it the script uses the shipped
samples, so the test needs no data folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools.device_check import STEPS

REPO = Path(__file__).resolve().parents[1]
CUDA_ONLY = {"cudnn_benchmark"}
QUICK_LIMIT_S = 180


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, float, str]:
    """(report, wall seconds, output) of `python -m tools.device_check OUT --device cpu --quick`."""
    out = tmp_path_factory.mktemp("device_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tools.device_check", str(out), "--device", "cpu", "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    output = done.stdout[-4000:] + done.stderr[-4000:]
    assert (out / "device_check.json").is_file(), output
    assert (out / "device_check.log").is_file()
    return json.loads((out / "device_check.json").read_text()), seconds, output


@pytest.mark.slow
@pytest.mark.timeout(660)
def test_quick_cpu_run_passes_every_step_in_time(quick_run):
    report, seconds, output = quick_run
    steps = report["steps"]
    assert list(steps) == [name for name, _ in STEPS], output
    has_gradio = importlib.util.find_spec("gradio") is not None
    for name, entry in steps.items():
        assert entry["seconds"] >= 0 and entry["budget_s"] > 0, (name, entry)
        if name in CUDA_ONLY or (name == "engine" and not has_gradio):
            assert entry["status"] == "skipped" and entry["reason"], (name, entry)
        else:
            assert entry["status"] == "ok", (name, entry, output)
    assert report["summary"]["ok"] and not report["summary"]["failed"] and not report["summary"]["error"]
    assert seconds < QUICK_LIMIT_S, (seconds, report["step_seconds"])


@pytest.mark.slow
def test_quick_cpu_report_holds_the_numbers(quick_run):
    report, _, _ = quick_run
    steps = report["steps"]
    env = steps["environment"]
    assert env["torch"] and env["python"] and env["cuda_available"] is False
    assert all(version for module, version in env["packages"].items() if module != "gradio")

    correctness = steps["correctness"]
    for role in ("baseline", "ifa"):
        rows = correctness["models"][role]
        assert rows["fp32"]["argmax_agreement"] >= 0.99 and rows["fp32"]["max_rel_logit_error"] < 1e-4
        if "bf16" in rows:  # CPUs with native bf16
            assert rows["bf16"]["argmax_agreement"] >= 0.99 and rows["bf16"]["finite"]

    for row in steps["ifa_reference"]["rows"]:
        assert row["equal"] and row["size"] == [360, 480] and row["grid"] == [90, 120]
        assert row["max_abs_diff"] < (1e-3 if row["precision"] == "fp32" else 0.5)

    fullres = steps["fullres"]
    assert fullres["full_ms"] > 0 and fullres["peak_mb"] > 0 and fullres["labels_agree_with_stride4"] >= 0.9

    assert steps["benchmark"]["ratios"] and steps["benchmark"]["exit_status"] == 0

    if steps["engine"]["status"] == "ok":
        for row in steps["engine"]["rows"]:
            assert row["gpu_seconds"] >= 1 and 0 < row["wall_over_gpu_seconds"] == pytest.approx(
                row["wall_s"] / row["gpu_seconds"], abs=1e-3)

    train = steps["train"]
    assert len(train["losses"]) == train["iters"] and train["sec_per_iter"] > 0

    torchrun = steps["torchrun"]
    assert torchrun["collective"]["backend"] == "gloo" and torchrun["collective"]["ok"]
    assert "1 process(es) on cpu" in torchrun["train_log"]

    for row in steps["evaluate"]["models"].values():
        assert abs(row["mIoU_diff"]) <= 1.0 and 0 < row["cpu_fp32"]["mIoU"] <= 100
