"""CPU inference paths side by side (interleaved repeats, medians): the IFA head's matrix products through
oneDNN vs torch.addmm (MKL), and the shipped models in NCHW vs NHWC (channels_last) vs bf16 + NHWC, the NHWC
ones also with BatchNorm folded into the convolutions (as the app runs them), with the argmax agreement on
real CamVid val images.

python -m tools.bench_cpu_paths [--threads 1] [--root ../shared/data/camvid] [--images 21]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import ifa
from ifa.data.datasets import build_dataset
from ifa.inference import Predictor, cpu_supports_bf16
from ifa.models.ifa import IFAHead

HEADS = {"360x480 CamVid widths": ((360, 480), 128, (256, 128, 128), 11),
         "1024x2048 paper widths": ((1024, 2048), 256, (512, 256, 256), 19)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_head(repeats: int) -> None:
    for name, ((h, w), c, hidden, k) in HEADS.items():
        torch.manual_seed(0)
        head = IFAHead([c] * 4, k, hidden=hidden).eval()
        feats = [torch.randn(1, c, -(-h // s), -(-w // s)) for s in (4, 8, 16, 32)]
        times, outs = {"matmul": [], "onednn": []}, {}
        with torch.inference_mode():
            for mode in times:
                os.environ["IFA_CPU_GEMM"] = mode
                outs[mode] = head(feats)
            for _ in range(repeats):
                for mode in times:
                    os.environ["IFA_CPU_GEMM"] = mode
                    times[mode].append(timed(lambda h=head, f=feats: h(f)))
        os.environ.pop("IFA_CPU_GEMM")
        med = {m: statistics.median(v) for m, v in times.items()}
        diff = (outs["onednn"] - outs["matmul"]).abs().max()
        print(f"IFA head {name}: addmm {1e3 * med['matmul']:.0f} ms, oneDNN {1e3 * med['onednn']:.0f} ms, "
              f"ratio {med['onednn'] / med['matmul']:.2f}; max |diff| {diff:.1e}")


def bench_models(root: str, n_images: int, repeats: int) -> None:
    val = build_dataset("camvid", root, "val")
    images = [val[i][0] for i in np.linspace(0, len(val) - 1, n_images).astype(int)]
    for name in ("camvid-effl0-fpn", "camvid-effl0-ifa"):
        settings = {"fp32 NCHW": dict(channels_last=False), "fp32 NHWC": dict(channels_last=True),
                    "fp32 NHWC folded": dict(channels_last=True, fold=True)}
        if cpu_supports_bf16():
            settings["bf16 NHWC"] = dict(channels_last=True, precision="bf16")
            settings["bf16 NHWC folded"] = dict(channels_last=True, precision="bf16", fold=True)

        def model(fold=False, name=name):
            loaded = ifa.load_model(f"checkpoints/{name}")
            return loaded.fold_batchnorm() if fold else loaded
        predictors = {k: Predictor(model(v.pop("fold", False)), device="cpu", **v) for k, v in settings.items()}
        times = {k: [] for k in predictors}
        for p in predictors.values():
            p.predict(images[0])
        for r in range(repeats):
            image = images[r % len(images)]
            for k, p in predictors.items():
                times[k].append(timed(lambda p=p, image=image: p.predict(image)))
        med = {k: statistics.median(v) for k, v in times.items()}
        agreement = {k: [] for k in predictors if k != "fp32 NCHW"}
        for image in images:
            ref = predictors["fp32 NCHW"].predict(image).labels
            for k in agreement:
                agreement[k].append(100 * float((predictors[k].predict(image).labels == ref).mean()))
        print(f"{name} 360x480: "
              + ", ".join(f"{k} {1e3 * v:.0f} ms ({v / med['fp32 NCHW']:.2f}x)" for k, v in med.items())
              + "; labels as fp32 NCHW's: " + ", ".join(f"{k} {np.mean(v):.3f}% (min {np.min(v):.2f}%)"
                                                       for k, v in agreement.items())
              + f" over {len(images)} val images")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default="../shared/data/camvid")
    p.add_argument("--images", type=int, default=21)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), oneDNN bf16 native: {cpu_supports_bf16()}")
    bench_head(args.repeats)
    bench_models(args.root, args.images, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
