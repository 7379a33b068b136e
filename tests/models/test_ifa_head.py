"""Tests of the IFA head: the fast path against the written-out formula, position encodings, grid cells.

Everything runs on tiny widths (levels of 2-5 channels, MLP 16 -> 8 -> 5) and a 23 x 37 "image",
whose stride 4, 8, 16, 32 levels are 6x10, 3x5, 2x3, 1x2: odd sizes that do not divide each other.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ifa.models import cpu_gemm
from ifa.models.ifa import POSITION_ENCODINGS, IFAHead, PositionEncoding, grid_cells

CHANNELS = [3, 4, 2, 5]
LEVEL_SIZES = [(6, 10), (3, 5), (2, 3), (1, 2)]
NUM_CLASSES = 5
HIDDEN = (16, 8)
# Small enough that every grid below is evaluated in several row chunks (and query_points in
# several point chunks): step = 40 // w rows, e.g. 4 rows for w = 10 -> chunks of 4 + 2 rows.
CHUNK = 40
# pos_dim only matters for the encodings that have an E matrix.
ENCODING_CASES = [(kind, dim) for kind in POSITION_ENCODINGS
                  for dim in ((24,) if kind in ("none", "coord") else (12, 24, 72))]
# Query grids: the default (stride-4 level, 6x10), the full input resolution (23x37), odd sizes
# (13x7, 1x1), sizes that are not multiples of the level sizes (9x16), and a multiple (12x20).
GRID_SIZES = [None, (23, 37), (13, 7), (9, 16), (12, 20), (1, 1)]

# float32: fast and reference sum the same terms in another order; logits are O(1) and the
# observed difference is ~2e-7, so atol 1e-5 / rtol 1e-4 leaves ample margin.
F32 = {"atol": 1e-5, "rtol": 1e-4}
# float64: the same computation must agree to rounding (~1e-15); 1e-12 is tight but safe.
F64 = {"atol": 1e-12, "rtol": 1e-10}



def make_head(kind: str = "learned", dim: int = 24, dtype=torch.float32, seed: int = 0) -> IFAHead:
    """A head with random weights, non-trivial BatchNorm statistics and a perturbed (non axis-aligned) E."""
    torch.manual_seed(seed)
    head = IFAHead(CHANNELS, NUM_CLASSES, hidden=HIDDEN, pos_encoding=kind, pos_dim=dim, chunk_size=CHUNK)
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
        for pe in head.pos:
            if hasattr(pe, "emb"):
                pe.emb.add_(0.1 * torch.randn_like(pe.emb))
    return head.to(dtype).eval()


def make_feats(dtype=torch.float32, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, h, w, generator=g, dtype=dtype) for c, (h, w) in zip(CHANNELS, LEVEL_SIZES)]


def grid_coords(h: int, w: int, batch: int, dtype=torch.float32) -> torch.Tensor:
    """Centres of a size-(h, w) grid, normalised (y, x): (batch, h * w, 2), row-major."""
    ys = -1 + (2 * torch.arange(h, dtype=torch.float64) + 1) / h
    xs = -1 + (2 * torch.arange(w, dtype=torch.float64) + 1) / w
    q = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(1, -1, 2)
    return q.expand(batch, -1, -1).to(dtype)


def resolve(size):
    return size if size is not None else LEVEL_SIZES[0]


# --- fast path == reference -----------------------------------------------------------------------
@pytest.mark.parametrize("kind,dim", ENCODING_CASES)
@pytest.mark.parametrize("size", GRID_SIZES)
def test_forward_equals_reference(kind, dim, size):
    head, feats = make_head(kind, dim), make_feats()
    with torch.no_grad():
        ref = head.forward_reference(feats, size)
        fast = head(feats, size)
    assert fast.shape == (2, NUM_CLASSES, *resolve(size))
    torch.testing.assert_close(fast, ref, **F32)


@pytest.mark.parametrize("kind,dim", ENCODING_CASES)
@pytest.mark.parametrize("size", [None, (23, 37), (13, 7), (9, 16)])
def test_query_points_equals_reference(kind, dim, size):
    head, feats = make_head(kind, dim), make_feats()
    h, w = resolve(size)
    with torch.no_grad():
        ref = head.forward_reference(feats, size)
        points = head.query_points(feats, grid_coords(h, w, batch=2))
    assert points.shape == (2, NUM_CLASSES, h * w)
    torch.testing.assert_close(points, ref.flatten(2), **F32)


def test_forward_chunking_does_not_change_the_result():
    head, feats = make_head(), make_feats()
    with torch.no_grad():
        whole = head(feats, (23, 37))
        head.chunk_size = 1  # one row per chunk
        rows = head(feats, (23, 37))
    # Same arithmetic on the same rows; only BatchNorm in eval mode follows (per-element).
    torch.testing.assert_close(rows, whole, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", cpu_gemm.BACKENDS + ("auto",))
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_equals_reference_through_each_cpu_gemm_path(backend, channels_last, monkeypatch):
    """Both matrix-product paths (oneDNN, addmm) and the measured choice, on NCHW and NHWC level maps."""
    if backend == "onednn" and not cpu_gemm.onednn_available():
        pytest.skip("this PyTorch has no oneDNN")
    monkeypatch.setenv("IFA_CPU_GEMM", backend)
    head, feats = make_head(), make_feats()
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    with torch.no_grad():
        for size in [None, (23, 37), (9, 16)]:
            torch.testing.assert_close(head(feats, size), head.forward_reference(feats, size), **F32)


def test_measured_fp32_gemm_choice_is_one_of_the_paths_and_kept():
    choice = cpu_gemm.fastest_fp32_backend(1, 24, 16)
    assert choice in cpu_gemm.BACKENDS
    hits = cpu_gemm.fastest_fp32_backend.cache_info().hits
    assert cpu_gemm.fastest_fp32_backend(1, 24, 16) == choice  # measured once per (threads, shape)
    assert cpu_gemm.fastest_fp32_backend.cache_info().hits == hits + 1
    assert cpu_gemm.gemm_backend(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)) \
        == "matmul"


@pytest.mark.parametrize("kind", POSITION_ENCODINGS)
def test_float64_fast_equals_reference_tightly(kind):
    head, feats = make_head(kind, 24, dtype=torch.float64), make_feats(torch.float64)
    with torch.no_grad():
        for size in [None, (23, 37), (13, 7), (9, 16)]:
            h, w = resolve(size)
            ref = head.forward_reference(feats, size)
            points = head.query_points(feats, grid_coords(h, w, batch=2, dtype=torch.float64))
            torch.testing.assert_close(points, ref.flatten(2), **F64)
            torch.testing.assert_close(head(feats, size), ref, **F64, msg=lambda m, s=size: f"size {s}: {m}")


def test_fast_equals_reference_on_a_very_wide_grid():
    """A 1 x 6001 query grid over 3-cell-wide levels (e.g. full-resolution querying of a > 5000 px image).

    Query column 4000 has centre at level coordinate 8001 * 3 / 12002 = 2 - 1/12002: inside cell 1,
    8.3e-5 cells below the boundary. The fast path (exact integer rule, `grid_cells`) reads cell 1
    with offset 0.99983; the reference must do the same (offset -1.00017 into cell 2 would lie
    outside [-1, 1]).
    """
    torch.manual_seed(0)
    head = IFAHead([2, 2, 2, 2], 3, hidden=(8,), pos_encoding="coord").eval()
    feats = [torch.randn(1, 2, 1, 3) for _ in range(4)]
    k, r = grid_cells(6001, 3)
    assert (k[4000].item(), round(r[4000].item(), 5)) == (1, 0.99983)
    with torch.no_grad():
        torch.testing.assert_close(head(feats, (1, 6001)), head.forward_reference(feats, (1, 6001)), **F32)


def _assert_same_running_stats(a: IFAHead, b: IFAHead) -> None:
    for bn_a, bn_b in zip(a.hidden[1::3], b.hidden[1::3]):
        torch.testing.assert_close(bn_a.running_mean, bn_b.running_mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(bn_a.running_var, bn_b.running_var, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", POSITION_ENCODINGS)
@pytest.mark.parametrize("size", [None, (23, 37)])
def test_train_mode_fast_equals_reference(kind, size):
    """BatchNorm in training mode (batch statistics): outputs and the updated running stats agree."""
    fast_head = make_head(kind, 24).train()
    ref_head = copy.deepcopy(fast_head)
    feats = make_feats()
    with torch.no_grad():
        fast = fast_head(feats, size)
        ref = ref_head.forward_reference(feats, size)
    # Batch normalisation divides by the batch std (~0.1-1 here): 1e-4 absolute on O(1) logits.
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    _assert_same_running_stats(fast_head, ref_head)


@pytest.mark.parametrize("kind", ["coord", "learned"])
def test_train_mode_query_points_equals_reference(kind):
    """query_points in training mode must let BatchNorm see all the points, as `decode_features` does.

    With chunk_size 40 the 6x10 grid (60 points) spans two chunks; chunk-wise batch statistics
    would give different logits and running stats.
    """
    points_head = make_head(kind, 24).train()
    ref_head = copy.deepcopy(points_head)
    feats = make_feats()
    with torch.no_grad():
        ref = ref_head.forward_reference(feats)
        points = points_head.query_points(feats, grid_coords(*LEVEL_SIZES[0], batch=2))
    torch.testing.assert_close(points, ref.flatten(2), atol=1e-4, rtol=1e-4)  # as in the test above
    _assert_same_running_stats(points_head, ref_head)


@pytest.mark.parametrize("kind", POSITION_ENCODINGS)
def test_gradients_fast_equal_reference(kind):
    """Backward through both (train mode, 23x37 grid): grads of the first layer, E and the inputs agree."""
    fast_head = make_head(kind, 24).train()
    ref_head = copy.deepcopy(fast_head)
    feats_fast = [f.requires_grad_() for f in make_feats()]
    feats_ref = [f.detach().clone().requires_grad_() for f in feats_fast]
    weights = torch.randn(2, NUM_CLASSES, 23, 37, generator=torch.Generator().manual_seed(5))
    (fast_head(feats_fast, (23, 37)) * weights).sum().backward()
    (ref_head.forward_reference(feats_ref, (23, 37)) * weights).sum().backward()

    def close(a, b, scale=None):
        # Gradients sum ~850 points x 2 images; compare relative to their largest entry (float32).
        scale = b.abs().max().item() if scale is None else scale
        torch.testing.assert_close(a, b, atol=1e-4 * scale + 1e-6, rtol=1e-4)

    weight_grad = ref_head.hidden[0].weight.grad
    close(fast_head.hidden[0].weight.grad, weight_grad)
    # BatchNorm follows the first layer, so its bias gradient is ~0 (rounding noise): compare on the weight's scale.
    close(fast_head.hidden[0].bias.grad, ref_head.hidden[0].bias.grad, scale=weight_grad.abs().max().item())
    for a, b in zip(feats_fast, feats_ref):
        close(a.grad, b.grad)
    for pe_fast, pe_ref in zip(fast_head.pos, ref_head.pos):
        if kind == "learned":
            assert pe_ref.emb.grad is not None and pe_ref.emb.grad.abs().sum() > 0
            close(pe_fast.emb.grad, pe_ref.emb.grad)
        else:
            assert not any(True for _ in pe_fast.parameters())


def with_dropout(head: IFAHead, p: float) -> IFAHead:
    """A copy of `head` (same weights) with channel dropout p before the classifier."""
    out = copy.deepcopy(head)
    out.dropout = nn.Dropout2d(p).train(head.training)
    return out


def test_dropout_is_identity_at_inference():
    head = make_head()
    dropped = with_dropout(head, 0.5)
    feats = make_feats()
    with torch.no_grad():
        torch.testing.assert_close(dropped(feats, (23, 37)), head(feats, (23, 37)), atol=0, rtol=0)
        torch.testing.assert_close(dropped.forward_reference(feats), head.forward_reference(feats), atol=0, rtol=0)


def test_train_mode_dropout_fast_equals_reference():
    """Dropout2d draws one keep/drop per (image, channel), whatever the query layout, so with the same
    random state the fast path and the formula drop the same channels and agree (as without dropout)."""
    fast_head = with_dropout(make_head().train(), 0.5)
    ref_head = copy.deepcopy(fast_head)
    plain_head = copy.deepcopy(fast_head)
    plain_head.dropout.p = 0.0
    feats = make_feats()
    with torch.no_grad():
        torch.manual_seed(7)
        fast = fast_head(feats, (23, 37))
        torch.manual_seed(7)
        ref = ref_head.forward_reference(feats, (23, 37))
        torch.manual_seed(7)
        points = copy.deepcopy(fast_head).query_points(feats, grid_coords(23, 37, batch=2))
        plain = plain_head(feats, (23, 37))
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)  # as in the train-mode test above
    torch.testing.assert_close(points, ref.flatten(2), atol=1e-4, rtol=1e-4)
    assert (fast - plain).abs().max() > 0.1  # channels were dropped (and the rest scaled by 2)


def test_wrong_channels_raise():
    head = make_head()
    feats = make_feats()
    feats[1] = feats[1][:, :1]
    for call in (head, head.forward_reference):
        with pytest.raises(ValueError, match="channels"):
            call(feats)


# --- the formula, checked by a head that exposes its MLP input --------------------------------------
EXPOSE_SIZES = [(4, 6), (2, 3), (3, 5), (1, 1)]


def exposing_head() -> tuple[IFAHead, list[torch.Tensor]]:
    """A head whose output equals its MLP input [PE(r_1), z_1, ..., PE(r_4), z_4].

    One channel per level and PE 'learned' with d = 4: n = 1 frequency 2^0 = 1, so E = I and
    PE(r) = [r_y, r_x, sin r_y, sin r_x, cos r_y, cos r_x]; 7 inputs per level, 28 in all.
    The first layer is the identity plus 2 (so the ReLU keeps every value >= -2), BatchNorm is
    the identity (eval, mean 0, var 1, eps 0) and the classifier is the identity minus 2.
    Feature maps hold 1 + cell index / 100 (positive, distinct per cell).
    """
    width = 4 * 7
    head = IFAHead([1, 1, 1, 1], width, hidden=(width,), pos_encoding="learned", pos_dim=4, chunk_size=7)
    with torch.no_grad():
        conv, bn = head.hidden[0], head.hidden[1]
        conv.weight.copy_(torch.eye(width)[:, :, None, None])
        conv.bias.fill_(2.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.eps = 0.0
        head.classifier.weight.copy_(torch.eye(width)[:, :, None, None])
        head.classifier.bias.fill_(-2.0)
    feats = [(1 + torch.arange(h * w, dtype=torch.float32) / 100).view(1, 1, h, w) for h, w in EXPOSE_SIZES]
    return head.eval(), feats


def split_levels(out: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Exposed output (..., 28) -> per level (r (..., 2), the sin/cos part (..., 4), z (...))."""
    return [(out[..., 7 * i:7 * i + 2], out[..., 7 * i + 2:7 * i + 6], out[..., 7 * i + 6]) for i in range(4)]


def test_exposing_head_shows_hand_computed_offsets():
    """q = (0.1, -0.7), offsets worked out by hand from r = (q - v) * (h_l, w_l), v the cell centre:
    4x6: y 1.1/2*4 = 2.2 -> row 2, v_y = 0.25, r_y = -0.6; x 0.3/2*6 = 0.9 -> col 0, v_x = -5/6, r_x = 0.8
    2x3: row 1 (v 0.5) r_y = -0.8; col 0 (v -2/3) r_x = -0.1
    3x5: y 1.65 -> row 1 (v 0) r_y = 0.3; x 0.75 -> col 0 (v -0.8) r_x = 0.5
    1x1: the only cell (v = 0): r = q.
    """
    head, feats = exposing_head()
    q = torch.tensor([[[0.1, -0.7]]])
    with torch.no_grad():
        out = head.query_points(feats, q)[0, :, 0]
    expected = [((-0.6, 0.8), (2, 0)), ((-0.8, -0.1), (1, 0)), ((0.3, 0.5), (1, 0)), ((0.1, -0.7), (0, 0))]
    # float32 arithmetic on O(1) values: 1e-5.
    for (r, sincos, z), (r_exp, (row, col)), (_, w_l) in zip(split_levels(out), expected, EXPOSE_SIZES):
        r_exp = torch.tensor(r_exp)
        torch.testing.assert_close(r, r_exp, atol=1e-5, rtol=0)
        torch.testing.assert_close(sincos, torch.cat([r_exp.sin(), r_exp.cos()]), atol=1e-5, rtol=0)
        assert z.item() == pytest.approx(1 + (row * w_l + col) / 100, abs=1e-5)


def test_exposing_head_offsets_match_the_formula_at_random_points():
    """query_points at random points (and the corners): r_l = (q - v_l) * (h_l, w_l) for the cell containing q."""
    head, feats = exposing_head()
    g = torch.Generator().manual_seed(3)
    q = torch.cat([torch.rand(1, 200, 2, generator=g, dtype=torch.float64) * 2 - 1,
                   torch.tensor([[[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]], dtype=torch.float64)], dim=1)
    with torch.no_grad():
        out = head.query_points(feats, q.float())[0].t()  # (N, 28)
    for (r, _, z), (h_l, w_l) in zip(split_levels(out), EXPOSE_SIZES):
        size = torch.tensor([h_l, w_l], dtype=torch.float64)
        cell = torch.minimum(((q[0] + 1) / 2 * size).floor(), size - 1)  # the cell containing q
        centre = -1 + (2 * cell + 1) / size
        torch.testing.assert_close(r.double(), (q[0] - centre) * size, atol=1e-5, rtol=0)
        assert r.abs().max() <= 1 + 1e-5
        expected_z = 1 + (cell[:, 0] * w_l + cell[:, 1]) / 100
        torch.testing.assert_close(z.double(), expected_z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(4, 6), (7, 11), (13, 5)])
def test_exposing_head_grid_offsets_follow_grid_cells(size):
    """On a query grid, forward and forward_reference expose the offsets and cells of `grid_cells`."""
    head, feats = exposing_head()
    h, w = size
    with torch.no_grad():
        outs = [head(feats, size)[0].permute(1, 2, 0), head.forward_reference(feats, size)[0].permute(1, 2, 0)]
    for out in outs:
        for (r, _, z), (h_l, w_l) in zip(split_levels(out), EXPOSE_SIZES):
            ky, ry = grid_cells(h, h_l)
            kx, rx = grid_cells(w, w_l)
            torch.testing.assert_close(r[..., 0], ry[:, None].float().expand(h, w), atol=1e-5, rtol=0)
            torch.testing.assert_close(r[..., 1], rx[None, :].float().expand(h, w), atol=1e-5, rtol=0)
            torch.testing.assert_close(z, 1 + (ky[:, None] * w_l + kx[None, :]).float() / 100, atol=1e-5, rtol=0)


# --- grid_cells ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_query,n_level,cells,offsets", [
    # 8 query centres (2i + 1) / 16 over 2 cells: 4 per cell at -3/4, -1/4, 1/4, 3/4 of a half cell.
    (8, 2, [0, 0, 0, 0, 1, 1, 1, 1], [-0.75, -0.25, 0.25, 0.75] * 2),
    # 5 over 3: level coordinates 0.3, 0.9, 1.5, 2.1, 2.7 -> cells 0, 0, 1, 2, 2; r = 2 * coord - (2k + 1).
    (5, 3, [0, 0, 1, 2, 2], [-0.4, 0.8, 0.0, -0.8, 0.4]),
    # 3 over 1: everything in the single cell.
    (3, 1, [0, 0, 0], [-2 / 3, 0.0, 2 / 3]),
    # 2 over 4: the centres 0.25, 0.75 lie exactly on cell boundaries (level coordinates 1 and 3); the
    # reference's grid_sample rounds the index 0.5 / 2.5 half to even -> the lower cells 0 and 2, r = +1.
    (2, 4, [0, 2], [1.0, 1.0]),
    # Same sizes: identity, zero offsets.
    (4, 4, [0, 1, 2, 3], [0.0] * 4),
])
def test_grid_cells_hand_checked(n_query, n_level, cells, offsets):
    k, r = grid_cells(n_query, n_level)
    assert k.dtype == torch.long and k.tolist() == cells
    torch.testing.assert_close(r.double(), torch.tensor(offsets, dtype=torch.float64), atol=1e-6, rtol=0)


def test_grid_cells_contain_their_queries_and_offsets_lie_in_unit_range():
    for n_query in range(1, 41):
        for n_level in range(1, 41):
            k, r = grid_cells(n_query, n_level)
            i = torch.arange(n_query)
            odd = 2 * i + 1
            # Exact integer check that query centre (2i + 1) / (2 n_query) lies in [k, k + 1] / n_level, and
            # inside (k, k + 1) unless it lies on an edge (where the reference's rounding picks the side).
            assert bool(((2 * n_query * k <= odd * n_level) & (odd * n_level <= 2 * n_query * (k + 1))).all())
            on_edge = (odd * n_level) % (2 * n_query) == 0
            inside = (2 * n_query * k < odd * n_level) & (odd * n_level < 2 * n_query * (k + 1))
            assert bool((inside | on_edge).all())
            assert bool(((r >= -1) & (r <= 1)).all()), (n_query, n_level)
            expected = odd.double() * n_level / n_query - (2 * k + 1)
            torch.testing.assert_close(r.double(), expected, atol=1e-6, rtol=0)


# --- PositionEncoding -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", POSITION_ENCODINGS)
@pytest.mark.parametrize("dim", [12, 24, 72])
def test_position_encoding_widths(kind, dim):
    expected = {"none": 0, "coord": 2, "sine": 2 + dim // 2, "cosine": 2 + dim // 2,
                "fixed": 2 + dim, "learned": 2 + dim}[kind]
    pe = PositionEncoding(kind, dim)
    assert pe.out_dim == expected
    assert pe(torch.rand(5, 7, 2) * 2 - 1).shape == (5, 7, expected)


@pytest.mark.parametrize("kind", ["sine", "cosine", "fixed", "learned"])
@pytest.mark.parametrize("dim", [4, 12, 24, 72])
def test_position_encoding_initial_frequencies(kind, dim):
    n = dim // 4
    freqs = 2.0 ** torch.linspace(0, 6, n)
    emb = PositionEncoding(kind, dim).emb
    assert emb.shape == (2 * n, 2)
    torch.testing.assert_close(emb[:n, 0], freqs)  # first n rows act on y only
    torch.testing.assert_close(emb[n:, 1], freqs)  # next n rows on x only
    assert emb[:n, 1].abs().sum() == 0 and emb[n:, 0].abs().sum() == 0
    if dim == 24:
        torch.testing.assert_close(emb[:6, 0], torch.tensor([1.0, 2 ** 1.2, 2 ** 2.4, 2 ** 3.6, 2 ** 4.8, 64.0]))


def test_position_encoding_values_by_hand():
    # d = 8: n = 2 frequencies 2^linspace(0, 6, 2) = (1, 64); E rows (1,0), (64,0), (0,1), (0,64).
    r = torch.tensor([0.5, -0.25])
    phase = torch.tensor([0.5, 32.0, -0.25, -16.0])
    torch.testing.assert_close(PositionEncoding("learned", 8)(r), torch.cat([r, phase.sin(), phase.cos()]))
    torch.testing.assert_close(PositionEncoding("fixed", 8)(r), torch.cat([r, phase.sin(), phase.cos()]))
    torch.testing.assert_close(PositionEncoding("sine", 8)(r), torch.cat([r, phase.sin()]))
    torch.testing.assert_close(PositionEncoding("cosine", 8)(r), torch.cat([r, phase.cos()]))
    torch.testing.assert_close(PositionEncoding("coord", 8)(r), r)
    assert PositionEncoding("none", 8)(r).shape == (0,)


def test_learned_is_a_parameter_fixed_a_buffer():
    learned = PositionEncoding("learned", 24)
    assert isinstance(learned.emb, nn.Parameter) and learned.emb.requires_grad
    assert [name for name, _ in learned.named_parameters()] == ["emb"]
    for kind in ("fixed", "sine", "cosine"):
        pe = PositionEncoding(kind, 24)
        assert not isinstance(pe.emb, nn.Parameter) and not pe.emb.requires_grad
        assert list(pe.parameters()) == []
        assert [name for name, _ in pe.named_buffers()] == ["emb"]
    head = IFAHead([2] * 4, 3, hidden=(4,), pos_encoding="learned", pos_dim=8)
    assert len({id(pe.emb) for pe in head.pos}) == 4  # each level has its own E


@pytest.mark.parametrize("kind", ["sine", "cosine", "fixed", "learned"])
@pytest.mark.parametrize("dim", [10, 6, 0, -4])
def test_position_encoding_bad_dim(kind, dim):
    with pytest.raises(ValueError, match=rf"multiple of 4.*{dim}"):
        PositionEncoding(kind, dim)


def test_position_encoding_unknown_kind_lists_valid_names():
    with pytest.raises(ValueError) as err:
        PositionEncoding("fourier", 24)
    assert "fourier" in str(err.value)
    for name in POSITION_ENCODINGS:
        assert name in str(err.value)


def test_first_layer_width_is_four_times_c_plus_p():
    head = IFAHead([3, 4, 2, 5], 3, hidden=(6,), pos_encoding="learned", pos_dim=24)
    assert head.hidden[0].in_channels == sum([3, 4, 2, 5]) + 4 * 26
    assert math.prod(head.classifier.weight.shape) == 3 * 6


@pytest.mark.parametrize("kind", POSITION_ENCODINGS)
def test_encoding_phases_stay_float32_under_bf16_autocast(kind):
    """Under CPU bf16 autocast (training with train.cpu_bf16, Predictor precision bf16) the phases r E^T must not be
    rounded to bf16: with frequencies up to 2^6 that moves sin / cos by up to 0.12 (measured), a different encoding
    in training than in fp32 evaluation."""
    torch.manual_seed(0)
    pe = PositionEncoding(kind, 24)
    r = torch.rand(5000, 2) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = pe(r)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, pe(r), rtol=0, atol=0)
