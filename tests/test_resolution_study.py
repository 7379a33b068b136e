"""tools.resolution_study: the phase analysis (where within a stride-4 cell the every-pixel query loses) and the
study's record on a tiny random IFA model. Tolerance: 1e-5 on unit-scale float32 values."""

from __future__ import annotations

import json

import numpy as np
import torch

from ifa.data.classes import get_dataset_info
from ifa.models.config import ModelConfig
from ifa.models.segmentor import SegmentationModel
from tools.resolution_study import STRIDE, feature_centres, phase_resample, study


def test_phase_resample_keeps_its_samples_and_is_linear_between_them():
    rows, cols = torch.meshgrid(torch.arange(22.0), torch.arange(30.0), indexing="ij")
    field = torch.stack([0.3 * rows - 0.1 * cols, rows + 2 * cols, torch.randn(22, 30)])
    for phase in range(STRIDE):
        out = phase_resample(field, phase)
        assert out.shape == field.shape
        torch.testing.assert_close(out[:, phase::STRIDE, phase::STRIDE], field[:, phase::STRIDE, phase::STRIDE],
                                   atol=1e-5, rtol=0)
        inside = tuple(slice(phase, phase + STRIDE * ((n - 1 - phase) // STRIDE) + 1) for n in (22, 30))
        torch.testing.assert_close(out[:2][(slice(None), *inside)], field[:2][(slice(None), *inside)],
                                   atol=1e-4, rtol=0)  # bilinear reproduces a linear field between samples
        # beyond the outermost samples: the nearest one's value
        torch.testing.assert_close(out[:, :phase, phase], out[:, phase:phase + 1, phase].expand(-1, phase))


class _Scenes:
    def __init__(self, n: int = 2):
        self.info = get_dataset_info("camvid")
        rng = np.random.default_rng(0)
        self.items = [(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8),
                       rng.integers(0, 4, (40, 56)).astype(np.uint8)) for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_study_reports_both_resolutions_classes_phases_and_the_ablation():
    torch.manual_seed(0)
    config = ModelConfig(architecture="ifa", backbone="efficientnet_lite0", num_classes=11, neck_channels=8,
                         mlp_channels=[16, 8], pos_dim=8)
    model = SegmentationModel(config).eval()
    result = study(model, _Scenes(), zeroed=True, phases=True)
    assert result["images"] == 2 and set(result["phases"]) == set(range(STRIDE))
    for r in ("stride4", "full"):
        classes = result[r]["classes"]
        assert list(classes) == list(get_dataset_info("camvid").class_names)
        scored = [v for v in classes.values() if v is not None]
        assert 0 <= min(scored) and max(scored) <= 100
        assert set(result[r]["bands"]) == {1, 2, 4, 8}
    assert all(0 <= v <= 100 for v in result["phases"].values())
    assert 0 <= result["offsets_zeroed"]["changed_pixels_percent"] <= 100
    fpn = SegmentationModel(ModelConfig(architecture="fpn", backbone="efficientnet_lite0", num_classes=11,
                                        neck_channels=8, head_channels=8)).eval()
    baseline = study(fpn, _Scenes(1), phases=True)  # a Semantic FPN: the grid row, its logits at the four phases
    assert set(baseline) == {"stride4", "phases", "images"} and set(baseline["phases"]) == set(range(STRIDE))
    assert set(study(model, _Scenes(1), resolutions=("stride4",), phases=True)) == {"stride4", "images"}


class _Pooled(torch.nn.Module):
    """Head inputs as average pools of the image: stride S's cell (i, j) is centred at S * i + S / 2 - shift."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.shift = shift

    def levels(self, x):
        x = torch.nn.functional.pad(x, (self.shift, 0, self.shift, 0))[..., :x.shape[-2], :x.shape[-1]]
        return [torch.nn.functional.avg_pool2d(x, s) for s in (4, 8, 16, 32)]


def test_feature_centres_finds_a_known_shift():
    for shift in (0, 3):
        centres = feature_centres(_Pooled(shift), size=(128, 160))
        assert [c["stride"] for c in centres] == [4, 8, 16, 32]
        for c in centres:
            assert abs(c["dy"] + shift) < 1e-6 and abs(c["dx"] + shift) < 1e-6, c
            assert abs(c["dy_cells"] * c["stride"] - c["dy"]) < 1e-9


def test_the_record_and_its_check_reach_the_card(tmp_path):
    """--record writes both mIoUs and the first images' every-pixel check into the card (the app and tests/shipped
    read them); --from-json records a saved result without measuring it again."""
    from PIL import Image

    import ifa
    from ifa.cards import card_records, resolution_record
    from tools.resolution_study import main

    torch.manual_seed(0)
    model = SegmentationModel(ModelConfig(architecture="ifa", backbone="efficientnet_lite0", num_classes=11,
                                          neck_channels=8, mlp_channels=[16, 8], pos_dim=8,
                                          class_names=list(get_dataset_info("camvid").class_names)))
    ifa.save_pretrained(model, tmp_path / "model")
    for name, (image, label) in zip(("a.png", "b.png"), _Scenes().items):
        for folder, array in (("val", image), ("valannot", label)):
            (tmp_path / "camvid" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / "camvid" / folder / name)
    saved = tmp_path / "result.json"
    args = [str(tmp_path / "model"), "--root", str(tmp_path / "camvid"), "--record"]
    assert main([*args, "--json", str(saved)]) == 0
    recorded = card_records(tmp_path / "model")["resolution"]
    assert recorded["images"] == 2 and recorded["check"]["images"] == 8  # the first 8: here both images
    assert recorded["check"]["full"] == recorded["full"]
    assert resolution_record(tmp_path / "model")["best"] in ("stride4", "full")
    result = json.loads(saved.read_text())
    result["full"]["mIoU"], result["stride4"]["mIoU"] = 99.0, 1.0
    saved.write_text(json.dumps(result))
    assert main([*args, "--from-json", str(saved)]) == 0
    assert resolution_record(tmp_path / "model") == {"stride4": 1.0, "full": 99.0, "best": "full"}
