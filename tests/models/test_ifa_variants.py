"""The local-ensemble read (ifa_read: ensemble) and the centred read (ifa_read: centred), named variants of the IFA
head (never the paper's default), and the offset ablation as a per-call, per-thread argument.

Each level's first-layer term is averaged over the four nearest cells, each with its own offset, by area weights
(ifa.models.ifa.ensemble_cells). Held here: the chunked path equals the formula written out (forward_reference),
query_points equals the grid, a level read at its own cell centres equals the nearest read, and a query is
continuous across cell borders (where the nearest read jumps). The centred read: cells by hand, the paths equal the
formula, no power-of-two grid query is equidistant from two feature centres (and at other sizes' ties every path
reads the same cell). Tolerances: 1e-5 absolute on unit-scale random logits (float32), 1e-4 for float32 point
coordinates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ifa.models.config import ConfigError, ModelConfig
from ifa.models.ifa import IFAHead, cell_index, centred_cells, ensemble_cells, grid_coords, query_centres
from ifa.models.segmentor import SegmentationModel

LEVELS = ((23, 31), (12, 16), (6, 8), (3, 4))


def _head(read: str = "ensemble", seed: int = 0) -> tuple[IFAHead, list[torch.Tensor]]:
    torch.manual_seed(seed)
    head = IFAHead([8] * 4, 5, (16, 12), "learned", 8, read=read).eval()
    return head, [torch.randn(2, 8, h, w) for h, w in LEVELS]


def test_ensemble_cells_by_hand():
    q = np.array([-1.0, -0.75, -0.5, 0.0, 0.5, 1.0])  # an axis of 4 cells: centres -0.75, -0.25, 0.25, 0.75
    (k0, k1), (w0, w1), (r0, r1) = ensemble_cells(q, 4)
    assert k0.tolist() == [0, 0, 0, 1, 2, 3] and k1.tolist() == [0, 1, 1, 2, 3, 3]
    np.testing.assert_allclose(w1, [0, 0, 0.5, 0.5, 0.5, 1])
    np.testing.assert_allclose(w0 + w1, 1)
    np.testing.assert_allclose(r0, [-1, 0, 1, 1, 1, 1])  # (q - centre of the cell read) * n
    torch_out = ensemble_cells(torch.from_numpy(q), 4)
    for ours, theirs in zip((k0, w1, r1), (torch_out[0][0], torch_out[1][1], torch_out[2][1])):
        np.testing.assert_allclose(theirs.numpy(), ours)


def test_centred_cells_by_hand():
    # 4 cells, feature centres 0.4 of a cell before the nominal ones: -0.95, -0.45, 0.05, 0.55
    q = torch.tensor([-1.0, -0.71, -0.69, 0.05, 0.29, 0.31, 1.0], dtype=torch.float64)
    k, r = centred_cells(q.float(), 4, exact=q)
    assert k.tolist() == [0, 0, 1, 2, 2, 3, 3]
    np.testing.assert_allclose(r.numpy(), [-0.2, 0.96, -0.96, 0.0, 0.96, -0.96, 1.8], atol=1e-12)
    np.testing.assert_allclose(centred_cells(q.float(), 4)[1].numpy(), r.numpy(), atol=1e-6)  # float32 offsets
    inside = torch.tensor([-0.9, -0.3, 0.2, 0.7], dtype=torch.float64)  # no shift: the nearest read's cell, offset
    k0, r0 = centred_cells(inside.float(), 4, shift=0.0, exact=inside)
    assert k0.tolist() == cell_index(inside.float(), 4).tolist()
    np.testing.assert_allclose(r0.numpy(), ((inside - (-1 + (2 * k0 + 1) / 4)) * 4).numpy(), atol=1e-12)


def test_no_power_of_two_grid_query_is_equidistant_from_two_feature_centres():
    for n_level in range(1, 41):
        for ratio in (1, 2, 4, 8, 16, 32, 64):
            q = (2 * np.arange(n_level * ratio, dtype=np.float64) + 1) / (n_level * ratio) - 1
            u = (q + 1) * (n_level / 2) - 0.1  # in cell units, feature centres at the integers
            assert np.abs(np.abs(u - np.floor(u)) - 0.5).min() > 1e-3, (n_level, ratio)
    # other sizes can tie (row 4 of 90 on 12 rows: u = 0.5); the cell then comes from the float32 centres that
    # query_points also gets (grid_coords), never from the exact ones
    exact = (2 * torch.arange(90, dtype=torch.float64) + 1) / 90 - 1
    assert abs(float((exact[4] + 1) * 6 - 0.1) - 0.5) < 1e-12
    assert torch.equal(centred_cells(torch.from_numpy(query_centres(90)), 12, exact=exact)[0],
                       centred_cells(grid_coords(90, 1)[:, 0], 12)[0])


@pytest.mark.parametrize("read", ["ensemble", "centred"])
@pytest.mark.parametrize("size", [(23, 31), (90, 124), (37, 41), (360 // 4, 480 // 4)])
def test_variant_paths_equal_the_formula(size, read, monkeypatch):
    """The fast inference path (no autograd: one combined encoding table, per-level tables, or terms computed per
    chunk, as the tables' sizes allow; small chunks), the generic path (autograd on) and query_points equal
    forward_reference."""
    import ifa.models.ifa_fast as fast

    head, feats = _head(read)
    head.chunk_size = 97  # several chunks, not aligned with any level's period
    with torch.no_grad():
        grid = head(feats, size)
        reference = head.forward_reference(feats, size)
        points = head.query_points(feats, grid_coords(*size)[None].expand(2, -1, -1)).view(2, 5, *size)
        smaller_tables = []
        for cap in (16 * 4 * 150, 0):  # some levels' tables only (their classes), then none (terms per chunk)
            monkeypatch.setattr(fast, "_COMBINED_TABLE_BYTES", cap)
            smaller_tables.append(head(feats, size))
    with torch.enable_grad():
        generic = head(feats, size).detach()
    for path in (grid, *smaller_tables, generic):
        torch.testing.assert_close(path, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(points, reference, atol=1e-4, rtol=0)
    head.train()  # the training path (BatchNorm in batch mode) is the same sum
    assert torch.isfinite(head(feats, size)).all()


def test_a_level_read_at_its_own_cell_centres_is_the_nearest_read():
    ensemble, feats = _head("ensemble")
    nearest, _ = _head("nearest")
    nearest.load_state_dict(ensemble.state_dict())
    one_level = [IFAHead([8], 5, (16,), "learned", 8, read=r).eval() for r in ("ensemble", "nearest")]
    one_level[1].load_state_dict(one_level[0].state_dict())
    with torch.no_grad():
        a, b = (h(feats[:1]) for h in one_level)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_dense_query_is_continuous_across_cell_borders():
    """Points just either side of a border between two cells of level 2 (12 rows): the nearest read jumps (another
    cell's feature and an offset of the other sign), the ensemble read moves by about the step's size."""
    border = -1 + 2 * 5 / 12  # between rows 4 and 5 of the 12-row level
    xs = torch.linspace(-0.9, 0.9, 64, dtype=torch.float64)
    pts = [torch.stack([torch.full_like(xs, border + d), xs], -1).float()[None].expand(2, -1, -1)
           for d in (-2e-6, 2e-6)]
    jumps = {}
    for read in ("ensemble", "nearest"):
        head, feats = _head(read)
        with torch.no_grad():
            below, above = (head.query_points(feats, p) for p in pts)
        jumps[read] = float((above - below).abs().max())
    assert jumps["nearest"] > 1e-2 and jumps["ensemble"] < 1e-3, jumps


def test_the_read_is_part_of_the_config():
    config = ModelConfig(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, ifa_read="ensemble",
                         neck_channels=8, mlp_channels=[16, 8])
    model = SegmentationModel(config)
    assert model.decoder.head.read == "ensemble"
    assert ModelConfig.from_dict(config.to_dict()).ifa_read == "ensemble"
    assert ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "ifa_read"}).ifa_read == "nearest"
    with pytest.raises(ConfigError, match="ifa_read"):
        ModelConfig(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, ifa_read="bilinear")


def test_offsets_zeroed_is_per_call_and_per_thread():
    """The offset ablation never changes the module: `zeroed=` for one call, offsets_zeroed() for one thread's
    block; another thread using the same head meanwhile sees the offsets."""
    import threading

    head, feats = _head("nearest")
    with torch.no_grad():
        plain = head(feats, (40, 50))
        with head.offsets_zeroed():
            zeroed_block = head(feats, (40, 50))
        assert torch.equal(head(feats, (40, 50), zeroed=[0, 1, 2, 3]), zeroed_block)
        assert not torch.equal(zeroed_block, plain)
        assert torch.equal(head.forward_reference(feats, (40, 50), zeroed=[2]),
                           head.forward_reference(feats, (40, 50), zeroed=(2,)))
        inside, outside = threading.Event(), threading.Event()
        seen = {}

        def ablate():
            with torch.no_grad(), head.offsets_zeroed():
                inside.set()
                outside.wait(30)
                seen["zeroed"] = head(feats, (40, 50))

        worker = threading.Thread(target=ablate)
        worker.start()
        inside.wait(30)
        seen["plain"] = head(feats, (40, 50))  # while the other thread is inside its block
        outside.set()
        worker.join(30)
    assert torch.equal(seen["plain"], plain) and torch.equal(seen["zeroed"], zeroed_block)
