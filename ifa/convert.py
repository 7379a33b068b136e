"""Convert checkpoints of the IFA reference implementation (github.com/hzhupku/IFA) to this project's format.

    python -m ifa.convert official SRC.pth OUT_DIR [--backbone NAME] [--num-classes K] [--dataset D] [--fp16]

The source layout ("official")
------------------------------
A torch pickle holding ``{"model_state": state_dict, ...}`` (the reference ``train.py`` also stores
``epoch`` and ``optimizer_state``, which are ignored) or a bare state dict. Keys may carry DDP's
``module.`` prefix. The model is the reference ``ModelBuilder`` with a ``resnet50`` / ``resnet101``
encoder (``fpn: True``, ``multi_grid: True``), an ``fpn_ifa`` decoder with ``no_aspp: True`` and
``ultra_pe: True`` (the published Cityscapes recipe), and optionally the auxiliary head:

==========================================  =====================================================
reference key                               this project's key
==========================================  =====================================================
encoder.conv1.{0,3,6}.weight                backbone.body.conv1.{0,3,6}.weight (deep stem convs)
encoder.conv1.{1,4}.*, encoder.bn1.*        backbone.body.conv1.{1,4}.*, backbone.body.bn1.*
encoder.layer{1-4}.N.*                      backbone.body.layer{1-4}.N.* (torchvision Bottleneck
                                            names: conv1-3, bn1-3, downsample.{0,1})
encoder.fc.*                                dropped (not part of a segmentation model)
decoder.enc{1,2,3}.0.weight                 decoder.reduce.{0,1,2}.0.weight (1x1 conv)
decoder.head.0.weight                       decoder.reduce.3.0.weight (1x1 conv 2048 -> 256)
decoder.enc{1,2,3}.1.*, decoder.head.1.*    decoder.reduce.{0-3}.1.* (BatchNorm2d)
decoder.enc{1,2,3}.0.bias, ...head.0.bias   folded into decoder.reduce.{0-3}.1.running_mean
decoder.ifa.pos{1-4}.emb  (2n, 2)           decoder.head.pos.{0-3}.emb (E; rows 0..n-1 act on y)
decoder.ifa.imnet.{0,3,6}.* (Conv1d)        decoder.head.hidden.{0,3,6}.* (Conv2d 1x1:
                                            weight (out, in, 1) -> (out, in, 1, 1))
decoder.ifa.imnet.{1,4,7}.* (BatchNorm1d)   decoder.head.hidden.{1,4,7}.* (BatchNorm2d)
decoder.ifa.imnet.9.*  (last Conv1d)        decoder.head.classifier.*
auxor.aux.0.weight                          aux_head.block.0.0.weight (3x3 conv 1024 -> 256)
auxor.aux.0.bias                            folded into aux_head.block.0.1.running_mean
auxor.aux.1.*                               aux_head.block.0.1.* (BatchNorm2d)
auxor.aux.4.*                               aux_head.block.2.* (1x1 classifier)
==========================================  =====================================================

Index 2, 5, 8 of ``imnet`` (and 2 of ``enc*``/``head``, 2-3 of ``auxor.aux``) are ReLU / dropout
without weights. The reference convs before BatchNorm have a bias where ours have none; since
BN(x + b) with running mean m equals BN(x) with running mean m - b (and the batch mean cancels b
in training), the bias is folded into the running mean exactly.

What is inferred from the weights: the backbone depth (layer3 holds 6 blocks for ResNet-50, 23 for
ResNet-101), num_classes (the classifier's rows), the MLP widths, the neck width, the encoding
width (E of shape (2n, 2) gives pos_dim 4n; 24 in the paper) and whether the auxiliary head is
there. Without ``pos*.emb`` keys (``require_grad: False``: E stays the constant 2^linspace(0, 6, n)
and is not saved) the model gets the ``fixed`` encoding with that constant, its width read from
the first MLP layer. Every source key must be used and every target key filled, or the
conversion fails naming the keys. Other variants of the reference (ASPP head, ``unfold``,
``learn_pe``, ``local``) are not this project's model and are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .models.backbones import BACKBONES
from .models.checkpoint import save_pretrained
from .models.segmentor import create_model

# layer3 block count -> backbone
_DEPTHS = {6: "resnet50_deepstem", 23: "resnet101_deepstem"}
_REDUCE_SOURCES = ("decoder.enc1", "decoder.enc2", "decoder.enc3", "decoder.head")


class ConversionError(ValueError):
    """A source file that is not a convertible reference checkpoint."""


# --- reading the source -------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_error_detail(err: BaseException) -> str:
    """The informative part of a torch.load error, on one line."""
    text = str(err).strip()
    if isinstance(err, EOFError) or not text:
        return "empty or truncated file"
    if "WeightsUnpickler error:" in text:  # torch's weights_only message: the cause follows this marker
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    return text.splitlines()[0].split(". Please use")[0]


def load_reference_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The reference model's state dict from SRC (``model_state`` or a bare dict), ``module.`` stripped."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint of tensors and plain containers "
                              f"({_load_error_detail(err)})") from err
    if isinstance(data, Mapping) and "model_state" in data:
        data = data["model_state"]
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path} holds neither a 'model_state' state dict nor a bare state dict")
    state = {}
    for key, value in data.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name in state:
            raise ConversionError(f"{path}: key {name!r} appears both with and without the 'module.' prefix")
        state[name] = value
    return state


# --- inferring the model ------------------------------------------------------------------------
def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.fullmatch(k))})


def _imnet_convs(state: Mapping[str, torch.Tensor]) -> list[int]:
    """Indices of the Conv1d layers (weights (out, in, 1)) in decoder.ifa.imnet; the last is the classifier."""
    return [i for i in _indices(state, r"decoder\.ifa\.imnet\.(\d+)\.weight")
            if state[f"decoder.ifa.imnet.{i}.weight"].dim() == 3]


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"the checkpoint lacks {key!r}, which this layout needs")
    return state[key]


def infer_config(state: Mapping[str, torch.Tensor], backbone: str | None = None,
                 num_classes: int | None = None) -> dict:
    """The ModelConfig fields (a dict) that the reference state dict describes; errors name the mismatch."""
    if not any(k.startswith("encoder.") for k in state) or not any(k.startswith("decoder.ifa.") for k in state):
        sample = ", ".join(list(state)[:3])
        raise ConversionError("not an IFA reference checkpoint: expected encoder.* and decoder.ifa.* keys, "
                              f"found e.g. {sample}")
    if any(k.startswith("decoder.aspp.") for k in state):
        raise ConversionError("the checkpoint has an ASPP head (decoder.aspp.*, no_aspp: False); only the "
                              "no_aspp FPN + IFA model converts to this project's architecture")
    if "encoder.conv1.0.weight" not in state:
        raise ConversionError("the encoder has no deep stem (encoder.conv1.0.weight missing); expected the "
                              "reference ResNet with three 3x3 stem convs")

    blocks = len(_indices(state, r"encoder\.layer3\.(\d+)\..+"))
    if blocks not in _DEPTHS:
        raise ConversionError(f"encoder.layer3 has {blocks} blocks; known: "
                              + ", ".join(f"{n} ({name})" for n, name in _DEPTHS.items()))
    inferred = _DEPTHS[blocks]
    if backbone is not None and backbone != inferred:
        raise ConversionError(f"--backbone {backbone} given, but the checkpoint's layer3 has {blocks} blocks "
                              f"({inferred})")

    convs = _imnet_convs(state)
    if len(convs) < 2:
        raise ConversionError("decoder.ifa.imnet needs Conv1d layers (weights of shape (out, in, 1)) and "
                              f"has {len(convs)}")
    hidden_convs, classifier = convs[:-1], convs[-1]
    classes = int(state[f"decoder.ifa.imnet.{classifier}.weight"].shape[0])
    if num_classes is not None and num_classes != classes:
        raise ConversionError(f"--num-classes {num_classes} given, but the checkpoint's classifier "
                              f"(decoder.ifa.imnet.{classifier}) predicts {classes} classes")
    mlp_channels = [int(state[f"decoder.ifa.imnet.{i}.weight"].shape[0]) for i in hidden_convs]
    if convs[0] != 0:
        raise ConversionError("decoder.ifa.imnet.0 is not a Conv1d (weight of shape (out, in, 1))")
    in_dim = int(state["decoder.ifa.imnet.0.weight"].shape[1])

    neck = int(_need(state, "decoder.enc1.0.weight").shape[0])
    embs = [state.get(f"decoder.ifa.pos{level}.emb") for level in range(1, 5)]
    if all(e is None for e in embs):
        pos_encoding, pos_dim = "fixed", in_dim // 4 - neck - 2
    elif any(e is None for e in embs):
        absent = [f"decoder.ifa.pos{level}.emb" for level, e in enumerate(embs, 1) if e is None]
        raise ConversionError(f"the checkpoint has some position encodings but lacks {absent}")
    else:
        shapes = {tuple(e.shape) for e in embs}
        shape = shapes.pop()
        if shapes or len(shape) != 2 or shape[1] != 2 or shape[0] % 2:
            raise ConversionError(f"decoder.ifa.pos*.emb must all have shape (2n, 2) (paper: (12, 2)), got "
                                  f"{[tuple(e.shape) for e in embs]}")
        pos_encoding, pos_dim = "learned", 2 * shape[0]
    if pos_dim <= 0 or pos_dim % 4 or in_dim != 4 * (neck + 2 + pos_dim):
        raise ConversionError(f"decoder.ifa.imnet.0 takes {in_dim} channels; the layout needs "
                              f"4 * ({neck} features + 2 + {pos_dim} encoding) (unfold / learn_pe variants "
                              "are not supported)")

    aux_channels = 0
    if any(k.startswith("auxor.") for k in state):
        aux_channels = int(_need(state, "auxor.aux.0.weight").shape[0])
        aux_classes = int(_need(state, "auxor.aux.4.weight").shape[0])
        if aux_classes != classes:
            raise ConversionError(f"auxor.aux.4 predicts {aux_classes} classes, the main head {classes}")

    return {"architecture": "ifa", "backbone": inferred, "num_classes": classes, "neck_channels": neck,
            "mlp_channels": mlp_channels, "pos_encoding": pos_encoding, "pos_dim": pos_dim,
            "aux_channels": aux_channels, "align_corners": True}


# --- renaming -----------------------------------------------------------------------------------
def _target_name(key: str, classifier: int) -> tuple[str | None, str]:
    """(our key or None to drop, how: 'copy' | 'fold' (conv bias into the next BN's running mean))."""
    if key.startswith("encoder.fc."):
        return None, "copy"
    if key.startswith("encoder."):
        return "backbone.body." + key[len("encoder."):], "copy"
    for level, prefix in enumerate(_REDUCE_SOURCES):
        if key == f"{prefix}.0.bias":
            return f"decoder.reduce.{level}.1.running_mean", "fold"
        if key.startswith(prefix + ".") and key.split(".")[2] in ("0", "1"):
            return f"decoder.reduce.{level}." + key[len(prefix) + 1:], "copy"
    if m := re.fullmatch(r"decoder\.ifa\.pos([1-4])\.emb", key):
        return f"decoder.head.pos.{int(m.group(1)) - 1}.emb", "copy"
    if m := re.fullmatch(r"decoder\.ifa\.imnet\.(\d+)\.(.+)", key):
        index, rest = int(m.group(1)), m.group(2)
        layer = "classifier" if index == classifier else f"hidden.{index}"
        return f"decoder.head.{layer}.{rest}", "copy"
    if key == "auxor.aux.0.bias":
        return "aux_head.block.0.1.running_mean", "fold"
    for source, target in (("auxor.aux.0.", "aux_head.block.0.0."), ("auxor.aux.1.", "aux_head.block.0.1."),
                           ("auxor.aux.4.", "aux_head.block.2.")):
        if key.startswith(source):
            return target + key[len(source):], "copy"
    return "", "copy"  # not part of the layout


def _listing(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_state(state: Mapping[str, torch.Tensor], config: dict,
                  template: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Our model's state dict from the reference one (``module.`` already stripped), for `config`.

    `template` is the state dict of a model built from `config` (built here when not given).
    """
    if template is None:
        template = create_model(config).state_dict()
    classifier = _imnet_convs(state)[-1]
    out: dict[str, torch.Tensor] = {}
    folds: dict[str, torch.Tensor] = {}
    unknown, shape_errors = [], []
    for key, value in state.items():
        target, how = _target_name(key, classifier)
        if target is None:
            continue
        if target not in template:
            unknown.append(key)
            continue
        expected = template[target]
        if value.dim() == 3 and expected.dim() == 4 and value.shape[-1] == 1:  # Conv1d -> Conv2d 1x1
            value = value[..., None]
        if how == "fold":
            if value.shape != expected.shape:
                shape_errors.append(f"{key} {tuple(value.shape)} -> {target} {tuple(expected.shape)}")
            folds[target] = value
            continue
        if value.shape != expected.shape:
            shape_errors.append(f"{key} {tuple(value.shape)} -> {target} {tuple(expected.shape)}")
            continue
        out[target] = value.detach().to(expected.dtype).clone()
    if unknown:
        raise ConversionError(f"{len(unknown)} checkpoint keys have no place in the converted model: "
                              f"{_listing(unknown)}")
    if shape_errors:
        raise ConversionError(f"tensors of the wrong shape (reference -> ours): {_listing(shape_errors, 5)}")
    missing = [k for k in template if k not in out]
    pos_fixed = config.get("pos_encoding") == "fixed"
    if pos_fixed:  # E is a constant the reference does not save
        missing = [k for k in missing if not re.fullmatch(r"decoder\.head\.pos\.\d\.emb", k)]
    if missing:
        raise ConversionError(f"the checkpoint lacks tensors for {len(missing)} keys of the converted model: "
                              f"{_listing(missing)}")
    for target, bias in folds.items():
        out[target] = out[target] - bias.to(out[target].dtype)
    if pos_fixed:  # the reference's constant E, computed as it does (float64, then float32)
        n = config["pos_dim"] // 4
        freqs = 2.0 ** np.linspace(0, 6, n)
        emb = np.zeros((2 * n, 2))
        emb[:n, 0], emb[n:, 1] = freqs, freqs
        for level in range(4):
            out[f"decoder.head.pos.{level}.emb"] = torch.tensor(emb, dtype=torch.float32)
    return out


# --- writing ------------------------------------------------------------------------------------
def _card(config: dict, source: Path, sha256: str, dtype: str, dropped: list[str], name: str):
    from .cards import model_card

    lines = [
        f"FPN + IFA, {config['backbone']}, {config['num_classes']} classes, converted from a checkpoint of the IFA "
        "reference implementation (github.com/hzhupku/IFA) with `python -m ifa.convert official`.", "",
        f"- source file: `{source.name}`",
        f"- source sha256: `{sha256}`",
        f"- dataset: {config.get('dataset') or 'unspecified'}",
        f"- weights: {dtype}",
        f"- position encoding: {config['pos_encoding']}, width {config['pos_dim']}",
        f"- auxiliary head: {'kept (training only)' if config['aux_channels'] else 'none in the source'}",
        "- the reference's conv biases before BatchNorm (decoder.enc1-3, decoder.head, auxor) are folded into "
        "the BatchNorm running means (exact).",
    ]
    if dropped:
        lines.append(f"- dropped source keys (not part of the segmentation model): {', '.join(dropped)}")
    return model_card(name, "ifa", config.get("dataset") or "", "\n".join(lines))


def convert_official(src: str | Path, out_dir: str | Path, backbone: str | None = None,
                     num_classes: int | None = None, dataset: str | None = None, fp16: bool = False) -> Path:
    """Convert reference checkpoint `src` into the checkpoint folder `out_dir`; returns the folder."""
    src = Path(src)
    state = load_reference_state(src)
    config = infer_config(state, backbone=backbone, num_classes=num_classes)
    if dataset:
        from .data.classes import get_dataset_info

        info = get_dataset_info(dataset)
        if info.num_classes != config["num_classes"]:
            raise ConversionError(f"dataset {dataset} has {info.num_classes} classes, the checkpoint predicts "
                                  f"{config['num_classes']}")
        config.update(dataset=dataset, class_names=list(info.class_names),
                      palette=[list(c) for c in info.palette], ignore_index=info.ignore_index)
    model = create_model(config)
    model.load_state_dict(convert_state(state, config, template=model.state_dict()), strict=True)
    dropped = sorted(k for k in state if k.startswith("encoder.fc."))
    card = _card(config, src, file_sha256(src), "float16" if fp16 else "float32", dropped, Path(out_dir).name)
    try:
        return save_pretrained(model.eval(), out_dir, card=card, dtype=torch.float16 if fp16 else None)
    except OSError as err:
        raise ConversionError(f"cannot write {out_dir}: {err}") from err


# --- command line -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ifa.convert",
                                     description="Convert reference-implementation checkpoints to this "
                                                 "project's checkpoint folders.")
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    official = sub.add_parser("official", help="a checkpoint of github.com/hzhupku/IFA (FPN + IFA)",
                              description="Convert a checkpoint of the IFA reference implementation "
                                          "(FPN + IFA, deep-stem ResNet) into OUT_DIR (config.json, "
                                          "model.safetensors, README.md).")
    official.add_argument("src", metavar="SRC.pth", help="reference checkpoint ({'model_state': ...} or a state dict)")
    official.add_argument("out_dir", metavar="OUT_DIR", help="checkpoint folder to write")
    official.add_argument("--backbone", choices=[b for b in BACKBONES if b.endswith("_deepstem")],
                          help="expected backbone (default: inferred from the layer3 block count)")
    official.add_argument("--num-classes", type=int, help="expected number of classes (default: inferred)")
    official.add_argument("--dataset", help="dataset whose class names and palette to store, e.g. cityscapes")
    official.add_argument("--fp16", action="store_true", help="store the weights as float16")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = convert_official(args.src, args.out_dir, backbone=args.backbone, num_classes=args.num_classes,
                               dataset=args.dataset, fp16=args.fp16)
    except ValueError as err:  # ConversionError, an unknown dataset, a config that does not validate
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
