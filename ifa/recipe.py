"""The training recipe as typed, validated dataclasses (a YAML file in configs/, read by ifa.train).

A recipe has the top-level keys `name`, `model` (ModelConfig fields: architecture, backbone, widths, ...; the
classes come from the dataset), `pretrained_backbone`, `init_from` (a checkpoint folder or Hub repo to fine-tune
from, or null) and one section per concern: `data`, `optim`, `schedule`, `loss`, `train`, `eval`. Every key has
a default (`DEFAULTS`, the recipe of an empty file); a file sets the keys it changes, and `key.sub=value`
overrides (values parsed as YAML) change one key each, `model.*` included.

As in ModelConfig, an unknown key or a bad value is refused with a ConfigError naming the valid keys or values.
What needs more than the recipe (the dataset's files, the model's architecture against `loss.point_samples`, the
device against `train.cpu_bf16`) is checked when training starts. `Recipe.to_dict()` gives the plain nested
dict, key order as in DEFAULTS, values exactly as written: what a run records in out_dir/config.yaml and in its
model card.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .data.datasets import DATASET_CLASSES
from .inference import MODES
from .models.config import ConfigError, ModelConfig

OPTIMIZERS = ("sgd", "adamw")
IN_MEMORY = ("auto", True, False)


# --- value checks: each raises ConfigError naming the key and what it accepts ----------------------
def _number(where: str, value, low: float | None = None, high: float | None = None, integer: bool = False,
            low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    what = "an integer" if integer else "a number"
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high}")
        rule = what + (f" {' and '.join(bounds)}" if bounds else "") + (" or null" if optional else "")
        raise ConfigError(f"{where} must be {rule}, got {value!r}")


def _flag(where: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")


def _choice(where: str, value, valid: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(f"unknown {where} {value!r}; valid: {', '.join(valid)}")


def _pair(where: str, value, integer: bool = True, optional: bool = False) -> None:
    """Two positive numbers (integers when `integer`): (height, width), or a range; a list or a tuple."""
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, kinds) and not isinstance(v, bool) and v > 0 for v in value)):
        what = "integers" if integer else "numbers"
        raise ConfigError(f"{where} must be two positive {what}{' or null' if optional else ''}, got {value!r}")


def _text(where: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string{' or null' if optional else ''}, got {value!r}")


def _refuse_unknown(keys, valid: list[str], prefix: str = "") -> None:
    """ConfigError naming the valid keys for the first of `keys` that is not among `valid` (sorted names)."""
    for key in keys:
        if key not in valid:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}; valid here: {valid}")


def _as_list(value):
    """Tuples as lists (a recipe dumps as plain YAML); anything else as is."""
    return list(value) if isinstance(value, tuple) else value


class _Section:
    """A recipe section: a dataclass whose from_dict refuses unknown keys and whose __post_init__ checks values."""

    SECTION: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data) -> _Section:
        """The section from a mapping of some of its keys (the others keep their defaults); an instance as is."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"config key {cls.SECTION!r} must be a mapping")
        _refuse_unknown(data, sorted(f.name for f in dataclasses.fields(cls)), f"{cls.SECTION}.")
        return cls(**copy.deepcopy(data))

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def _where(self, key: str) -> str:
        return f"{self.SECTION}.{key}"


@dataclass
class DataRecipe(_Section):
    """Which data, and the training augmentation (ifa.data.transforms.TrainAugment).

    crop_size and base_size / img_scale are (height, width); crop_jitter j > 0 draws each batch's crop from
    crop_size +- j; in_memory "auto" decodes the training split into memory when it takes at most a quarter of
    the memory available."""

    SECTION: ClassVar[str] = "data"
    dataset: str = "camvid"
    root: str = "../shared/data/camvid"
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [256, 320])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    base_size: list[int] | None = None
    img_scale: list[int] | None = None
    flip: bool = True
    photometric: bool = False
    workers: int = 1
    in_memory: str | bool = "auto"
    crop_jitter: int = 0

    def __post_init__(self) -> None:
        w = self._where
        for key in ("crop_size", "scale_range", "base_size", "img_scale"):
            setattr(self, key, _as_list(getattr(self, key)))
        _choice(w("dataset"), self.dataset, tuple(DATASET_CLASSES))
        for key in ("root", "train_split", "val_split"):
            _text(w(key), getattr(self, key))
        _pair(w("crop_size"), self.crop_size)
        _pair(w("scale_range"), self.scale_range, integer=False)
        if self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"data.scale_range must be (low, high) with low <= high, got {self.scale_range!r}")
        _pair(w("base_size"), self.base_size, optional=True)
        _pair(w("img_scale"), self.img_scale, optional=True)
        _flag(w("flip"), self.flip)
        _flag(w("photometric"), self.photometric)
        _number(w("workers"), self.workers, low=0, integer=True)
        if self.in_memory not in IN_MEMORY or not isinstance(self.in_memory, (str, bool)):
            raise ConfigError(f"data.in_memory must be auto, true or false, got {self.in_memory!r}")
        jitter = self.crop_jitter
        if not isinstance(jitter, int) or isinstance(jitter, bool) or jitter < 0 or jitter >= min(self.crop_size):
            raise ConfigError(f"data.crop_jitter must be an integer in [0, {min(self.crop_size)}), got {jitter!r}")


@dataclass
class OptimRecipe(_Section):
    """The optimiser: backbone at lr, the rest at lr x head_lr_mult, an IFA head (encodings + MLP) at
    lr x ifa_head_lr_mult when set; norm and bias parameters undecayed unless decay_norm_bias."""

    SECTION: ClassVar[str] = "optim"
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_lr_mult: float = 1.0
    ifa_head_lr_mult: float | None = None
    decay_norm_bias: bool = True

    def __post_init__(self) -> None:
        w = self._where
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.name!r}; valid: {', '.join(OPTIMIZERS)}")
        _number(w("lr"), self.lr, low=0, low_open=True)
        _number(w("momentum"), self.momentum, low=0, high=1, high_open=True)
        _number(w("weight_decay"), self.weight_decay, low=0)
        _number(w("head_lr_mult"), self.head_lr_mult, low=0, low_open=True)
        _number(w("ifa_head_lr_mult"), self.ifa_head_lr_mult, low=0, low_open=True, optional=True)
        _flag(w("decay_norm_bias"), self.decay_norm_bias)


@dataclass
class ScheduleRecipe(_Section):
    """`iters` iterations: linear warmup over `warmup_iters`, then poly decay with `power` down to `min_lr`."""

    SECTION: ClassVar[str] = "schedule"
    iters: int = 1000
    warmup_iters: int = 0
    power: float = 0.9
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        _number(self._where("iters"), self.iters, low=1, integer=True)
        _number(self._where("warmup_iters"), self.warmup_iters, low=0, integer=True)
        _number(self._where("power"), self.power, low=0)
        _number(self._where("min_lr"), self.min_lr, low=0)


@dataclass
class LossRecipe(_Section):
    """grid_weight x the (OHEM) cross-entropy of the stride-4 logits + aux_weight x the auxiliary head's +
    point_weight x that of IFA queried at `point_samples` random points per crop (IFA only; 0: none)."""

    SECTION: ClassVar[str] = "loss"
    ohem: bool = True
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    aux_weight: float = 0.4
    grid_weight: float = 1.0
    point_samples: int = 0
    point_weight: float = 1.0

    def __post_init__(self) -> None:
        w = self._where
        _flag(w("ohem"), self.ohem)
        _number(w("ohem_thresh"), self.ohem_thresh, low=0, high=1)
        _number(w("ohem_min_kept"), self.ohem_min_kept, low=0, integer=True)
        for key in ("aux_weight", "grid_weight", "point_weight"):
            _number(w(key), getattr(self, key), low=0)
        _number(w("point_samples"), self.point_samples, low=0, integer=True)
        if not self.grid_weight and self.point_samples <= 0:
            raise ConfigError("loss.grid_weight is 0 and loss.point_samples is 0: nothing would be supervised")


@dataclass
class TrainRecipe(_Section):
    """The run: global batch size, seed, precision (fp16 autocast on CUDA with amp, bf16 on CPUs with native bf16
    with cpu_bf16), layout, intervals (iterations) and the output folder (default runs/<name>)."""

    SECTION: ClassVar[str] = "train"
    batch_size: int = 8
    seed: int = 0
    amp: bool = True
    cpu_bf16: bool = False
    channels_last: bool = False
    sync_bn: bool = True
    log_interval: int = 20
    ckpt_interval: int = 100
    eval_interval: int = 0
    eval_limit: int | None = None
    out_dir: str | None = None

    def __post_init__(self) -> None:
        w = self._where
        _number(w("batch_size"), self.batch_size, low=1, integer=True)
        _number(w("seed"), self.seed, low=0, integer=True)
        for key in ("amp", "cpu_bf16", "channels_last", "sync_bn"):
            _flag(w(key), getattr(self, key))
        _number(w("log_interval"), self.log_interval, low=1, integer=True)
        _number(w("ckpt_interval"), self.ckpt_interval, low=1, integer=True)
        _number(w("eval_interval"), self.eval_interval, low=0, integer=True)
        _number(w("eval_limit"), self.eval_limit, low=1, integer=True, optional=True)
        _text(w("out_dir"), self.out_dir, optional=True)


@dataclass
class EvalRecipe(_Section):
    """Validation during and after training (ifa.inference.Predictor's scales, flip, mode, window, stride)."""

    SECTION: ClassVar[str] = "eval"
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    mode: str = "whole"
    window: list[int] = field(default_factory=lambda: [512, 512])
    stride: list[int] | None = None

    def __post_init__(self) -> None:
        self.scales, self.window, self.stride = _as_list(self.scales), _as_list(self.window), _as_list(self.stride)
        if (not isinstance(self.scales, list) or not self.scales
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in self.scales)):
            raise ConfigError(f"eval.scales must be a non-empty list of positive numbers, got {self.scales!r}")
        _flag(self._where("flip"), self.flip)
        _choice(self._where("mode"), self.mode, MODES)
        _pair(self._where("window"), self.window)
        _pair(self._where("stride"), self.stride, optional=True)


SECTIONS: dict[str, type[_Section]] = {"data": DataRecipe, "optim": OptimRecipe, "schedule": ScheduleRecipe,
                                       "loss": LossRecipe, "train": TrainRecipe, "eval": EvalRecipe}
MODEL_KEYS = sorted(f.name for f in dataclasses.fields(ModelConfig))


@dataclass
class Recipe:
    """A whole training recipe. `model` stays a mapping of ModelConfig fields (checked by name here, built with
    the dataset's classes into a ModelConfig when training starts)."""

    name: str = "run"
    model: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: bool = True
    init_from: str | None = None
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    eval: EvalRecipe = field(default_factory=EvalRecipe)

    def __post_init__(self) -> None:
        _text("name", self.name)
        if not isinstance(self.model, dict):
            raise ConfigError("config key 'model' must be a mapping")
        _refuse_unknown(self.model, MODEL_KEYS, "model.")
        _flag("pretrained_backbone", self.pretrained_backbone)
        _text("init_from", self.init_from, optional=True)
        for key, section in SECTIONS.items():
            setattr(self, key, section.from_dict(getattr(self, key)))

    @classmethod
    def from_dict(cls, data) -> Recipe:
        """The recipe from a (partial) nested mapping; an unknown key or a bad value raises ConfigError."""
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(f"a recipe must be a mapping, got {type(data).__name__}")
        _refuse_unknown(data, sorted(f.name for f in dataclasses.fields(cls)))
        return cls(**copy.deepcopy(data))

    def to_dict(self) -> dict:
        """The nested plain dict (key order as DEFAULTS, values as given): what config.yaml and model cards record."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Section) else copy.deepcopy(value)
        return out

    def with_default_out_dir(self) -> Recipe:
        """The recipe, with train.out_dir runs/<name> when it is not set."""
        if self.train.out_dir is not None:
            return self
        return dataclasses.replace(self, train=dataclasses.replace(self.train, out_dir=f"runs/{self.name}"))


DEFAULTS: dict = Recipe().to_dict()  # the recipe of an empty file (train.out_dir null: runs/<name> once loaded)


def _merge(base: dict, update: dict) -> dict:
    """`base` with `update` written over it, mappings merged key by key (keys are checked by Recipe.from_dict)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict:
    """`key.sub=value` -> {"key": {"sub": value}}, the value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    update: dict = {}
    node = update
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(raw)
    return update


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """The YAML file's recipe (None: the defaults), then `key.sub=value` overrides, train.out_dir defaulted."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        data = _merge(data, parse_override(item))
    return Recipe.from_dict(data).with_default_out_dir()


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """load_recipe's recipe as the plain nested dict (Recipe.to_dict()); ifa.train accepts either."""
    return load_recipe(path, overrides).to_dict()


def as_recipe(cfg: Recipe | dict) -> Recipe:
    """A Recipe from a Recipe or a nested dict (as load_config returns), validated, train.out_dir defaulted."""
    return Recipe.from_dict(cfg).with_default_out_dir()
