"""The IFA head's inference fast path: the same function as `IFAHead.decode_features` in eval mode (every read),
laid out for matrix products.

Queries are rows of (queries, channels) matrices. BatchNorm is folded into the 1x1 layers (`folded_layers`); the
first layer's pre-activation starts from one table of all levels' encoding terms (+ bias), periodic over the
query grid, then each level's projection is added: computed straight into the buffer for a level on the query
grid itself, broadcast for integer size ratios, gathered otherwise; row chunks run through reused buffers, and the
fp32 products go to MKL or oneDNN as `ifa.models.cpu_gemm` chooses. Only Python integers steer it: no host-device
synchronisation. Tests hold it equal to `IFAHead.forward_reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .cpu_gemm import gemm_backend, linear
from .geometry import grid_taps, offset_classes

# Inference sums all levels' encoding terms (and the first bias) into one table over the classes of rows and of
# columns that share every level's offsets (e.g. 8 x 8 on the stride-4 grid, 32 x 32 at full resolution when every
# level's size divides the grid's; 360 x 64 at every pixel of a 360 x 480 image, whose stride-16 level has 23 rows)
# when it takes at most this many bytes; otherwise per-level tables (at most this many bytes in all) or, beyond
# them, each level's term computed per chunk.
_COMBINED_TABLE_BYTES = 64 * 2 ** 20


def _rows(f: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of a level map (B, C, h, w) as (B, (stop - start) w, C): a view when the map is
    contiguous in NCHW or in NHWC (channels_last)."""
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        return f.permute(0, 2, 3, 1)[:, start:stop].reshape(f.shape[0], -1, f.shape[1])
    return f[:, :, start:stop].flatten(2).transpose(1, 2)


# Along one axis, a read's taps (geometry.grid_taps) as the inference path keeps them: [(cell long (n,) on the device,
# offset float64 (n,) on the host, weight (n,) in the compute dtype on the device or None, the same weight float64 on
# the host or None)].
Taps = list


@dataclass
class _GridLevel:
    """One level as the inference path reads it on a query grid (h, w): its map, first-layer blocks and geometry."""

    f: torch.Tensor  # (B, C, h_l, w_l) the level's map
    w_z: torch.Tensor  # (D, C) the first layer's block for the level's features
    w_pe: torch.Tensor  # (D, P) its block for the level's encoding
    pe: nn.Module  # the level's position encoding
    w_l: int  # the level's width
    rows: Taps  # the query rows' taps
    cols: Taps  # the query columns' taps
    on_grid: bool  # the level is the query grid itself (nearest read)
    int_rows: bool  # h is a multiple of h_l and the read is the nearest cell (then no ties: a broadcast)
    int_cols: bool  # w is a multiple of w_l, nearest read
    py: int  # h // h_l
    px: int  # w // w_l
    # The ensemble read when w is a multiple of w_l: per column phase p (columns j * px + p), (p, side, weight of the
    # neighbour cell on that side (-1: left, +1: right), weight of cell j); None otherwise.
    col_phases: list[tuple[int, int, float, float]] | None
    proj: torch.Tensor | None  # (B, h_l, w_l, D) W_z,l z at the level's resolution, channels last; None on the grid


def _on(taps, device, dtype) -> Taps:
    """geometry.grid_taps' taps as `Taps`: cells and weights also on the device (weights in `dtype`)."""
    return [(k.to(device), r, None if w is None else w.to(device, dtype), w) for k, r, w in taps]


def folded_layers(hidden: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each hidden 1x1 conv (+ BatchNorm + ReLU triple of `hidden`) with its BatchNorm's running statistics folded
    in, as (W (out, in), b (out,))."""
    layers = []
    for i in range(0, len(hidden), 3):
        conv, bn = hidden[i], hidden[i + 1]
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        layers.append((conv.weight[:, :, 0, 0] * scale[:, None], (conv.bias - bn.running_mean) * scale + bn.bias))
    return layers


def inference_rows(feats: list[torch.Tensor], size: tuple[int, int], layers: list[tuple[torch.Tensor, torch.Tensor]],
                   encodings: list[nn.Module], chunk_queries: int, read: str = "nearest"):
    """The IFA head's last hidden features on a size-(h, w) query grid, chunk by chunk of about `chunk_queries`
    queries (whole rows): yields (start, stop, x (B, stop - start, w, D_last)); x lives in a buffer that the next
    chunk overwrites.

    feats: the levels (B, C_l, h_l, w_l), finest first; layers: the MLP's hidden layers with BatchNorm folded in
    (`folded_layers`), the first one's columns [W_pe,1 W_z,1 ... W_pe,L W_z,L]; encodings: each level's position
    encoding (a module r (..., 2) -> (..., P_l)); read: how each level is read (`ifa.models.ifa.IFA_READS`). Under
    autocast everything runs in the autocast dtype.
    """
    h, w = size
    device = feats[0].device
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else feats[0].dtype
    with torch.autocast(device.type, enabled=False):
        layers = [(weight.to(dtype), bias.to(dtype)) for weight, bias in layers]
        (w0, b0), rest = layers[0], layers[1:]
        b, d = feats[0].shape[0], w0.shape[0]
        levels, col = [], 0
        for f, pe in zip(feats, encodings):
            f = f.to(dtype)
            w_pe, w_z = w0[:, col:col + pe.out_dim], w0[:, col + pe.out_dim:col + pe.out_dim + f.shape[1]]
            col += pe.out_dim + f.shape[1]
            h_l, w_l = f.shape[-2:]
            nearest = read == "nearest"
            on_grid = nearest and (h_l, w_l) == (h, w)
            levels.append(_GridLevel(
                f=f, w_z=w_z.contiguous(), w_pe=w_pe, pe=pe, w_l=w_l, rows=_on(grid_taps(h, h_l, read), device, dtype),
                cols=_on(grid_taps(w, w_l, read), device, dtype), on_grid=on_grid,
                int_rows=nearest and h % h_l == 0, int_cols=nearest and w % w_l == 0, py=h // h_l, px=w // w_l,
                col_phases=_bilinear_phases(w // w_l) if read == "ensemble" and w % w_l == 0 else None,
                proj=None if on_grid else (_rows(f, 0, h_l) @ w_z.t()).view(b, h_l, w_l, d)))

        def encoding(level, rows, cols):  # sum over the taps of w_row w_col W_pe,l PE(r) at rows x cols: (a, c, D)
            out = 0
            for _, ry, wy, _ in level.rows:
                for _, rx, wx, _ in level.cols:
                    r = torch.stack(torch.broadcast_tensors(ry[rows, None], rx[cols][None, :]), dim=-1)
                    r = r.to(device, torch.promote_types(dtype, torch.float32))  # offsets and phases: >= fp32
                    term = level.pe(r).to(dtype) @ level.w_pe.t()
                    if wy is not None:
                        term = term * (wy[rows.to(device), None] * wx[cols.to(device)][None, :])[..., None]
                    out = out + term
            return out

        def classes(taps_of, n):  # rows (columns) sharing the given levels' offsets and weights: (ids, reps)
            return offset_classes([a for taps in taps_of for tap in taps for a in _geometry(tap)], n)

        def table_bytes(rows, cols):
            return len(rows) * len(cols) * d * w0.element_size()

        # Each level's encoding terms over its own classes of rows and columns (few: its period) while the levels'
        # tables together fit, gathered from there; the rest computed where needed.
        level_terms, spent = {}, 0
        for i, lv in enumerate(levels):
            if lv.pe.out_dim:
                (ids_y, reps_y), (ids_x, reps_x) = classes([lv.rows], h), classes([lv.cols], w)
                if spent + table_bytes(reps_y, reps_x) <= _COMBINED_TABLE_BYTES:
                    spent += table_bytes(reps_y, reps_x)
                    level_terms[i] = (encoding(lv, reps_y, reps_x), ids_y.to(device), ids_x.to(device))

        def level_term(i, rows, cols):  # level i's summed encoding terms at rows x cols (CPU long): (a, c, D)
            if i not in level_terms:
                return encoding(levels[i], rows, cols)
            terms, ids_y, ids_x = level_terms[i]
            return terms.index_select(0, ids_y[rows.to(device)]).index_select(1, ids_x[cols.to(device)])

        # Rows (columns) sharing every level's offset share the summed encoding terms: one table over those
        # classes (+ the bias), gathered per chunk; per-level terms when that table would be large.
        encoded = [i for i, lv in enumerate(levels) if lv.pe.out_dim]
        row_ids, row_reps = classes([levels[i].rows for i in encoded], h)
        col_ids, col_reps = classes([levels[i].cols for i in encoded], w)
        table = None
        if table_bytes(row_reps, col_reps) <= _COMBINED_TABLE_BYTES:
            table = b0.expand(len(row_reps), len(col_reps), d).clone()
            for i in encoded:
                table.add_(level_term(i, row_reps, col_reps))
            row_ids, col_ids = row_ids.to(device), col_ids.to(device)
            level_terms.clear()  # the combined table holds them all
        # Chunks of whole periods of the broadcast levels' rows (when chunks are that tall).
        align = math.lcm(1, *(lv.py for lv in levels if lv.int_rows and lv.int_cols))
        step = max(1, chunk_queries // max(w, 1))
        step = step - step % align if step >= align else step
        widest = max((weight.shape[0] for weight, _ in rest), default=0)
        m_max = b * min(step, h) * w
        work = torch.empty(m_max * (d + 2 * widest), device=device, dtype=dtype)
        for start in range(0, h, step):
            stop = min(h, start + step)
            n, m = stop - start, b * (stop - start) * w
            pre = work[:m * d].view(b, n, w, d)
            if table is not None:
                torch.index_select(table.index_select(0, row_ids[start:stop]), 1, col_ids, out=pre[0])
            else:
                pre[0].copy_(b0.expand(n, w, d))
                for i in encoded:
                    pre[0].add_(level_term(i, torch.arange(start, stop), torch.arange(w)))
            pre[1:].copy_(pre[:1].expand(b - 1, n, w, d))
            for lv in levels:
                py, px, w_l = lv.py, lv.px, lv.w_l
                if lv.on_grid:
                    z = _rows(lv.f, start, stop)
                    # oneDNN reads rows contiguous (NHWC maps); NCHW rows are a transposed view that MKL
                    # packs directly and oneDNN would copy first (40% of the product's time, measured).
                    if z[0].is_contiguous() and gemm_backend(z[0], lv.w_z) == "onednn":
                        for i in range(b):
                            pre[i].view(n * w, d).add_(linear(z[i], lv.w_z, None, relu=False, backend="onednn"))
                    else:
                        pre.view(b, n * w, d).baddbmm_(z, lv.w_z.t().expand(b, -1, -1))
                elif lv.int_rows and lv.int_cols and start % py == 0 and n % py == 0:
                    # Cell (i, j) covers query rows i*py.. and columns j*px..: a broadcast add.
                    pre.view(b, n // py, py, w_l, px, d).add_(lv.proj[:, start // py:stop // py, None, :, None])
                else:
                    rows = None  # (B, n, w_l, D): the row taps mixed at the level's width
                    for ky, _, wy, _ in lv.rows:
                        tap = lv.proj.index_select(1, ky[start:stop])
                        tap = tap if wy is None else tap * wy[start:stop, None, None]
                        rows = tap if rows is None else rows.add_(tap)
                    if lv.col_phases is not None:  # bilinear along the columns: the same two weights every period
                        _add_bilinear_columns(pre.view(b, n, w_l, px, d), rows, lv.col_phases)
                        continue
                    for kx, _, wx, _ in lv.cols:
                        if wx is not None:
                            pre.addcmul_(rows.index_select(2, kx), wx[:, None])
                        elif lv.int_cols:
                            pre.view(b, n, w_l, px, d).add_(rows[:, :, :, None])
                        else:
                            pre.add_(rows.index_select(2, kx))
            x = pre.view(m, d).relu_()
            for i, (weight, bias) in enumerate(rest):
                out = work[m_max * (d + (i % 2) * widest):][:m * weight.shape[0]].view(m, -1)
                x = linear(x, weight, bias, relu=True, out=out)
            yield start, stop, x.view(b, n, w, -1)


def _geometry(tap) -> list[torch.Tensor]:
    """What decides a tap's encoding term along one axis: its offsets, and its weights when it has them (CPU)."""
    _, r, _, w = tap
    return [r] if w is None else [r, w]


def _bilinear_phases(period: int) -> list[tuple[int, int, float, float]]:
    """The ensemble read's column weights on a grid `period` times as wide as the level (`geometry.ensemble_cells`
    at align_corners=False centres): column j * period + p sits f = (p + 0.5) / period - 0.5 cells from cell j's
    centre, so it mixes cell j (weight 1 - |f|) and its neighbour on f's side (|f|); at the borders both are the
    edge cell. [(p, side, |f|, 1 - |f|)]."""
    phases = []
    for p in range(period):
        f = (p + 0.5) / period - 0.5
        phases.append((p, -1 if f < 0 else 1, abs(f), 1 - abs(f)))
    return phases


def _add_bilinear_columns(pre: torch.Tensor, rows: torch.Tensor, phases) -> None:
    """pre (B, n, w_l, period, D) += rows (B, n, w_l, D) interpolated along the columns by `phases`
    (`_bilinear_phases`), the neighbours beyond the edges being the edge cells (the reads' clamping)."""
    left = torch.cat([rows[:, :, :1], rows[:, :, :-1]], dim=2)
    right = torch.cat([rows[:, :, 1:], rows[:, :, -1:]], dim=2)
    for p, side, w_side, w_self in phases:
        target = pre[:, :, :, p]
        target.add_(rows, alpha=w_self)
        if w_side:
            target.add_(left if side < 0 else right, alpha=w_side)

