"""Train a Semantic FPN or FPN + IFA model from a YAML recipe, on CPU, one GPU or many (torchrun).

python -m ifa.train --config configs/X.yaml [--resume] [key.sub=value ...]
torchrun --nproc_per_node N -m ifa.train --config configs/X.yaml   (NCCL on GPUs, gloo on CPU; SyncBN on both)

Iteration-based: SGD or AdamW with warmup + poly decay, OHEM cross-entropy, auxiliary head.
Data order and augmentation depend only on (seed, iteration), so `--resume` continues exactly
where the last checkpoint (written atomically every `train.ckpt_interval` iterations) stopped.
Only rank 0 writes: out_dir/last.pt, out_dir/metrics.jsonl, out_dir/train.log, out_dir/final/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.datasets import DatasetError, InMemory, build_dataset, decoded_bytes_estimate
from .data.transforms import TrainAugment
from .distributed import DistributedContext, all_reduce_mean, convert_sync_batchnorm
from .evaluate import evaluate
from .inference import Predictor, cpu_supports_bf16
from .io import atomic_write
from .losses import ohem_cross_entropy
from .metrics import summarize
from .models.checkpoint import save_pretrained
from .models.config import ConfigError, ModelConfig
from .models.segmentor import SegmentationModel

DEFAULTS: dict = {
    "name": "run",
    "model": {},
    "pretrained_backbone": True,
    "init_from": None,
    "data": {"dataset": "camvid", "root": "../shared/data/camvid", "train_split": "train", "val_split": "val",
             "crop_size": [256, 320], "scale_range": [0.5, 2.0], "base_size": None, "img_scale": None, "flip": True,
             "photometric": False, "workers": 1, "in_memory": "auto",
             "crop_jitter": 0},
    "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "head_lr_mult": 1.0,
              "ifa_head_lr_mult": None, "decay_norm_bias": True},
    "schedule": {"iters": 1000, "warmup_iters": 0, "power": 0.9, "min_lr": 0.0},
    "loss": {"ohem": True, "ohem_thresh": 0.7, "ohem_min_kept": 100000, "aux_weight": 0.4,
             "grid_weight": 1.0, "point_samples": 0, "point_weight": 1.0},
    "train": {"batch_size": 8, "seed": 0, "amp": True, "cpu_bf16": False, "channels_last": False, "sync_bn": True,
              "log_interval": 20, "ckpt_interval": 100,
              "eval_interval": 0, "eval_limit": None, "out_dir": None},
    "eval": {"scales": [1.0], "flip": False, "mode": "whole", "window": [512, 512], "stride": None},
}


# --- configuration ---------------------------------------------------------------------------------
def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"unknown config key {path + key!r}; valid here: {sorted(base)}")
        if isinstance(base[key], dict) and key != "model":
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path + key!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """DEFAULTS updated by the YAML file, then by `key.sub=value` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        cfg = _merge(cfg, yaml.safe_load(path.read_text()) or {})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        update: dict = {}
        node = update
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
        cfg = _merge(cfg, update)
    if cfg["train"]["out_dir"] is None:
        cfg["train"]["out_dir"] = f"runs/{cfg['name']}"
    return cfg


def model_config(cfg: dict, info) -> ModelConfig:
    data = {"num_classes": info.num_classes, "class_names": list(info.class_names),
            "palette": [list(c) for c in info.palette], "dataset": info.name, **cfg["model"]}
    return ModelConfig.from_dict(data)


# --- data: deterministic, shardable, resumable ----------------------------------------------------
class EpochBatches:
    """Batches of (index, augmentation seed, crop height, crop width) for one epoch of one rank, skipping the
    first `skip`.

    The permutation and seeds depend only on (seed, epoch); ranks take interleaved slices of each
    global batch, so the union over ranks is the single-process batch. The crop is `crop_size`, or with
    `crop_jitter` j > 0 crop_size + (dh, dw), dh and dw uniform integers in [-j, j], one draw per global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int, skip: int = 0,
                 crop_size: tuple[int, int] = (0, 0), crop_jitter: int = 0):
        gen = np.random.default_rng([seed, epoch])
        order = gen.permutation(n)
        seeds = gen.integers(0, 2 ** 31, size=n)
        jitter = gen.integers(-crop_jitter, crop_jitter + 1, size=(n // batch_size, 2)) if crop_jitter else None
        self.batches = []
        for b in range(skip, n // batch_size):
            ids = order[b * batch_size:(b + 1) * batch_size][rank::world_size]
            crop_h, crop_w = (np.asarray(crop_size) + (jitter[b] if jitter is not None else 0)).tolist()
            self.batches.append([(int(i), int(seeds[i]), crop_h, crop_w) for i in ids])

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class AugmentedSamples:
    def __init__(self, dataset, augment: TrainAugment):
        self.dataset, self.augment = dataset, augment

    def __getitem__(self, key: tuple[int, int, int, int]):
        index, seed, crop_h, crop_w = key
        image, label = self.dataset[index]
        return self.augment(image, label, np.random.default_rng(seed), crop_size=(crop_h, crop_w))


def batch_stream(samples, n: int, batch_size: int, seed: int, start_iter: int, ctx: DistributedContext,
                 workers: int, crop_size: tuple[int, int], crop_jitter: int = 0):
    """Yields (images, labels) batches for iterations start_iter, start_iter + 1, ... forever."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise DatasetError(f"the training split has {n} images, fewer than one batch of {batch_size}")
    epoch, skip = divmod(start_iter, per_epoch)
    while True:
        sampler = EpochBatches(n, batch_size, seed, epoch, ctx.rank, ctx.world_size, skip, crop_size, crop_jitter)
        loader = DataLoader(samples, batch_sampler=sampler, num_workers=workers,
                            generator=torch.Generator().manual_seed(seed), pin_memory=ctx.device.type == "cuda")
        yield from loader
        epoch, skip = epoch + 1, 0


def training_set(dcfg: dict, log: Logger):
    """The training split, decoded once into memory when `data.in_memory` says so ("auto": when the
    decoded arrays would take at most a quarter of the memory available now)."""
    dataset = build_dataset(dcfg["dataset"], dcfg["root"], dcfg["train_split"])
    mode = dcfg["in_memory"]
    if mode not in ("auto", True, False):
        raise ConfigError(f"data.in_memory must be auto, true or false, got {mode!r}")
    if mode == "auto":
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not a POSIX system: keep reading files
            return dataset
        estimate = decoded_bytes_estimate(dataset)
        if estimate > available // 4:
            log.line(f"training set kept on disk: about {estimate / 2 ** 20:.0f} MB decoded, "
                     f"{available / 2 ** 20:.0f} MB available")
            return dataset
    elif not mode:
        return dataset
    start = time.time()
    cached = InMemory(dataset)
    log.line(f"training set decoded into memory: {len(cached)} images, {cached.nbytes / 2 ** 20:.0f} MB, "
             f"{time.time() - start:.1f} s")
    return cached


def autocast_dtype(tcfg: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training: fp16 on CUDA with `train.amp`, bf16 on the CPU with `train.cpu_bf16`
    (fp32 master weights in both), else None (fp32)."""
    if device.type == "cuda":
        return torch.float16 if tcfg["amp"] else None
    if not tcfg["cpu_bf16"]:
        return None
    if device.type != "cpu" or not cpu_supports_bf16():
        raise ConfigError(f"train.cpu_bf16: this {device.type} has no native bf16 support "
                          "(oneDNN needs AVX-512 BF16 or AMX); train in fp32 (train.cpu_bf16=false)")
    return torch.bfloat16


# --- optimisation ---------------------------------------------------------------------------------
def build_optimizer(model: SegmentationModel, optim: dict) -> torch.optim.Optimizer:
    """Backbone at lr, everything else at lr * head_lr_mult, except an IFA head (its encodings and MLP,
    `decoder.head.*`) at lr * ifa_head_lr_mult when that is set; 1-D params undecayed unless decay_norm_bias."""
    ifa_mult = optim["ifa_head_lr_mult"]
    if ifa_mult is not None and not model.is_ifa:
        raise ConfigError("optim.ifa_head_lr_mult is for IFA models; this model has no IFA head")
    # Sorted by name, the groups keep the order backbone, head, ifa_head (checkpoints resume unchanged).
    lr_mults = {"backbone": 1.0, "head": optim["head_lr_mult"], "ifa_head": ifa_mult}
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            role = "backbone"
        else:
            role = "ifa_head" if ifa_mult is not None and name.startswith("decoder.head.") else "head"
        decay = optim["decay_norm_bias"] or param.ndim > 1
        groups.setdefault((role, decay), []).append(param)
    param_groups = [{"params": params, "lr_mult": float(lr_mults[role]),
                     "weight_decay": optim["weight_decay"] if decay else 0.0}
                    for (role, decay), params in sorted(groups.items())]
    if optim["name"] == "sgd":
        return torch.optim.SGD(param_groups, lr=optim["lr"], momentum=optim["momentum"])
    if optim["name"] == "adamw":
        return torch.optim.AdamW(param_groups, lr=optim["lr"])
    raise ConfigError(f"unknown optimizer {optim['name']!r}; valid: sgd, adamw")


def learning_rate(base_lr: float, it: int, schedule: dict) -> float:
    """Linear warmup then poly decay: base_lr * (1 - it / iters) ** power, floored at min_lr."""
    total, warmup = schedule["iters"], schedule["warmup_iters"]
    lr = (base_lr - schedule["min_lr"]) * (1 - it / total) ** schedule["power"] + schedule["min_lr"]
    if it < warmup:
        lr *= (it + 1) / warmup
    return lr


def pad_batch(images: torch.Tensor, labels: torch.Tensor, divisor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (B, 3, H, W) images with 0 (the mean, once normalised) and (B, H, W) labels with 255 (ignored) at the
    bottom and right up to multiples of `divisor` (HRNet needs 32: a 769x769 crop trains as 800x800)."""
    pad_h, pad_w = -images.shape[-2] % divisor, -images.shape[-1] % divisor
    if not (pad_h or pad_w):
        return images, labels
    return (torch.nn.functional.pad(images, (0, pad_w, 0, pad_h), value=0.0),
            torch.nn.functional.pad(labels, (0, pad_w, 0, pad_h), value=255))


def compute_loss(model, images, labels, loss_cfg: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """`model` returns (logits, aux logits or None, point logits or None): an _AuxForward, possibly inside DDP.

    grid_weight x the loss of the logits (stride-4 grid upsampled to the labels), + aux_weight x the auxiliary
    loss, + with loss.point_samples = n > 0 (IFA only) point_weight x the loss of IFA queried at n uniformly
    random continuous points per image, each labelled with the pixel that contains it (as LIIF trains its
    implicit function); `generator` draws the points.
    """
    coords = None
    if loss_cfg["point_samples"] > 0:
        b, n = labels.shape[0], loss_cfg["point_samples"]
        coords = torch.rand(b, n, 2, generator=generator).mul_(2).sub_(1).to(images.device)
    logits, aux, points = model(images, coords)
    loss = loss_cfg["grid_weight"] * _segmentation_loss(logits, labels, loss_cfg) if loss_cfg["grid_weight"] else 0.0
    if aux is not None and loss_cfg["aux_weight"] > 0:
        aux = torch.nn.functional.interpolate(aux, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + loss_cfg["aux_weight"] * _segmentation_loss(aux, labels, loss_cfg)
    if points is not None:
        loss = loss + loss_cfg["point_weight"] * _segmentation_loss(points[..., None], point_labels(labels, coords),
                                                                    loss_cfg)
    return loss


def point_labels(labels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The label of the pixel containing each point: labels (B, H, W), coords (B, N, 2) normalised (y, x)
    -> (B, N, 1) (pixel i spans [-1 + 2i / H, -1 + 2(i + 1) / H))."""
    size = torch.tensor(labels.shape[-2:], device=coords.device)
    pixel = ((coords + 1) / 2 * size).floor().long().clamp(min=0).minimum(size - 1)
    flat = labels.flatten(1).gather(1, pixel[..., 0] * labels.shape[-1] + pixel[..., 1])
    return flat[..., None]


def _segmentation_loss(logits, labels, loss_cfg):
    if loss_cfg["ohem"]:
        return ohem_cross_entropy(logits.float(), labels, loss_cfg["ohem_thresh"], loss_cfg["ohem_min_kept"])
    return torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=255)


class _AuxForward(torch.nn.Module):
    """Wraps the model so DistributedDataParallel's forward returns (logits, aux, point logits)."""

    def __init__(self, model: SegmentationModel):
        super().__init__()
        self.model = model

    def forward(self, x, coords=None):
        return self.model.forward_train(x, coords)


# --- checkpoints: out_dir/last.pt ------------------------------------------------------------------
# A torch pickle of {"model", "optimizer", "scaler": state dicts, "rng": CPU RNG state, "cuda_rng": CUDA
# RNG state or None, "iter": iterations done, "elapsed": training seconds, "hardware": what trained it},
# written by rank 0 only.


def write_checkpoint(state: dict, path: str | Path) -> None:
    torch.save(state, path)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a crash while writing leaves the previous file in place (and no partial file)."""
    atomic_write(path, lambda tmp: write_checkpoint(state, tmp))


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- the run --------------------------------------------------------------------------------------
class Logger:
    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.out_dir = out_dir
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)

    def line(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)
            with open(self.out_dir / "train.log", "a") as f:
                f.write(text + "\n")

    def metrics(self, record: dict) -> None:
        if self.enabled:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")


def train(cfg: dict, resume: bool = False, device: str | None = None) -> dict:
    """Runs the recipe; returns {"out_dir", "final", "val", "model"}: final folder and val metrics on rank 0
    (None elsewhere), and this process's trained model (its BatchNorm layers synchronised in multi-process runs)."""
    ctx = DistributedContext.from_env(device)
    tcfg, out_dir = cfg["train"], Path(cfg["train"]["out_dir"])
    log = Logger(out_dir, ctx.is_main)
    dcfg = cfg["data"]
    train_set = training_set(dcfg, log)
    batch_size = tcfg["batch_size"]
    if batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by the {ctx.world_size} processes")
    if len(train_set) < batch_size:
        raise DatasetError(f"the training split has {len(train_set)} images, fewer than one batch of {batch_size}")
    mcfg = model_config(cfg, train_set.info)
    torch.manual_seed(tcfg["seed"])
    model = SegmentationModel(mcfg, pretrained_backbone=cfg["pretrained_backbone"])
    if cfg["init_from"] and not (resume and (out_dir / "last.pt").is_file()):
        initialise_from(model, cfg["init_from"], log)
    model = model.to(ctx.device)
    if ctx.world_size > 1 and tcfg["sync_bn"]:
        # torch's SyncBatchNorm on GPU, CPUSyncBatchNorm (gloo) on CPU; timm's BN + activation layers kept whole.
        model = convert_sync_batchnorm(model, ctx.device)
    memory_format = torch.channels_last if tcfg["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg["optim"])
    jitter = dcfg["crop_jitter"]
    if not isinstance(jitter, int) or jitter < 0 or jitter >= min(dcfg["crop_size"]):
        raise ConfigError(f"data.crop_jitter must be an integer in [0, {min(dcfg['crop_size'])}), got {jitter!r}")
    lcfg = cfg["loss"]
    if lcfg["point_samples"] > 0 and not model.is_ifa:
        raise ConfigError("loss.point_samples needs an IFA model: Semantic FPN cannot be queried at points")
    if not lcfg["grid_weight"] and lcfg["point_samples"] <= 0:
        raise ConfigError("loss.grid_weight is 0 and loss.point_samples is 0: nothing would be supervised")
    amp_dtype = autocast_dtype(tcfg, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    start_iter, elapsed, trained_on = 0, 0.0, hardware()
    ckpt_path = out_dir / "last.pt"
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if ctx.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start_iter, elapsed = state["iter"], state["elapsed"]
        trained_on = state.get("hardware", trained_on)
        log.line(f"resumed from {ckpt_path} at iteration {start_iter}")
    elif resume:
        log.line(f"--resume: no checkpoint at {ckpt_path}, starting from scratch")
    if ctx.is_main:
        atomic_write(out_dir / "config.yaml", lambda p: Path(p).write_text(yaml.safe_dump(cfg, sort_keys=False)))
    wrapped = _AuxForward(model)
    if ctx.world_size > 1:
        # An auxiliary head whose loss weight is 0 gets no gradient: DDP must be told.
        unused = model.aux_head is not None and cfg["loss"]["aux_weight"] <= 0
        wrapped = DistributedDataParallel(wrapped, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                          find_unused_parameters=unused)
    augment = TrainAugment(crop_size=tuple(dcfg["crop_size"]), scale_range=tuple(dcfg["scale_range"]),
                           base_size=tuple(dcfg["base_size"]) if dcfg["base_size"] else None,
                           img_scale=tuple(dcfg["img_scale"]) if dcfg["img_scale"] else None, flip=dcfg["flip"],
                           photometric=dcfg["photometric"], mean=tuple(mcfg.mean), std=tuple(mcfg.std))
    log.line(f"{ctx.world_size} process(es) on {ctx.device}, {batch_size // ctx.world_size} images each per iteration"
             + (", BatchNorm synchronised" if ctx.world_size > 1 and tcfg["sync_bn"] else "")
             + (f", {str(amp_dtype).removeprefix('torch.')} autocast" if amp_dtype is not None else ", fp32"))
    stream = batch_stream(AugmentedSamples(train_set, augment), len(train_set), batch_size, tcfg["seed"],
                          start_iter, ctx, dcfg["workers"], tuple(dcfg["crop_size"]), dcfg["crop_jitter"])
    total = cfg["schedule"]["iters"]
    model.train()
    bar = tqdm(total=total, initial=start_iter, desc=cfg["name"], disable=not ctx.is_main, dynamic_ncols=True)
    t_last, window_loss, window_n = time.time(), 0.0, 0
    for it in range(start_iter, total):
        lr = learning_rate(cfg["optim"]["lr"], it, cfg["schedule"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        images, labels = next(stream)
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        images, labels = pad_batch(images, labels, model.size_divisor)
        images = images.contiguous(memory_format=memory_format)
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            points = torch.Generator().manual_seed(tcfg["seed"] * 1_000_003 + it)  # resumable: (seed, iteration)
            loss = compute_loss(wrapped, images, labels, cfg["loss"], points)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower optim.lr?")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        window_loss, window_n = window_loss + loss.item(), window_n + 1
        bar.update(1)
        done = it + 1
        if done % tcfg["log_interval"] == 0 or done == total:
            window_loss = all_reduce_mean(window_loss, ctx)  # every rank logs here: the loss of the global batch
            now = time.time()
            sec_per_iter = (now - t_last) / window_n
            elapsed += now - t_last
            t_last = now
            record = {"iter": done, "loss": window_loss / window_n, "lr": lr, "sec_per_iter": sec_per_iter,
                      "eta_min": sec_per_iter * (total - done) / 60}
            log.metrics(record)
            log.line(f"iter {done}/{total} loss {record['loss']:.4f} lr {lr:.2e} "
                     f"{sec_per_iter:.2f} s/it eta {record['eta_min']:.1f} min")
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            window_loss, window_n = 0.0, 0
        if ctx.is_main and (done % tcfg["ckpt_interval"] == 0 or done == total):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "rng": torch.get_rng_state(), "iter": done, "elapsed": elapsed, "hardware": trained_on,
                     "cuda_rng": torch.cuda.get_rng_state() if ctx.device.type == "cuda" else None}
            save_checkpoint(ckpt_path, state)
        if tcfg["eval_interval"] and done % tcfg["eval_interval"] == 0 and done != total:
            result = _validate(model, cfg, mcfg, ctx)
            log.metrics({"iter": done, "val_mIoU": result["mIoU"], "val_aAcc": result["aAcc"]})
            log.line(f"iter {done}: val mIoU {result['mIoU']:.2f}")
            model.train()
    bar.close()
    result = {"out_dir": str(out_dir), "final": None, "val": None, "model": model}
    val = _validate(model, cfg, mcfg, ctx)
    if ctx.is_main:
        log.metrics({"iter": total, "val_mIoU": val["mIoU"], "val_aAcc": val["aAcc"]})
        log.line(f"final: val mIoU {val['mIoU']:.2f} (single scale), training time {elapsed / 60:.1f} min")
        final = export(model, cfg, val, elapsed, out_dir / "final", trained_on)
        result.update(final=str(final), val=val)
    ctx.close()
    return result


def initialise_from(model: SegmentationModel, source: str, log: Logger) -> None:
    """Fine-tuning: start from the weights of a checkpoint folder or Hub repo (`init_from`). Its model config must
    equal the recipe's but for the auxiliary head, which an inference checkpoint does not hold (it starts fresh)."""
    from .hub import load_model

    start = load_model(source)
    ours = {k: v for k, v in model.config.to_dict().items() if k != "aux_channels"}
    theirs = {k: v for k, v in start.config.to_dict().items() if k != "aux_channels"}
    different = sorted(k for k in ours if ours[k] != theirs.get(k))
    if different:
        raise ConfigError(f"init_from {source}: its model differs from the recipe's in {', '.join(different)}")
    missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    if unexpected or any(not k.startswith("aux_head.") for k in missing):
        raise ConfigError(f"init_from {source}: weights do not fit "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.line(f"initialised from {source}" + (" (auxiliary head fresh)" if missing else ""))


def _validate(model: SegmentationModel, cfg: dict, mcfg: ModelConfig, ctx: DistributedContext) -> dict:
    dcfg, ecfg = cfg["data"], cfg["eval"]
    val_set = build_dataset(dcfg["dataset"], dcfg["root"], dcfg["val_split"])
    predictor = Predictor(model, device=ctx.device, scales=tuple(ecfg["scales"]), flip=ecfg["flip"],
                          mode=ecfg["mode"], window=tuple(ecfg["window"]),
                          stride=tuple(ecfg["stride"]) if ecfg["stride"] else None)
    cm = evaluate(predictor, val_set, limit=cfg["train"]["eval_limit"], ctx=ctx, progress=False)
    return summarize(cm, list(mcfg.class_names))


def export(model: SegmentationModel, cfg: dict, val: dict, seconds: float, folder: Path,
           trained_on: str | None = None) -> Path:
    """The inference checkpoint (auxiliary head dropped) with a model card recording the recipe and
    `trained_on` (default: this machine)."""
    config = ModelConfig.from_dict({**model.config.to_dict(), "aux_channels": 0})
    inference_model = SegmentationModel(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_head.")}
    inference_model.load_state_dict(state)
    return save_pretrained(inference_model, folder, card=model_card(cfg, config, val, seconds,
                                                                      trained_on or hardware()))


def export_last(cfg: dict, device: str | None = None) -> Path:
    """Evaluate the run's last.pt on the val split and export it to out_dir/final."""
    out_dir = Path(cfg["train"]["out_dir"])
    if not (out_dir / "last.pt").is_file():
        raise ConfigError(f"{out_dir / 'last.pt'} does not exist: nothing to export")
    state = load_checkpoint(out_dir / "last.pt")
    ctx = DistributedContext.single(device)
    info = build_dataset(cfg["data"]["dataset"], cfg["data"]["root"], cfg["data"]["train_split"]).info
    mcfg = model_config(cfg, info)
    model = SegmentationModel(mcfg)
    model.load_state_dict(state["model"])
    val = _validate(model.to(ctx.device), cfg, mcfg, ctx)
    print(f"iteration {state['iter']}: val mIoU {val['mIoU']:.2f}")
    return export(model.cpu(), cfg, val, state["elapsed"], out_dir / "final", state.get("hardware"))


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def model_card(cfg: dict, config: ModelConfig, val: dict, seconds: float, trained_on: str):
    """The run's card (ifa.cards): architecture, data, hardware, val scores per class, the recipe."""
    from .cards import model_card as card

    name = "FPN + IFA" if config.architecture == "ifa" else "Semantic FPN"
    rows = "\n".join(f"| {k} | {'-' if v is None else f'{v:.2f}'} |" for k, v in val["per_class"].items())
    recipe = yaml.safe_dump({k: cfg[k] for k in ("data", "optim", "schedule", "loss", "train")}, sort_keys=False)
    body = f"""{name}, backbone {config.backbone}, trained on {config.dataset}.

- Architecture: {name} ({config.architecture}), backbone {config.backbone}, neck {config.neck_channels} channels
- Data: {config.dataset}, trained on `{cfg['data']['train_split']}`, evaluated on `{cfg['data']['val_split']}`
- Hardware: {trained_on}; training time {seconds / 60:.1f} min
- Validation (single scale): mIoU {val['mIoU']:.2f}, mAcc {val['mAcc']:.2f}, aAcc {val['aAcc']:.2f}

| class | IoU |
|---|---|
{rows}

## Recipe
```yaml
{recipe}```"""
    return card(cfg["name"], config.architecture, config.dataset, body,
                results={"val mIoU single scale": val["mIoU"]}, split=cfg["data"]["val_split"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ifa.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="YAML recipe (configs/*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    p.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    p.add_argument("--export-only", action="store_true",
                   help="export out_dir/last.pt as a checkpoint folder (out_dir/final) without training")
    p.add_argument("overrides", nargs="*", help="key.sub=value, e.g. schedule.iters=2000 optim.lr=0.005")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.export_only:
            export_last(cfg, device=args.device)
        else:
            train(cfg, resume=args.resume, device=args.device)
    except (ConfigError, DatasetError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

