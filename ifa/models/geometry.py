"""Query geometry of the IFA head: where a query lies on each feature level, in the reference code's conventions.

A query point q is in normalised coordinates (y, x) in [-1, 1]; row i of a size-h query grid has centre
y = -1 + (2i + 1) / h (LIIF's make_coord). On a level of n cells the head reads the cell containing q (`cell_index`,
the reference's float32 rule at ties) or, with the ensemble read, the two cells bracketing q per axis
(`ensemble_cells`); the offset r = (q - v) * n to the read cell's centre v is what the position encoding sees. The
centred read (`centred_cells`) places each cell's centre where its feature sits instead (`CENTRE_SHIFT`).
Grid geometry is computed on the host (numpy) so that it never synchronises a device.
"""

from __future__ import annotations

import numpy as np
import torch


def query_centres(n: int) -> np.ndarray:
    """Centres of an n-cell axis in normalised coordinates, float32 (n,): -1 + (2i + 1) / n, evaluated as
    the reference code builds its query grid (LIIF's make_coord: (-1 + 1/n) + (2/n) i in float32), so that
    `cell_index` sees the very values the reference rounds. Host-side numpy (grid geometry never syncs)."""
    half = 1 / n
    return (-1 + half) + (2 * half) * np.arange(n, dtype=np.float32)


def cell_index(q, n):
    """The cell the reference code reads at normalised coordinates q on an axis of n cells (int64, q's shape).

    The reference reads every level with grid_sample(mode="nearest", align_corners=False) in float32:
    index = round-half-to-even((q + 1) * (n / 2) - 0.5), each step rounded to float32 (torch's CPU kernel).
    Inside a cell this is the cell containing q; when q lies on an edge between two cells (a query centre
    on a coarser cell's edge), float rounding picks one of them, the lower one about half the time.
    q is a tensor (n: an int or a tensor broadcastable to q, e.g. (2,) sizes for (y, x) points) or, for
    host-side grid geometry, a float32 numpy array (n: an int); the result has q's kind.
    """
    if isinstance(q, np.ndarray):
        scaled = (q.astype(np.float32) + np.float32(1)) * np.float32(n / 2) - np.float32(0.5)
        return np.clip(np.rint(scaled), 0, n - 1).astype(np.int64)
    n = torch.as_tensor(n, device=q.device)
    scaled = (q.float() + 1) * (n.float() / 2) - 0.5
    return torch.round(scaled).long().clamp(min=0).minimum(n - 1)


def grid_coords(h: int, w: int, device=None) -> torch.Tensor:
    """The centres of an (h, w) query grid as `forward` reads them: (h * w, 2) float32 (y, x), row-major."""
    ys, xs = (torch.from_numpy(query_centres(n)).to(device) for n in (h, w))
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


@torch.compiler.disable  # host-side numpy geometry: eager under torch.compile
def grid_cells(n_query: int, n_level: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis: the level cell read at each query centre, and the offset to its centre.

    Query i of an n_query grid has centre (2i + 1) / (2 n_query) in [0, 1] units; its cell k is
    `cell_index` at `query_centres` (the reference's rule: the containing cell, ties on an edge broken by
    float32 rounding) and the offset is exact, r = (2i + 1) n_level / n_query - (2k + 1), in [-1, 1].
    Returns (k long (n_query,), r float64 (n_query,)); computed on the host, then moved to `device`.
    """
    k = cell_index(query_centres(n_query), n_level)
    r = (2 * np.arange(n_query) + 1) * n_level / n_query - (2 * k + 1)
    return torch.from_numpy(k).to(device), torch.from_numpy(r).to(device)


# Where the centred read places a level's features: CENTRE_SHIFT of a cell up and left of each cell's nominal centre.
# Stride-2 convolutions with symmetric padding centre a stride-S feature on the first pixel of its cell, (S - 1) / 2S
# of a cell before the centre (0.375 at stride 4 to 0.48 at 32); on the shipped paper's IFA the input gradient's
# centre of mass sits 0.47 (stride 4) to 0.89 (stride 8) of a cell before it (tools.resolution_study --centres).
# 0.4 is off the dyadic fractions: no query of a grid a power of two times the level's size is ever equidistant
# from two centres (other sizes can be: row 4 of a 90-row grid on a 12-row level).
CENTRE_SHIFT = 0.4


def centred_cells(q, n, shift: float = CENTRE_SHIFT, exact=None):
    """The centred read along one axis of n cells: the cell whose feature centre (`shift` of a cell before its
    nominal centre, at -1 + (2k + 1 - 2 shift) / n) is nearest q, and the offset to that centre, r = (q - centre) * n:
    in [-1, 1], up to 1 + 2 shift past the last centre (1 - 2 shift before the first).

    q: a float32 tensor; the cell is chosen in float32 as `cell_index` chooses (grid paths pass `query_centres`,
    `query_points` gets the same values from `grid_coords`), so every path reads the same cell at a tie. `exact`:
    the same points in float64 for the offsets (default: q). Returns (k long, r) of q's shape."""
    scaled = (q.float() + 1) * (n / 2) - (0.5 - shift)  # feature centres at the integers
    k = torch.floor(scaled + 0.5).clamp(0, n - 1).long()
    points = q if exact is None else exact
    return k, 2 * ((points + 1) * (n / 2) - (0.5 - shift) - k)


def grid_reads(n_query: int, n_level: int, read: str = "nearest") -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of an n_query grid: the cell read at each query (long) and the offset to the centre it is
    measured from (float64), on the CPU: the paper's nearest read (`grid_cells`) or the centred read
    (`centred_cells`, offsets from the exact centres). The ensemble read's four cells are `ensemble_cells`'."""
    if read == "centred":
        exact = (2 * torch.arange(n_query, dtype=torch.float64) + 1) / n_query - 1
        return centred_cells(torch.from_numpy(query_centres(n_query)), n_level, exact=exact)
    return grid_cells(n_query, n_level)


def ensemble_cells(q, n):
    """LIIF's local ensemble along one axis: the two cells whose centres bracket q on an axis of n cells.

    Returns ((k0, k1) cell indices, (w0, w1) weights, (r0, r1) offsets), each of q's shape: u = (q + 1) n / 2 - 0.5
    is q in cell units (centres at integers), k0 = floor(u), k1 = k0 + 1, both clamped to [0, n - 1]; the weights
    are the linear (area) weights 1 - t and t, t = u - k0 (clamped to [0, 1] at the borders); the offsets are
    (q - centre) * n of the cell actually read, so they lie in [-2, 2]. At a cell centre the cell itself has
    weight 1. q: a tensor or a float64 numpy array (host-side grid geometry); results of q's kind.
    """
    return _bracketing_cells((q + 1) * (n / 2) - 0.5, n)


def _bracketing_cells(u, n):
    """`ensemble_cells` from u, the query in cell units (centres at the integers): a tensor or float64 array."""
    lib = np if isinstance(u, np.ndarray) else torch
    k0 = lib.floor(u)
    t = u - k0
    if lib is np:
        k0 = k0.astype(np.int64)
        t = np.clip(np.where(u < 0, 0.0, np.where(u > n - 1, 1.0, t)), 0.0, 1.0)
        k0c, k1c = np.clip(k0, 0, n - 1), np.clip(k0 + 1, 0, n - 1)
    else:
        k0 = k0.long()
        t = torch.where(u < 0, torch.zeros_like(t), torch.where(u > n - 1, torch.ones_like(t), t)).clamp(0, 1)
        k0c, k1c = k0.clamp(0, n - 1), (k0 + 1).clamp(0, n - 1)
    return (k0c, k1c), (1 - t, t), (2 * (u - k0c), 2 * (u - k1c))


@torch.compiler.disable
def offset_classes(offsets: list[torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the rows (or columns) of a query grid that share every given level's offset, hence every encoding.

    offsets: per level (n,) offsets along one axis (none: one class). Returns (class of each row (n,) long,
    one representative row of each class (u,) long), on the CPU (host-side numpy: no device sync). Without
    ties the classes are the offsets' period.
    """
    if not offsets:
        return torch.zeros(n, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    _, ids = np.unique(np.stack([r.cpu().numpy() for r in offsets], axis=1), axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    reps = np.zeros(ids.max() + 1, dtype=np.int64)
    reps[ids] = np.arange(n)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(reps)


def grid_taps(n_query: int, n_level: int, read: str = "nearest"
              ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Along one axis of an n_query grid, what a read takes from a level of n_level cells: [(cell long (n_query,),
    offset float64 (n_query,), weight float64 (n_query,) or None)] on the CPU: one tap without a weight for the
    nearest and centred reads (`grid_reads`), the ensemble read's two weighted taps (`ensemble_cells` at the grid's
    centres, u computed from integers). A query's value is the sum over its row taps and
    column taps of w_row w_col (W_z z + W_pe PE(r_row, r_col))."""
    if read == "ensemble":
        # u of each query centre from integers (exact when the sizes' ratio is a power of two), its fractional part
        # rounded to 1e-12 so that queries at the same phase of a period share their weights and offsets exactly
        # (then the fast path's encoding table is one period), e.g. 32 x 32 classes at full resolution.
        u = (2 * np.arange(n_query, dtype=np.float64) + 1) * n_level / (2 * n_query) - 0.5
        cells, weights, offsets = _bracketing_cells(np.floor(u) + np.round(u - np.floor(u), 12), n_level)
        return [(torch.from_numpy(k), torch.from_numpy(r), torch.from_numpy(w))
                for k, w, r in zip(cells, weights, offsets)]
    k, r = grid_reads(n_query, n_level, read)
    return [(k, r, None)]

