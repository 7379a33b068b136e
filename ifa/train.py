"""Train a Semantic FPN or FPN + IFA model from a YAML recipe, on CPU, one GPU or many (torchrun).

python -m ifa.train --config configs/X.yaml [--resume] [key.sub=value ...]
torchrun --nproc_per_node N -m ifa.train --config configs/X.yaml   (NCCL on GPUs, gloo on CPU; SyncBN on both)

Iteration-based: SGD or AdamW with warmup + poly decay, OHEM cross-entropy, auxiliary head.
Data order and augmentation depend only on (seed, iteration), so `--resume` continues exactly
where the last checkpoint (written atomically every `train.ckpt_interval` iterations) stopped.
Only rank 0 writes: out_dir/last.pt, out_dir/metrics.jsonl, out_dir/train.log, out_dir/final/.

The recipe is an ifa.recipe.Recipe (typed, validated; `load_recipe`, or `load_config` for its plain dict).
`train` = `setup` (data, model, optimiser, resumed state, batches) + `train_step` per iteration + `log_progress`,
`save_checkpoint(checkpoint_state(...))`, `evaluate_during_training` at their intervals + `finish` (final
evaluation and export).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from .recipe import (
    DEFAULTS,
    DataRecipe,
    LossRecipe,
    OptimRecipe,
    Recipe,
    ScheduleRecipe,
    TrainRecipe,
    as_recipe,
    load_config,
    load_recipe,
)

__all__ = ["DEFAULTS", "Recipe", "load_config", "load_recipe", "main", "train"]

# --- configuration: the typed recipe (ifa.recipe) ---------------------------------------------------
def model_config(cfg: Recipe | dict, info) -> ModelConfig:
    """The recipe's `model` keys with the dataset's classes (`info`: ifa.data.classes.DatasetInfo)."""
    data = {"num_classes": info.num_classes, "class_names": list(info.class_names),
            "palette": [list(c) for c in info.palette], "dataset": info.name, **Recipe.from_dict(cfg).model}
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


def training_set(data: DataRecipe | dict, log: Logger):
    """The training split, decoded once into memory when `data.in_memory` says so ("auto": when the
    decoded arrays would take at most a quarter of the memory available now)."""
    data = DataRecipe.from_dict(data)
    dataset = build_dataset(data.dataset, data.root, data.train_split)
    mode = data.in_memory
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


def autocast_dtype(settings: TrainRecipe | dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training: fp16 on CUDA with `train.amp`, bf16 on the CPU with `train.cpu_bf16`
    (fp32 master weights in both), else None (fp32)."""
    settings = TrainRecipe.from_dict(settings)
    if device.type == "cuda":
        return torch.float16 if settings.amp else None
    if not settings.cpu_bf16:
        return None
    if device.type != "cpu" or not cpu_supports_bf16():
        raise ConfigError(f"train.cpu_bf16: this {device.type} has no native bf16 support "
                          "(oneDNN needs AVX-512 BF16 or AMX); train in fp32 (train.cpu_bf16=false)")
    return torch.bfloat16


# --- optimisation ---------------------------------------------------------------------------------
def build_optimizer(model: SegmentationModel, optim: OptimRecipe | dict) -> torch.optim.Optimizer:
    """Backbone at lr, everything else at lr * head_lr_mult, except an IFA head (its encodings and MLP,
    `decoder.head.*`) at lr * ifa_head_lr_mult when that is set; 1-D params undecayed unless decay_norm_bias."""
    optim = OptimRecipe.from_dict(optim)
    ifa_mult = optim.ifa_head_lr_mult
    if ifa_mult is not None and not model.is_ifa:
        raise ConfigError("optim.ifa_head_lr_mult is for IFA models; this model has no IFA head")
    # Sorted by name, the groups keep the order backbone, head, ifa_head (checkpoints resume unchanged).
    lr_mults = {"backbone": 1.0, "head": optim.head_lr_mult, "ifa_head": ifa_mult}
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            role = "backbone"
        else:
            role = "ifa_head" if ifa_mult is not None and name.startswith("decoder.head.") else "head"
        decay = optim.decay_norm_bias or param.ndim > 1
        groups.setdefault((role, decay), []).append(param)
    param_groups = [{"params": params, "lr_mult": float(lr_mults[role]),
                     "weight_decay": optim.weight_decay if decay else 0.0}
                    for (role, decay), params in sorted(groups.items())]
    if optim.name == "sgd":
        return torch.optim.SGD(param_groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(param_groups, lr=optim.lr)  # the recipe allows sgd and adamw only


def learning_rate(base_lr: float, it: int, schedule: ScheduleRecipe | dict) -> float:
    """Linear warmup then poly decay: base_lr * (1 - it / iters) ** power, floored at min_lr."""
    schedule = ScheduleRecipe.from_dict(schedule)
    total, warmup = schedule.iters, schedule.warmup_iters
    lr = (base_lr - schedule.min_lr) * (1 - it / total) ** schedule.power + schedule.min_lr
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


def compute_loss(model, images, labels, loss_cfg: LossRecipe | dict,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """`model` returns (logits, aux logits or None, point logits or None): an _AuxForward, possibly inside DDP.

    grid_weight x the loss of the logits (stride-4 grid upsampled to the labels), + aux_weight x the auxiliary
    loss, + with loss.point_samples = n > 0 (IFA only) point_weight x the loss of IFA queried at n uniformly
    random continuous points per image, each labelled with the pixel that contains it (as LIIF trains its
    implicit function); `generator` draws the points.
    """
    cfg = LossRecipe.from_dict(loss_cfg)
    coords = None
    if cfg.point_samples > 0:
        b, n = labels.shape[0], cfg.point_samples
        coords = torch.rand(b, n, 2, generator=generator).mul_(2).sub_(1).to(images.device)
    logits, aux, points = model(images, coords)
    loss = cfg.grid_weight * _segmentation_loss(logits, labels, cfg) if cfg.grid_weight else 0.0
    if aux is not None and cfg.aux_weight > 0:
        aux = torch.nn.functional.interpolate(aux, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + cfg.aux_weight * _segmentation_loss(aux, labels, cfg)
    if points is not None:
        loss = loss + cfg.point_weight * _segmentation_loss(points[..., None], point_labels(labels, coords), cfg)
    return loss


def point_labels(labels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """The label of the pixel containing each point: labels (B, H, W), coords (B, N, 2) normalised (y, x)
    -> (B, N, 1) (pixel i spans [-1 + 2i / H, -1 + 2(i + 1) / H))."""
    size = torch.tensor(labels.shape[-2:], device=coords.device)
    pixel = ((coords + 1) / 2 * size).floor().long().clamp(min=0).minimum(size - 1)
    flat = labels.flatten(1).gather(1, pixel[..., 0] * labels.shape[-1] + pixel[..., 1])
    return flat[..., None]


def _segmentation_loss(logits, labels, cfg: LossRecipe):
    if cfg.ohem:
        return ohem_cross_entropy(logits.float(), labels, cfg.ohem_thresh, cfg.ohem_min_kept)
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


@dataclass
class TrainingRun:
    """What `setup` builds for one process of a run, and the step, evaluation and checkpoint functions share."""

    recipe: Recipe
    ctx: DistributedContext
    log: Logger
    model_config: ModelConfig
    model: SegmentationModel  # the model itself (its BatchNorm layers synchronised in multi-process runs)
    forward: torch.nn.Module  # model.forward_train behind _AuxForward, inside DDP in multi-process runs
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
    start_iter: int = 0  # iterations done before this process started (a resumed run)
    elapsed: float = 0.0  # training seconds so far, counted at each log line
    trained_on: str = ""

    @property
    def out_dir(self) -> Path:
        return Path(self.recipe.train.out_dir)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "last.pt"


def train(cfg: Recipe | dict, resume: bool = False, device: str | None = None) -> dict:
    """Runs the recipe (a Recipe, or its dict as load_config returns); returns {"out_dir", "final", "val",
    "model"}: final folder and val metrics on rank 0 (None elsewhere), and this process's trained model (its
    BatchNorm layers synchronised in multi-process runs)."""
    run = setup(as_recipe(cfg), resume, device)
    recipe, ctx = run.recipe, run.ctx
    total, every = recipe.schedule.iters, recipe.train
    bar = tqdm(total=total, initial=run.start_iter, desc=recipe.name, disable=not ctx.is_main, dynamic_ncols=True)
    window = LossWindow(time.time())
    for it in range(run.start_iter, total):
        lr, loss = train_step(run, it)
        window.add(loss)
        bar.update(1)
        done = it + 1
        if done % every.log_interval == 0 or done == total:
            log_progress(run, window, done, lr, bar)
        if ctx.is_main and (done % every.ckpt_interval == 0 or done == total):
            save_checkpoint(run.checkpoint_path, checkpoint_state(run, done))
        if every.eval_interval and done % every.eval_interval == 0 and done != total:
            evaluate_during_training(run, done)
    bar.close()
    return finish(run)


# --- setup ----------------------------------------------------------------------------------------
def setup(recipe: Recipe, resume: bool = False, device: str | None = None) -> TrainingRun:
    """Everything a run needs, in the order that fixes its random state: data, the seeded model (fine-tuned
    from `init_from`), optimiser, AMP scaler, the checkpoint's state when resuming, the batch stream."""
    ctx = DistributedContext.from_env(device)
    log = Logger(Path(recipe.train.out_dir), ctx.is_main)
    train_set = training_set(recipe.data, log)
    batch_size = recipe.train.batch_size
    if batch_size % ctx.world_size:
        raise ConfigError(f"train.batch_size {batch_size} must be divisible by the {ctx.world_size} processes")
    if len(train_set) < batch_size:
        raise DatasetError(f"the training split has {len(train_set)} images, fewer than one batch of {batch_size}")
    mcfg = model_config(recipe, train_set.info)
    model, memory_format = build_model(recipe, mcfg, ctx, log, resume)
    optimizer = build_optimizer(model, recipe.optim)
    if recipe.loss.point_samples > 0 and not model.is_ifa:
        raise ConfigError("loss.point_samples needs an IFA model: Semantic FPN cannot be queried at points")
    amp_dtype = autocast_dtype(recipe.train, ctx.device)
    run = TrainingRun(recipe, ctx, log, mcfg, model, _AuxForward(model), optimizer,
                      torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), amp_dtype, memory_format,
                      trained_on=hardware())
    if resume:
        restore_checkpoint(run)
    if ctx.is_main:
        atomic_write(run.out_dir / "config.yaml",
                     lambda p: Path(p).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False)))
    if ctx.world_size > 1:
        # An auxiliary head whose loss weight is 0 gets no gradient: DDP must be told.
        unused = model.aux_head is not None and recipe.loss.aux_weight <= 0
        run.forward = DistributedDataParallel(run.forward, find_unused_parameters=unused,
                                              device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    log.line(f"{ctx.world_size} process(es) on {ctx.device}, {batch_size // ctx.world_size} images each per iteration"
             + (", BatchNorm synchronised" if ctx.world_size > 1 and recipe.train.sync_bn else "")
             + (f", {str(amp_dtype).removeprefix('torch.')} autocast" if amp_dtype is not None else ", fp32"))
    run.batches = training_batches(recipe, train_set, mcfg, run.start_iter, ctx)
    model.train()
    return run


def build_model(recipe: Recipe, mcfg: ModelConfig, ctx: DistributedContext, log: Logger,
                resume: bool) -> tuple[SegmentationModel, torch.memory_format]:
    """The model seeded with train.seed (or the weights of `init_from`, unless a checkpoint will be resumed), on the
    device, SyncBN in multi-process runs, in the recipe's memory format."""
    torch.manual_seed(recipe.train.seed)
    model = SegmentationModel(mcfg, pretrained_backbone=recipe.pretrained_backbone)
    if recipe.init_from and not (resume and (Path(recipe.train.out_dir) / "last.pt").is_file()):
        initialise_from(model, recipe.init_from, log)
    model = model.to(ctx.device)
    if ctx.world_size > 1 and recipe.train.sync_bn:
        # torch's SyncBatchNorm on GPU, CPUSyncBatchNorm (gloo) on CPU; timm's BN + activation layers kept whole.
        model = convert_sync_batchnorm(model, ctx.device)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    return model.to(memory_format=memory_format), memory_format


def training_batches(recipe: Recipe, train_set, mcfg: ModelConfig, start_iter: int, ctx: DistributedContext):
    """The augmented (images, labels) batches of iterations start_iter, start_iter + 1, ... (ifa.data.transforms)."""
    data = recipe.data
    augment = TrainAugment(crop_size=tuple(data.crop_size), scale_range=tuple(data.scale_range),
                           base_size=tuple(data.base_size) if data.base_size else None,
                           img_scale=tuple(data.img_scale) if data.img_scale else None, flip=data.flip,
                           photometric=data.photometric, mean=tuple(mcfg.mean), std=tuple(mcfg.std))
    return batch_stream(AugmentedSamples(train_set, augment), len(train_set), recipe.train.batch_size,
                        recipe.train.seed, start_iter, ctx, data.workers, tuple(data.crop_size), data.crop_jitter)


# --- one iteration --------------------------------------------------------------------------------
def train_step(run: TrainingRun, it: int) -> tuple[float, float]:
    """Iteration `it`: set the learning rate, take the next batch, forward under autocast, backward, step.
    Returns (learning rate, loss)."""
    recipe, device = run.recipe, run.ctx.device
    lr = learning_rate(recipe.optim.lr, it, recipe.schedule)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    images, labels = next(run.batches)
    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    images, labels = pad_batch(images, labels, run.model.size_divisor)
    images = images.contiguous(memory_format=run.memory_format)
    with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        points = torch.Generator().manual_seed(recipe.train.seed * 1_000_003 + it)  # resumable: (seed, iteration)
        loss = compute_loss(run.forward, images, labels, recipe.loss, points)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at iteration {it}; lower optim.lr?")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return lr, loss.item()


class LossWindow:
    """The losses since the last log line and when that line was written."""

    def __init__(self, start: float):
        self.since, self.total, self.count = start, 0.0, 0

    def add(self, loss: float) -> None:
        self.total, self.count = self.total + loss, self.count + 1

    def reset(self, now: float) -> None:
        self.since, self.total, self.count = now, 0.0, 0


def log_progress(run: TrainingRun, window: LossWindow, done: int, lr: float, bar) -> None:
    """The log line and metrics record of the iterations since the last one; every rank calls it (the loss is
    averaged over ranks: the global batch's). Adds the window's time to run.elapsed and starts a new window."""
    total = run.recipe.schedule.iters
    window.total = all_reduce_mean(window.total, run.ctx)
    now = time.time()
    sec_per_iter = (now - window.since) / window.count
    run.elapsed += now - window.since
    record = {"iter": done, "loss": window.total / window.count, "lr": lr, "sec_per_iter": sec_per_iter,
              "eta_min": sec_per_iter * (total - done) / 60}
    run.log.metrics(record)
    run.log.line(f"iter {done}/{total} loss {record['loss']:.4f} lr {lr:.2e} "
                 f"{sec_per_iter:.2f} s/it eta {record['eta_min']:.1f} min")
    bar.set_postfix(loss=f"{record['loss']:.3f}")
    window.reset(now)


# --- evaluation -----------------------------------------------------------------------------------
def evaluate_during_training(run: TrainingRun, done: int) -> dict:
    """Val scores at iteration `done` (train.eval_interval), logged; the model goes back to training mode."""
    result = validate(run.model, run.recipe, run.model_config, run.ctx)
    run.log.metrics({"iter": done, "val_mIoU": result["mIoU"], "val_aAcc": result["aAcc"]})
    run.log.line(f"iter {done}: val mIoU {result['mIoU']:.2f}")
    run.model.train()
    return result


def finish(run: TrainingRun) -> dict:
    """The final val scores and, on rank 0, the exported inference checkpoint out_dir/final; closes the context."""
    recipe, ctx, total = run.recipe, run.ctx, run.recipe.schedule.iters
    result = {"out_dir": str(run.out_dir), "final": None, "val": None, "model": run.model}
    val = validate(run.model, recipe, run.model_config, ctx)
    if ctx.is_main:
        run.log.metrics({"iter": total, "val_mIoU": val["mIoU"], "val_aAcc": val["aAcc"]})
        run.log.line(f"final: val mIoU {val['mIoU']:.2f} (single scale), training time {run.elapsed / 60:.1f} min")
        final = export(run.model, recipe, val, run.elapsed, run.out_dir / "final", run.trained_on)
        result.update(final=str(final), val=val)
    ctx.close()
    return result


# --- checkpointing --------------------------------------------------------------------------------
def checkpoint_state(run: TrainingRun, done: int) -> dict:
    """What out_dir/last.pt holds after `done` iterations (the layout above)."""
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "rng": torch.get_rng_state(), "iter": done, "elapsed": run.elapsed,
            "hardware": run.trained_on,
            "cuda_rng": torch.cuda.get_rng_state() if run.ctx.device.type == "cuda" else None}


def restore_checkpoint(run: TrainingRun) -> None:
    """`--resume`: model, optimiser, scaler, RNG states, iterations and time from out_dir/last.pt when it exists."""
    path = run.checkpoint_path
    if not path.is_file():
        run.log.line(f"--resume: no checkpoint at {path}, starting from scratch")
        return
    state = load_checkpoint(path)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if run.ctx.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"])
    run.start_iter, run.elapsed = state["iter"], state["elapsed"]
    run.trained_on = state.get("hardware", run.trained_on)
    run.log.line(f"resumed from {path} at iteration {run.start_iter}")


def initialise_from(model: SegmentationModel, source: str, log: Logger) -> None:
    """Fine-tuning: start from the weights of a checkpoint folder or Hub repo (`init_from`). Its model config must
    equal the recipe's but for the auxiliary head, which an inference checkpoint does not hold (it starts fresh),
    and the IFA read (`ifa_read`: the same weights read the levels another way)."""
    from .hub import load_model

    start = load_model(source)
    free = ("aux_channels", "ifa_read")  # the weights fit whichever way the head reads its levels
    ours = {k: v for k, v in model.config.to_dict().items() if k not in free}
    theirs = {k: v for k, v in start.config.to_dict().items() if k not in free}
    different = sorted(k for k in ours if ours[k] != theirs.get(k))
    if different:
        raise ConfigError(f"init_from {source}: its model differs from the recipe's in {', '.join(different)}")
    missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
    if unexpected or any(not k.startswith("aux_head.") for k in missing):
        raise ConfigError(f"init_from {source}: weights do not fit "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.line(f"initialised from {source}" + (" (auxiliary head fresh)" if missing else ""))


def validate(model: SegmentationModel, recipe: Recipe, mcfg: ModelConfig, ctx: DistributedContext) -> dict:
    """ifa.metrics.summarize of `model` on the val split (at most train.eval_limit images) with the eval section's
    protocol; the work is shared between ranks."""
    data, protocol = recipe.data, recipe.eval
    val_set = build_dataset(data.dataset, data.root, data.val_split)
    predictor = Predictor(model, device=ctx.device, scales=tuple(protocol.scales), flip=protocol.flip,
                          mode=protocol.mode, window=tuple(protocol.window),
                          stride=tuple(protocol.stride) if protocol.stride else None)
    cm = evaluate(predictor, val_set, limit=recipe.train.eval_limit, ctx=ctx, progress=False)
    return summarize(cm, list(mcfg.class_names))


def export(model: SegmentationModel, cfg: Recipe | dict, val: dict, seconds: float, folder: Path,
           trained_on: str | None = None) -> Path:
    """The inference checkpoint (auxiliary head dropped) with a model card recording the recipe and
    `trained_on` (default: this machine)."""
    config = ModelConfig.from_dict({**model.config.to_dict(), "aux_channels": 0})
    inference_model = SegmentationModel(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_head.")}
    inference_model.load_state_dict(state)
    return save_pretrained(inference_model, folder, card=model_card(cfg, config, val, seconds,
                                                                      trained_on or hardware()))


def export_last(cfg: Recipe | dict, device: str | None = None) -> Path:
    """Evaluate the run's last.pt on the val split and export it to out_dir/final."""
    recipe = as_recipe(cfg)
    out_dir = Path(recipe.train.out_dir)
    if not (out_dir / "last.pt").is_file():
        raise ConfigError(f"{out_dir / 'last.pt'} does not exist: nothing to export")
    state = load_checkpoint(out_dir / "last.pt")
    ctx = DistributedContext.single(device)
    info = build_dataset(recipe.data.dataset, recipe.data.root, recipe.data.train_split).info
    mcfg = model_config(recipe, info)
    model = SegmentationModel(mcfg)
    model.load_state_dict(state["model"])
    val = validate(model.to(ctx.device), recipe, mcfg, ctx)
    print(f"iteration {state['iter']}: val mIoU {val['mIoU']:.2f}")
    return export(model.cpu(), recipe, val, state["elapsed"], out_dir / "final", state.get("hardware"))


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def model_card(cfg: Recipe | dict, config: ModelConfig, val: dict, seconds: float, trained_on: str):
    """The run's card (ifa.cards): architecture, data, hardware, val scores per class, the recipe."""
    from .cards import model_card as card

    run = as_recipe(cfg)
    name = "FPN + IFA" if config.architecture == "ifa" else "Semantic FPN"
    rows = "\n".join(f"| {k} | {'-' if v is None else f'{v:.2f}'} |" for k, v in val["per_class"].items())
    recorded = run.to_dict()
    recipe = yaml.safe_dump({k: recorded[k] for k in ("data", "optim", "schedule", "loss", "train")}, sort_keys=False)
    body = f"""{name}, backbone {config.backbone}, trained on {config.dataset}.

- Architecture: {name} ({config.architecture}), backbone {config.backbone}, neck {config.neck_channels} channels
- Data: {config.dataset}, trained on `{run.data.train_split}`, evaluated on `{run.data.val_split}`
- Hardware: {trained_on}; training time {seconds / 60:.1f} min
- Validation (single scale): mIoU {val['mIoU']:.2f}, mAcc {val['mAcc']:.2f}, aAcc {val['aAcc']:.2f}

| class | IoU |
|---|---|
{rows}

## Recipe
```yaml
{recipe}```"""
    return card(run.name, config.architecture, config.dataset, body,
                results={"val mIoU single scale": val["mIoU"]}, split=run.data.val_split)


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
        recipe = load_recipe(args.config, args.overrides)
        if args.export_only:
            export_last(recipe, device=args.device)
        else:
            train(recipe, resume=args.resume, device=args.device)
    except (ConfigError, DatasetError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

