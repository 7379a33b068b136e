"""The IFA head's inference fast path: the same function as `IFAHead.decode_features` in eval mode (nearest read),
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
from .geometry import grid_cells, offset_classes

# Inference sums all levels' encoding terms (and the first bias) into one table over the common
# period of their offsets when it has at most this many (row, column) entries (e.g. 8 x 8 on the
# stride-4 grid, 32 x 32 at full resolution); otherwise each level's term is added per chunk.
_COMBINED_TABLE_MAX = 4096


def _rows(f: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of a level map (B, C, h, w) as (B, (stop - start) w, C): a view when the map is
    contiguous in NCHW or in NHWC (channels_last)."""
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        return f.permute(0, 2, 3, 1)[:, start:stop].reshape(f.shape[0], -1, f.shape[1])
    return f[:, :, start:stop].flatten(2).transpose(1, 2)


@dataclass
class _GridLevel:
    """One level as the inference path reads it on a query grid (h, w): its map, first-layer blocks and geometry."""

    f: torch.Tensor  # (B, C, h_l, w_l) the level's map
    w_z: torch.Tensor  # (D, C) the first layer's block for the level's features
    w_pe: torch.Tensor  # (D, P) its block for the level's encoding
    pe: nn.Module  # the level's position encoding
    w_l: int  # the level's width
    ry: torch.Tensor  # (h,) float64 offsets of the query rows, on the CPU
    rx: torch.Tensor  # (w,) float64 offsets of the query columns, on the CPU
    ky: torch.Tensor  # (h,) long cell row of each query row, on the device
    kx: torch.Tensor  # (w,) long cell column of each query column
    on_grid: bool  # the level is the query grid itself
    int_rows: bool  # h is a multiple of h_l (then no ties: a broadcast)
    int_cols: bool  # w is a multiple of w_l
    py: int  # h // h_l
    px: int  # w // w_l
    proj: torch.Tensor | None  # (B, h_l, w_l, D) W_z,l z at the level's resolution, channels last; None on the grid


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
               encodings: list[nn.Module], chunk_queries: int):
    """The IFA head's last hidden features on a size-(h, w) query grid, chunk by chunk of about `chunk_queries`
    queries (whole rows): yields (start, stop, x (B, stop - start, w, D_last)); x lives in a buffer that the next
    chunk overwrites.

    feats: the levels (B, C_l, h_l, w_l), finest first; layers: the MLP's hidden layers with BatchNorm folded in
    (`folded_layers`), the first one's columns [W_pe,1 W_z,1 ... W_pe,L W_z,L]; encodings: each level's position
    encoding (a module r (..., 2) -> (..., P_l)). Under autocast everything runs in the autocast dtype.
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
            ky, ry = grid_cells(h, h_l)
            kx, rx = grid_cells(w, w_l)
            on_grid = (h_l, w_l) == (h, w)
            levels.append(_GridLevel(
                f=f, w_z=w_z.contiguous(), w_pe=w_pe, pe=pe, w_l=w_l, ry=ry, rx=rx, ky=ky.to(device),
                kx=kx.to(device), on_grid=on_grid, int_rows=h % h_l == 0, int_cols=w % w_l == 0,
                py=h // h_l, px=w // w_l,
                proj=None if on_grid else (_rows(f, 0, h_l) @ w_z.t()).view(b, h_l, w_l, d)))

        def encoding(level, rows, cols):  # W_pe,l PE(r) for offsets rows (a,) x cols (c,): (a, c, D)
            r = torch.stack(torch.broadcast_tensors(rows[:, None], cols[None, :]), dim=-1)
            r = r.to(device, torch.promote_types(dtype, torch.float32))  # offsets and phases: >= fp32
            return level.pe(r).to(dtype) @ level.w_pe.t()

        # Rows (columns) sharing every level's offset share the summed encoding terms: one table over
        # those classes (+ the bias), gathered per chunk; per-level terms when the table would be large.
        encoded = [lv for lv in levels if lv.pe.out_dim]
        row_ids, row_reps = offset_classes([lv.ry for lv in encoded], h)
        col_ids, col_reps = offset_classes([lv.rx for lv in encoded], w)
        table = None
        if len(row_reps) * len(col_reps) <= _COMBINED_TABLE_MAX:
            table = b0.expand(len(row_reps), len(col_reps), d).clone()
            for lv in encoded:
                table.add_(encoding(lv, lv.ry[row_reps], lv.rx[col_reps]))
            row_ids, col_ids = row_ids.to(device), col_ids.to(device)
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
                for lv in encoded:
                    pre[0].add_(encoding(lv, lv.ry[start:stop], lv.rx))
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
                    rows = lv.proj.index_select(1, lv.ky[start:stop])  # (B, n, w_l, D)
                    if lv.int_cols:
                        pre.view(b, n, w_l, px, d).add_(rows[:, :, :, None])
                    else:
                        pre.add_(rows.index_select(2, lv.kx))
            x = pre.view(m, d).relu_()
            for i, (weight, bias) in enumerate(rest):
                out = work[m_max * (d + (i % 2) * widest):][:m * weight.shape[0]].view(m, -1)
                x = linear(x, weight, bias, relu=True, out=out)
            yield start, stop, x.view(b, n, w, -1)
