"""Cell ties: every IFA path reads the cell the reference code reads, also where a query centre lies on an edge.

The reference code builds its query grid as LIIF's make_coord does (float32: (-1 + 1/n) + (2/n) i), reads each
level with grid_sample(mode="nearest", align_corners=False) and takes the offset to the centre grid_sample
returns from a map of cell centres. `reference_logits` below re-implements exactly that, with torch's own
grid_sample, independently of ifa.models (it shares only the head's weights: the encodings and the MLP).

The sizes are those of real inputs, where coarse levels have rows or columns of tied query centres:
- 360x480 through EfficientNet-Lite0 (CamVid): stride-4 grid 90x120, the 12x15 level has 6 tie rows;
- 129x161 through the reference's deep-stem ResNet: 33x41, the 5x6 level has a tie column;
- 250x370 through EfficientNet-Lite0: 63x93, the 32x47 level has a tie row;
- a small synthetic case (15x21 over 8x11, 4x6, 2x3) with ties on both axes.
float32 throughout, as the reference runs. The reference's offsets (coord - centre) * h_l carry float32 errors
of up to ~1e-5 (ulps of the coordinate times level sizes up to 120), which encoding frequencies up to 2^6 turn
into logit differences of up to ~3e-5 (ifa.models computes the offsets exactly): atol 1e-4, rtol 1e-3 on O(1)
logits. A wrong cell at a tie changes logits by O(1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ifa.models.ifa import IFAHead, grid_cells, grid_coords

CASES = {
    "camvid-360x480-effl0": [(90, 120), (45, 60), (23, 30), (12, 15)],
    "129x161-deepstem-resnet": [(33, 41), (17, 21), (9, 11), (5, 6)],
    "250x370-effl0": [(63, 93), (32, 47), (16, 24), (8, 12)],
    "synthetic": [(15, 21), (8, 11), (4, 6), (2, 3)],
}
CHANNELS = 3
F32 = {"atol": 1e-4, "rtol": 1e-3}


def make_coord(n: int) -> torch.Tensor:
    """LIIF's cell centres of an n-cell axis in float32, computed as LIIF computes them."""
    r = (1 - (-1)) / (2 * n)
    return -1 + r + (2 * r) * torch.arange(n).float()


def reference_logits(head: IFAHead, levels: list[torch.Tensor]) -> torch.Tensor:
    """The reference's IFA at the stride-4 cell centres, with grid_sample lookups: (B, K, h, w)."""
    b = levels[0].shape[0]
    h, w = levels[0].shape[-2:]
    coord = torch.stack(torch.meshgrid(make_coord(h), make_coord(w), indexing="ij"), dim=-1).view(1, -1, 2)
    grid = coord.flip(-1)[:, None].expand(b, -1, -1, -1)  # (B, 1, N, 2) in (x, y)
    parts = []
    for level, feat in enumerate(levels):
        h_l, w_l = feat.shape[-2:]
        centres = torch.stack(torch.meshgrid(make_coord(h_l), make_coord(w_l), indexing="ij"), dim=0)
        z = F.grid_sample(feat, grid, mode="nearest", align_corners=False)[:, :, 0]  # (B, C, N)
        v = F.grid_sample(centres[None].expand(b, -1, -1, -1), grid, mode="nearest", align_corners=False)[:, :, 0]
        rel = coord.transpose(1, 2) - v  # (B, 2, N)
        rel = rel * torch.tensor([h_l, w_l], dtype=rel.dtype)[:, None]
        parts += [head.pos[level](rel.transpose(1, 2)).transpose(1, 2), z]
    x = torch.cat(parts, dim=1)[..., None]
    return head.classifier(head.hidden(x)).view(b, -1, h, w)


def reference_rows(n_query: int, n_level: int) -> torch.Tensor:
    """The level cell grid_sample reads at each query centre along one axis."""
    index = torch.arange(n_level, dtype=torch.float32).view(1, 1, n_level, 1)
    grid = torch.stack([torch.zeros(n_query), make_coord(n_query)], dim=-1).view(1, 1, n_query, 2)
    return F.grid_sample(index, grid, mode="nearest", align_corners=False).view(-1).long()


def random_head(seed: int = 0) -> IFAHead:
    torch.manual_seed(seed)
    head = IFAHead([CHANNELS] * 4, 5, hidden=(16, 8), pos_encoding="learned", pos_dim=24, chunk_size=512)
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for pe in head.pos:
            pe.emb.add_(0.1 * torch.randn_like(pe.emb))
    return head.eval()


def ties(n_query: int, n_level: int) -> int:
    """Query centres of an n_query axis that lie exactly on an edge of an n_level axis (exact integers)."""
    return sum((2 * i + 1) * n_level % (2 * n_query) == 0 for i in range(n_query))


@pytest.mark.parametrize("name", CASES)
def test_grid_cells_read_what_grid_sample_reads(name):
    (h, w), *coarse = CASES[name]
    assert sum(ties(h, h_l) + ties(w, w_l) for h_l, w_l in coarse) > 0, "the case must contain ties"
    lower = 0
    for n_query, n_level in [(h, h_l) for h_l, _ in coarse] + [(w, w_l) for _, w_l in coarse]:
        k, r = grid_cells(n_query, n_level)
        expected = reference_rows(n_query, n_level)
        assert torch.equal(k, expected), (n_query, n_level)
        assert bool((r.abs() <= 1).all())
        lower += int((r == 1).sum())  # a tie read from the lower cell: offset +1
    assert lower > 0, "grid_sample's rounding takes the lower cell at some ties"


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_all_paths_equal_the_reference_at_tie_sizes(name, seed):
    head = random_head(seed)
    g = torch.Generator().manual_seed(seed + 10)
    levels = [torch.randn(2, CHANNELS, h_l, w_l, generator=g) for h_l, w_l in CASES[name]]
    h, w = CASES[name][0]
    with torch.no_grad():
        expected = reference_logits(head, levels)
        torch.testing.assert_close(head(levels), expected, **F32)
        torch.testing.assert_close(head.forward_reference(levels), expected, **F32)
        points = head.query_points(levels, grid_coords(h, w)[None].expand(2, -1, -1))
        torch.testing.assert_close(points.view(2, -1, h, w), expected, **F32)
        # the training path (no inference shortcuts) agrees too
        head.chunk_size = None
        with torch.enable_grad():
            torch.testing.assert_close(head(levels).detach(), expected, **F32)


def test_the_old_upper_cell_rule_would_differ_at_camvid_size():
    """At 360x480 the 12x15 level's tie rows are read from the lower cell about half the time: the rule
    matters (reading the upper cell there changes the logits by far more than the tolerance)."""
    k, r = grid_cells(90, 12)
    tie_rows = [i for i in range(90) if (2 * i + 1) * 12 % 180 == 0]
    assert len(tie_rows) == 6
    assert 0 < sum(r[i].item() == 1 for i in tie_rows) < 6
