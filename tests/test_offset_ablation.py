"""tools.offset_ablation: with r = 0 every level reads its cell's feature and PE(0), nothing else."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ifa.inference import Predictor
from ifa.metrics import confusion_matrix, summarize
from ifa.models import create_model
from ifa.models.ifa import IFAHead
from tools.offset_ablation import ablate


def level_maps(seed=0):
    """Levels 1-3 constant in space, level 4 (2 x 2 cells) random: (1, 4, 16 / 2^l, 16 / 2^l)."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(1, 4, 1, 1, generator=g).expand(1, 4, s, s).contiguous() for s in (16, 8, 4)]
    return feats + [torch.randn(1, 4, 2, 2, generator=g)]


def spread_within_level4_cells(logits):
    """Largest deviation from the cell's first query, over the 8 x 8 query blocks of (1, K, 16, 16) logits."""
    blocks = logits.view(1, -1, 2, 8, 2, 8)
    return (blocks - blocks[:, :, :, :1, :, :1]).abs().max()


def test_zeroed_offsets_leave_only_the_cells():
    torch.manual_seed(0)
    head = IFAHead([4] * 4, 3, hidden=(8,), pos_dim=8).eval()
    feats = level_maps()
    with torch.no_grad():
        trained = head(feats)
        with head.offsets_zeroed():
            zeroed = head(feats)
            reference = head.forward_reference(feats)
        restored = head(feats)
    torch.testing.assert_close(zeroed, reference, rtol=0, atol=1e-5)  # fast path == formula, both ablated
    assert torch.equal(restored, trained)
    # Only the level-4 feature varies in space: without offsets each 8 x 8 block of queries is one value.
    assert spread_within_level4_cells(zeroed) < 1e-5
    assert spread_within_level4_cells(trained) > 1e-3  # with them, the offsets did matter


class TinySet:
    """Two random 64 x 96 images with labels in 0..2, the second with 8 ignored rows."""

    info = SimpleNamespace(class_names=["a", "b", "c"])

    def __init__(self):
        rng = np.random.default_rng(0)
        self.samples = [(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8),
                         rng.integers(0, 3, (64, 96)).astype(np.uint8)) for _ in range(2)]
        self.samples[1][1][:8] = 255

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_ablate_scores_both_variants_and_counts_the_changed_pixels():
    torch.manual_seed(0)
    model = create_model(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                         mlp_channels=[8], pos_dim=4, aux_channels=4, ifa_features="fpn").eval()
    dataset = TinySet()
    result = ablate(model, dataset)
    predictor = Predictor(model, device="cpu")
    trained = [predictor.predict(image).labels for image, _ in dataset.samples]
    with model.offsets_zeroed():
        zeroed = [predictor.predict(image).labels for image, _ in dataset.samples]
    for key, preds in (("as_trained", trained), ("offsets_zeroed", zeroed)):
        cm = sum(confusion_matrix(p, label, 3, ignore_index=255) for p, (_, label) in zip(preds, dataset.samples))
        assert result[key] == summarize(cm, ["a", "b", "c"])
    valid = [label != 255 for _, label in dataset.samples]
    changed = sum(int((t != z)[v].sum()) for t, z, v in zip(trained, zeroed, valid))
    assert result["changed_pixels_percent"] == pytest.approx(100 * changed / sum(int(v.sum()) for v in valid))
    assert ablate(model, dataset, limit=1)["as_trained"] == summarize(
        confusion_matrix(trained[0], dataset.samples[0][1], 3, ignore_index=255), ["a", "b", "c"])
    fpn = create_model(architecture="fpn", backbone="efficientnet_lite0", num_classes=3, neck_channels=8,
                       head_channels=8, aux_channels=4)
    with pytest.raises(ValueError, match="needs an IFA model"):
        with fpn.offsets_zeroed():
            pass
