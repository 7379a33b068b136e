"""ifa.convert: a reference-layout checkpoint converts to a model that computes the same logits.

The reference model below is written independently of ifa.models, in the reference code's own module
layout (deep-stem ResNet from torchvision Bottlenecks; decoder.enc1..enc3 / head; decoder.ifa with
pos1..pos4.emb and a Conv1d / BatchNorm1d imnet; auxor.aux), and evaluates the IFA formula
directly: gather, encode, concatenate, MLP. Like the reference code, it finds each query's cell with
grid_sample's nearest mode (align_corners=False) at the stride-4 cell centres.
"""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import Bottleneck

import ifa
from ifa.convert import file_sha256, infer_config, main
from ifa.inference import Predictor

NUM_CLASSES = 19
POS_DIM = 24
# 65 x 129 gives level grids 17x33, 9x17, 5x9, 3x5: the ratios are not integers, and no stride-4
# query centre lies exactly on a cell boundary of a coarser level. On such a boundary the reference's
# grid_sample lookup picks a cell by float rounding (mostly half to even) while ifa.models always
# takes the upper cell, so sizes like 73 x 97 (level grids 19x25 and 10x13) differ there.
INPUT_SIZE = (65, 129)


# --- the reference model ------------------------------------------------------------------------
def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class RefEncoder(nn.Module):
    """Deep stem 3->64->64->128, ceil-mode max-pool, torchvision Bottlenecks; layer4 multi-grid (2, 2, 4)."""

    def __init__(self, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Sequential(_conv3x3(3, 64, 2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   _conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                   _conv3x3(64, 128))
        self.bn1 = nn.BatchNorm2d(128)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.inplanes = 128
        self.layer1 = self._layer(64, blocks[0], 1, [1] * blocks[0])
        self.layer2 = self._layer(128, blocks[1], 2, [1] * blocks[1])
        self.layer3 = self._layer(256, blocks[2], 2, [1] * blocks[2])
        self.layer4 = self._layer(512, blocks[3], 2, [2, 2, 4])

    def _layer(self, planes: int, n: int, stride: int, dilations: list[int]) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, down, dilation=dilations[0])]
        layers += [Bottleneck(out, planes, dilation=d) for d in dilations[1:]]
        self.inplanes = out
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x1, x2, x3, self.layer4(x3)]


class RefPos(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.emb = nn.Parameter(torch.randn(dim // 2, 2))  # (12, 2) for dim 24

    def forward(self, r):  # r (..., 2) in (y, x) order
        phase = r @ self.emb.t()
        return torch.cat([r, torch.sin(phase), torch.cos(phase)], dim=-1)


class RefIFA(nn.Module):
    def __init__(self, channels: int, num_classes: int, pos_dim: int):
        super().__init__()
        for level in range(1, 5):
            setattr(self, f"pos{level}", RefPos(pos_dim))
        width = 4 * (channels + 2 + pos_dim)
        self.imnet = nn.Sequential(nn.Conv1d(width, 512, 1), nn.BatchNorm1d(512), nn.ReLU(),
                                   nn.Conv1d(512, 256, 1), nn.BatchNorm1d(256), nn.ReLU(),
                                   nn.Conv1d(256, 256, 1), nn.BatchNorm1d(256), nn.ReLU(),
                                   nn.Conv1d(256, num_classes, 1))

    def forward(self, levels):
        """levels: four (B, C, h_l, w_l) maps, finest first -> logits (B, K, h_1, w_1)."""
        b = levels[0].shape[0]
        h, w = levels[0].shape[-2:]
        dtype, device = levels[0].dtype, levels[0].device
        ys = -1 + (2 * torch.arange(h, dtype=dtype, device=device) + 1) / h
        xs = -1 + (2 * torch.arange(w, dtype=dtype, device=device) + 1) / w
        q = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(1, 1, h * w, 2)  # (y, x)
        grid = q.flip(-1).expand(b, -1, -1, -1)  # grid_sample wants (x, y)
        parts = []
        for level, feat in enumerate(levels, 1):
            h_l, w_l = feat.shape[-2:]
            # cell centres of this level, sampled with the same nearest lookup as the features
            cy = -1 + (2 * torch.arange(h_l, dtype=dtype, device=device) + 1) / h_l
            cx = -1 + (2 * torch.arange(w_l, dtype=dtype, device=device) + 1) / w_l
            centres = torch.stack(torch.meshgrid(cy, cx, indexing="ij"), dim=0)[None].expand(b, -1, -1, -1)
            z = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0]  # (B, C, N)
            v = F.grid_sample(centres, grid, mode="nearest", align_corners=False)[:, :, 0]  # (B, 2, N)
            r = (q[:, 0].transpose(1, 2) - v) * torch.tensor([h_l, w_l], dtype=dtype, device=device)[:, None]
            pe = getattr(self, f"pos{level}")(r.transpose(1, 2)).transpose(1, 2)  # (B, 2 + P, N)
            parts += [pe, z]
        return self.imnet(torch.cat(parts, dim=1)).view(b, -1, h, w)


def _conv_bn_relu_1x1(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class RefDecoder(nn.Module):
    def __init__(self, num_classes: int, pos_dim: int):
        super().__init__()
        self.head = _conv_bn_relu_1x1(2048, 256)
        self.ifa = RefIFA(256, num_classes, pos_dim)
        self.enc1 = _conv_bn_relu_1x1(256, 256)
        self.enc2 = _conv_bn_relu_1x1(512, 256)
        self.enc3 = _conv_bn_relu_1x1(1024, 256)

    def forward(self, feats):
        x1, x2, x3, x4 = feats
        return self.ifa([self.enc1(x1), self.enc2(x2), self.enc3(x3), self.head(x4)])


class RefAux(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.aux = nn.Sequential(nn.Conv2d(1024, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                                 nn.Dropout2d(0.1), nn.Conv2d(256, num_classes, 1))


class RefModel(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, pos_dim: int = POS_DIM):
        super().__init__()
        self.encoder = RefEncoder()
        self.decoder = RefDecoder(num_classes, pos_dim)
        self.auxor = RefAux(num_classes)

    def forward(self, x):
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)


def _randomise(model: nn.Module) -> None:
    """Random affine, bias and running statistics in every BatchNorm; random conv biases."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, ())))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.bias is not None:
            m.bias.data.uniform_(-0.5, 0.5)


# --- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = RefModel()
    _randomise(model)
    model.decoder.ifa.imnet[-1].weight.data.mul_(8)  # logits of magnitude ~1-10
    return model.eval()


@pytest.fixture(scope="module")
def reference_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "best.pth"
    state = {"module." + k: v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "model_state": state, "optimizer_state": {}}, path)
    return path


def _save(tmp_path, state, name="src.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


# --- tests --------------------------------------------------------------------------------------
def test_converted_model_matches_reference(reference, reference_file, tmp_path):
    out = tmp_path / "converted"
    assert main(["official", str(reference_file), str(out), "--dataset", "cityscapes"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "ifa" and config["backbone"] == "resnet50_deepstem"
    assert (config["num_classes"], config["neck_channels"], config["mlp_channels"]) == (19, 256, [512, 256, 256])
    assert (config["pos_encoding"], config["pos_dim"], config["aux_channels"]) == ("learned", 24, 256)
    assert config["align_corners"] is True
    assert config["class_names"][0] == "road" and config["palette"][0] == [128, 64, 128]
    card = (out / "README.md").read_text()
    assert "best.pth" in card and file_sha256(reference_file) in card

    model = ifa.load_model(out)
    torch.manual_seed(1)
    x = torch.randn(1, 3, *INPUT_SIZE, dtype=torch.float64)
    # float64 on both sides so that backbone rounding cannot hide a mapping error. ifa.models rounds the
    # IFA offsets to float32 before encoding them, which leaves differences of order 1e-8 here; a wrong
    # mapping, a lost bias or a mismatched cell gives differences of order 0.1-1.
    reference = copy.deepcopy(reference).double()  # the fixture stays float32 for the other tests
    with torch.no_grad():
        expected = reference(x)
        got = model.double()(x)
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    print(f"logit scale {scale:.3g}, max abs difference {diff:.3g}")
    assert got.shape == expected.shape == (1, NUM_CLASSES, *INPUT_SIZE)
    assert 1 < scale < 100
    assert diff < 1e-6

    # the auxiliary head (bias folded into its BatchNorm) agrees too, on the stride-16 feature
    with torch.no_grad():
        feats = reference.encoder(x)
        torch.testing.assert_close(model.aux_head(feats[2]), reference.auxor.aux(feats[2]), rtol=0, atol=1e-6)


def test_bare_state_dict_fp16_constant_encoding(reference, tmp_path):
    # a bare state dict (no model_state, no module. prefix) of a model trained with require_grad: False,
    # whose constant E matrices are not saved
    state = {k: v for k, v in reference.state_dict().items() if ".pos" not in k}
    src = _save(tmp_path, state)
    out = tmp_path / "out"
    assert main(["official", str(src), str(out), "--fp16", "--num-classes", "19",
                 "--backbone", "resnet50_deepstem"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["pos_encoding"], config["pos_dim"], config["dataset"]) == ("fixed", 24, "")
    weights = load_file(out / "model.safetensors")
    assert weights["decoder.head.classifier.weight"].dtype == torch.float16
    assert weights["decoder.head.classifier.weight"].shape == (NUM_CLASSES, 256, 1, 1)
    emb = weights["decoder.head.pos.0.emb"].float()
    assert emb[:6, 0].tolist() == pytest.approx([2.0 ** (6 * i / 5) for i in range(6)], rel=1e-3)
    assert emb[6:, 1].tolist() == emb[:6, 0].tolist() and not emb[:6, 1].any() and not emb[6:, 0].any()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"module.decoder.ifa.extra.weight": torch.zeros(3)}), "decoder.ifa.extra.weight"),
    (lambda s: s.update({"module.encoder.layer1.0.conv4.weight": torch.zeros(3)}), "encoder.layer1.0.conv4.weight"),
    (lambda s: s.pop("module.decoder.ifa.imnet.4.running_var"), "decoder.head.hidden.4.running_var"),
    (lambda s: s.pop("module.encoder.layer2.1.conv2.weight"), "backbone.body.layer2.1.conv2.weight"),
    (lambda s: s.pop("module.decoder.ifa.pos2.emb"), "decoder.ifa.pos2.emb"),
    (lambda s: s.update({"module.decoder.aspp.conv.weight": torch.zeros(3)}), "ASPP"),
])
def test_layout_errors_name_the_keys(reference, tmp_path, capsys, edit, message):
    state = {"module." + k: v for k, v in reference.state_dict().items()}
    edit(state)
    src = _save(tmp_path, {"model_state": state})
    assert main(["official", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--num-classes", "150"], "predicts 19 classes"),
    (["--backbone", "resnet101_deepstem"], "resnet50_deepstem"),
    (["--dataset", "ade20k"], "150 classes"),
    (["--dataset", "nope"], "unknown dataset"),
])
def test_option_mismatch(reference_file, tmp_path, capsys, args, message):
    assert main(["official", str(reference_file), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_depth_and_widths_are_inferred(reference):
    state = dict(reference.state_dict())
    assert infer_config(state)["backbone"] == "resnet50_deepstem"
    for block in range(6, 23):  # ResNet-101's layer3 has 23 blocks
        state[f"encoder.layer3.{block}.conv1.weight"] = torch.zeros(1)
    config = infer_config(state, num_classes=NUM_CLASSES)
    assert config["backbone"] == "resnet101_deepstem" and config["mlp_channels"] == [512, 256, 256]
    with pytest.raises(ValueError, match="resnet101_deepstem"):
        infer_config(state, backbone="resnet50_deepstem")


def test_bad_files(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    other = _save(tmp_path, {"model_state": {"conv.weight": torch.zeros(1)}}, "other.pth")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases = [(tmp_path / "missing.pth", "does not exist"), (text, "not a readable PyTorch checkpoint"),
             (empty, "empty or truncated"), (other, "not an IFA reference checkpoint")]
    for src, message in cases:
        assert main(["official", str(src), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_cli_help():
    help_run = subprocess.run([sys.executable, "-m", "ifa.convert", "official", "--help"],
                              capture_output=True, text=True, timeout=300)
    assert help_run.returncode == 0 and "--num-classes" in help_run.stdout and "--fp16" in help_run.stdout


# --- the reference's evaluation protocol ----------------------------------------------------------
def reference_eval_loop(net, image: np.ndarray, scales, flip: bool, long_side: int, tile: int) -> np.ndarray:
    """The reference code's eval loop, written out on numpy arrays: image (1, 3, H, W) normalised -> probs (H, W, K).

    Per scale: resize (bilinear, align_corners=True) to long side long_side x scale; tiles of tile x tile with
    stride ceil(2/3 tile), rows = ceil((H - tile) / stride) + 1 (at least 1), each tile moved back to end at
    the border, padded at the bottom/right with 0 (the mean), softmax of the net, cropped, summed and counted;
    flip: the same for the flipped tile, flipped back, averaged with it; resized back, averaged over scales.
    """
    _, _, h, w = image.shape
    stride = int(np.ceil(tile * 2 / 3))
    full = np.zeros((h, w, NUM_CLASSES))
    for scale in scales:
        factor = long_side * scale / max(h, w)
        size = (int(round(h * factor)), int(round(w * factor)))
        scaled = F.interpolate(torch.from_numpy(image), size=size, mode="bilinear", align_corners=True).numpy()
        sh, sw = size
        probs, counts = np.zeros((sh, sw, NUM_CLASSES)), np.zeros((sh, sw, NUM_CLASSES))
        for row in range(max(1, int(np.ceil((sh - tile) / stride)) + 1)):
            for col in range(max(1, int(np.ceil((sw - tile) / stride)) + 1)):
                x1, y1 = col * stride, row * stride
                x2, y2 = min(x1 + tile, sw), min(y1 + tile, sh)
                x1, y1 = max(x2 - tile, 0), max(y2 - tile, 0)
                crop = scaled[:, :, y1:y2, x1:x2]
                tiles = [crop] + ([crop[:, :, :, ::-1].copy()] if flip else [])
                outs = []
                for t in tiles:
                    padded = np.pad(t, ((0, 0), (0, 0), (0, tile - t.shape[2]), (0, tile - t.shape[3])))
                    with torch.no_grad():
                        p = net(torch.from_numpy(padded)).softmax(dim=1)[0].numpy().transpose(1, 2, 0)
                    outs.append(p[:y2 - y1, :x2 - x1])
                if flip:
                    outs[1] = outs[1][:, ::-1]
                probs[y1:y2, x1:x2] += sum(outs) / len(outs)
                counts[y1:y2, x1:x2] += 1
        probs /= counts
        back = F.interpolate(torch.from_numpy(probs.transpose(2, 0, 1).copy())[None], size=(h, w), mode="bilinear",
                             align_corners=True)[0].numpy().transpose(1, 2, 0)
        full += back
    return full / len(scales)


def test_reference_protocol_equals_the_reference_eval_loop(reference, reference_file, tmp_path):
    """Predictor(mode="reference") on the converted checkpoint = the reference's eval loop on the reference model.

    Small stand-ins for 2048 / 769: long side 150, 65 x 65 windows (stride 44). A 50 x 90 image becomes 83 x 150
    at scale 1 (2 x 3 windows, overlapping) and 42 x 75 at scale 0.5 (shorter than a window: padded, not shrunk).
    65 x 65 windows give level grids 17, 9, 5, 3 (no tied query centres). float32 on both sides, as the reference
    runs; the two IFA implementations sum in another order: probabilities agree to 1e-5.
    """
    out = tmp_path / "converted"
    assert main(["official", str(reference_file), str(out), "--dataset", "cityscapes"]) == 0
    model = ifa.load_model(out)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(50, 90, 3), dtype=np.uint8)
    predictor = Predictor(model, device="cpu", mode="reference", window=(65, 65), long_side=150,
                              scales=(0.5, 1.0), flip=True)
    assert predictor.stride == (44, 44)
    x = predictor.preprocess(image)
    expected = reference_eval_loop(reference, x.numpy(), (0.5, 1.0), True, 150, 65)
    got = predictor.probabilities(x)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # the protocol matters: the project's whole-image protocol gives other probabilities
    whole = Predictor(model, device="cpu", scales=(0.5, 1.0), flip=True).probabilities(x)[0].numpy()
    assert np.abs(whole.transpose(1, 2, 0) - expected).max() > 1e-2
