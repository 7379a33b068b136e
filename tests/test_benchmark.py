"""Tests of ifa.benchmark and of the inference / GPU path it measures (checked on the CPU).

Benchmarks are not tests: nothing here asserts a time. The benchmark runs on tiny sizes, and what
it compares (fast head vs reference formula, IFA model vs its head's reference, full-resolution
logits vs query_points) must be equal.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ifa import benchmark
from ifa.benchmark import compare, level_sizes, main, parse_size, summarize
from ifa.inference import Predictor
from ifa.models import create_model
from ifa.models.ifa import IFAHead

TINY_MODEL = {"num_classes": 3, "neck_channels": 8, "head_channels": 6, "mlp_channels": [16, 8], "pos_dim": 8}



# --- the command ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_quick_run_writes_ratios_and_all_compared_outputs_are_equal(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--quick", "--size", "64x128", "--small-size", "32x64", "--model-size", "64x96",
            "--chunks", "1000", "--repeats", "1", "--warmup", "0", "--threads", "1", "--clock", "cpu",
            "--json", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    for key in ("head_speedup_64x128", "head_speedup_32x64", "ifa_over_fpn_latency_effl0", "ifa_over_fpn_latency_r50"):
        assert report["ratios"][key] > 0, key
    assert report["checks"] and all(c["equal"] for c in report["checks"].values()), report["checks"]
    assert len(report["checks"]) == 2 + 2 + 2 + 3  # two head sizes, two backbones, two chunk sizes, three reads
    for read in ("nearest", "ensemble", "centred"):  # each read's every-pixel time against its grid, one run
        assert report["ratios"][f"full_over_grid_{read}_32x64"] > 0
    assert report["ratios"]["ensemble_over_nearest_full_32x64"] > 0
    fullres = report["results"]["fullres"]
    assert [r["chunk_size"] for r in fullres["rows"]] == [fullres["default_chunk_size"], 1000]
    if benchmark.cpu_memory_supported():
        assert report["memory"]["fullres_extra_peak_mb_64x128"] > 0
        assert all(r["extra_peak_mb"] > 0 for r in fullres["rows"])
        # The logits alone (1, 19, 64, 128) float32 are 0.6 MB; a 1000-query chunk needs a few MB more.
        assert report["memory"]["fullres_extra_peak_mb_64x128"] < 200
    for row in report["results"]["models"]:
        assert row["fpn"]["cpu_ms"] > 0 and row["ifa"]["wall_ms"] > 0
    # CPU paths: the head's achieved rate against the GEMM rates of its own products, measured in the same run.
    paths = report["results"]["cpu_paths"]
    assert paths["gemm_gflops"]["mkl_fp32"] > 0 and paths["head_gflops"] > 0
    expected = paths["head_gflops"] / max(v for k, v in paths["gemm_gflops"].items() if k.endswith("fp32"))
    assert report["ratios"]["head_gemm_efficiency_fp32_64x128"] == pytest.approx(expected)
    from ifa.inference import cpu_supports_bf16

    if cpu_supports_bf16():
        assert 0.9 < report["ratios"]["bf16_argmax_agreement_120x160"] <= 1.0
        assert report["ratios"]["bf16_over_fp32_ifa_120x160"] > 0
    printed = capsys.readouterr().out
    assert "all outputs compared are equal" in printed and "ratios:" in printed


def test_bad_arguments_exit_with_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["--size", "big"])
    assert "HxW" in capsys.readouterr().err
    assert main(["--quick", "--repeats", "0", "--no-progress"]) == 2
    assert "repeats" in capsys.readouterr().err
    assert main(["--quick", "--precision", "fp16", "--device", "cpu", "--no-progress"]) == 2


def test_parse_size_and_level_sizes():
    assert parse_size("1024x2048") == (1024, 2048)
    assert level_sizes((1024, 2048)) == [(256, 512), (128, 256), (64, 128), (32, 64)]
    assert level_sizes((360, 480)) == [(90, 120), (45, 60), (23, 30), (12, 15)]


def test_compare_uses_the_dtype_tolerance_relative_to_the_scale():
    ref = torch.tensor([10.0, -20.0])
    assert compare(ref + 1e-3, ref, torch.float32)["equal"]  # 1e-3 <= 1e-4 * 20
    assert not compare(ref + 1e-2, ref, torch.float32)["equal"]
    assert compare(ref + 0.2, ref, torch.float16)["equal"]  # 0.2 <= 2e-2 * 20
    assert not compare(ref[:1], ref, torch.float32)["equal"]  # shapes differ


def test_summarize_names_ratios_by_size_and_checks_targets_at_full_size():
    timing = {"wall_ms": 2.0, "cpu_ms": 1.0}
    results = {
        "head": [{"size": [1024, 2048], "precision": "fp32", "fast": {"wall_ms": 1.0, "cpu_ms": 1.0},
                  "reference": {"wall_ms": 2.0, "cpu_ms": 7.0}}],
        "models": [{"tag": "effl0", "size": [64, 64], "fpn": timing, "ifa": {"wall_ms": 1.0, "cpu_ms": 2.0}}],
        "fullres": {"size": [1024, 2048], "default_chunk_size": 8, "rows": [
            {"chunk_size": 4, "extra_peak_mb": 900.0}, {"chunk_size": 8, "extra_peak_mb": 1500.0}]},
    }
    ratios, memory, targets = summarize(results, "cpu")
    assert ratios["head_speedup_1024x2048"] == ratios["head_speedup_1024x2048_fp32"] == 7.0
    assert ratios["ifa_over_fpn_latency_effl0"] == 2.0
    assert memory["fullres_extra_peak_mb_1024x2048"] == 1500.0  # the default chunk size's row
    assert targets == {"head_speedup_1024x2048 >= 6.0": True, "ifa_over_fpn_latency_effl0 <= 1": False,
                       "fullres_extra_peak_mb_1024x2048 < 2048": True}
    assert summarize(results, "wall")[0]["head_speedup_1024x2048"] == 2.0


@pytest.mark.skipif(not benchmark.cpu_memory_supported(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_a_large_allocation():
    result = benchmark.measure_peak(lambda: torch.ones(64, 2 ** 20), torch.device("cpu"), probe=lambda t: t[0, :3])
    assert 240 < result["extra_peak_mb"] < 400  # 256 MiB of ones (touched), plus noise
    assert result["probe"].tolist() == [1.0, 1.0, 1.0]


# --- the inference path of the IFA head -------------------------------------------------------------
# aten ops that read a tensor's value on the host (a device synchronisation on a GPU) or whose
# output size depends on values (nonzero, unique, masked_select, boolean indexing).
_SYNCING = ("_local_scalar_dense", "is_nonzero", "item", "nonzero", "unique", "masked_select", "equal",
            "_assert_async", "tolist")


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("size", [None, (23, 37), (40, 64)])
def test_head_inference_has_no_host_device_synchronisation(size):
    """Every aten op the inference path runs is recorded: none reads values back to the host."""
    torch.manual_seed(0)
    head = IFAHead([8, 8, 8, 8], 5, hidden=(16, 8), chunk_size=100).eval()
    feats = [torch.randn(1, 8, h, w) for h, w in level_sizes((40, 64))]
    with torch.inference_mode(), _RecordOps() as recorder:
        head(feats, size)
        head.decode_features(feats, size)
    assert recorder.ops and not [op for op in recorder.ops if any(s in op for s in _SYNCING)], recorder.ops


def test_head_inference_equals_reference_under_bf16_autocast_and_channels_last():
    """The dtype and layout handling of the inference path (what autocast / channels_last do on a GPU)."""
    torch.manual_seed(0)
    head = IFAHead([32] * 4, 19, hidden=(64, 32)).eval()
    feats = [torch.randn(2, 32, h, w) for h, w in level_sizes((96, 160))]
    with torch.inference_mode():
        ref = head.forward_reference(feats)
        nhwc = head([f.contiguous(memory_format=torch.channels_last) for f in feats])
        torch.testing.assert_close(nhwc, ref, atol=1e-5, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = head(feats)
            low_ref = head.forward_reference(feats)
    assert low.dtype == torch.bfloat16
    assert compare(low, ref, torch.bfloat16)["equal"] and compare(low, low_ref, torch.bfloat16)["equal"]


def test_automatic_chunk_size_depends_on_the_device():
    head = IFAHead([4] * 4, 3, hidden=(8,))
    assert head.chunk_size is None
    assert head._chunk_queries(torch.device("cpu")) == 2 ** 12
    assert head._chunk_queries(torch.device("cuda")) == 2 ** 18
    head.chunk_size = 7
    assert head._chunk_queries(torch.device("cuda")) == 7


def test_inference_path_is_only_taken_without_autograd():
    torch.manual_seed(0)
    head = IFAHead([4] * 4, 3, hidden=(8,)).eval()
    feats = [torch.randn(1, 4, h, w, requires_grad=True) for h, w in level_sizes((32, 48))]
    out = head(feats)  # eval mode with autograd on: the differentiable path
    out.sum().backward()
    assert all(f.grad is not None for f in feats)
    with torch.no_grad():
        torch.testing.assert_close(head(feats), out.detach(), atol=1e-5, rtol=1e-4)


# --- the Predictor's GPU path options, checked on the CPU -----------------------------------------
@pytest.fixture(scope="module")
def image():
    return torch.randint(0, 256, (37, 53, 3), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy()


def _model(architecture: str):
    torch.manual_seed(0)
    return create_model(architecture=architecture, backbone="efficientnet_lite0", **TINY_MODEL).eval()


@pytest.mark.parametrize("architecture", ["fpn", "ifa"])
def test_channels_last_predictor_matches_the_default(architecture, image):
    plain = Predictor(_model(architecture), device="cpu", channels_last=False).predict(image)
    nhwc_predictor = Predictor(_model(architecture), device="cpu", channels_last=True)
    default = Predictor(_model(architecture), device="cpu")
    assert nhwc_predictor.channels_last and default.channels_last == torch.backends.mkldnn.is_available()
    nhwc = nhwc_predictor.predict(image)
    torch.testing.assert_close(nhwc.probs, plain.probs, atol=1e-5, rtol=1e-4)


def test_cpu_precisions(image, monkeypatch):
    """bf16 on the CPU where it is native (labels as fp32's almost everywhere), refused clearly where not;
    fp16 is CUDA-only."""
    import ifa.inference

    model = _model("ifa")
    with pytest.raises(ValueError, match="fp16 runs on CUDA only"):
        Predictor(model, device="cpu", precision="fp16")
    if ifa.inference.cpu_supports_bf16():
        fp32 = Predictor(model, device="cpu").predict(image)
        bf16 = Predictor(model, device="cpu", precision="bf16").predict(image)
        assert (bf16.labels == fp32.labels).mean() > 0.95
        torch.testing.assert_close(bf16.probs, fp32.probs, atol=0.05, rtol=0)
    monkeypatch.setattr(ifa.inference, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        Predictor(model, device="cpu", precision="bf16")


@pytest.mark.slow
def test_compiled_predictor_matches_the_default(image):
    """torch.compile behind the flag: the 'eager' backend checks the capture without a C++ compiler."""
    plain = Predictor(_model("ifa"), device="cpu").predict(image)
    torch._dynamo.reset()
    compiled = Predictor(_model("ifa"), device="cpu", compile="eager").predict(image)
    torch.testing.assert_close(compiled.probs, plain.probs, atol=1e-5, rtol=1e-4)
