"""The IFA head (Hu et al., ECCV 2022): an implicit function of multi-level features and offsets.

Conventions: feature levels are a list of maps (B, C, h_l, w_l), finest first. A query point q is
in normalised coordinates (y, x) in [-1, 1]; grid row i of a size-h grid has centre
y = -1 + (2i + 1) / h. For each level the head reads the feature z_l of the cell containing q
(nearest, not interpolated) and the offset r_l = (q - v_l) * (h_l, w_l) to that cell's centre v_l,
so each component of r_l lies in [-1, 1]. When q lies on the edge between two cells, the cell is the
one the reference code's grid_sample picks in float32 (`cell_index`): every path here uses that rule.
The MLP input is [PE(r_1), z_1, ..., PE(r_4), z_4].

Query geometry (cell choice, offsets, grid centres) lives in `ifa.models.geometry`. Ways to evaluate the function:
- generic (training, `query_points`): the first MLP layer is linear, so it is split per level;
  the feature part is projected at each level's own resolution and gathered, and the encoding part is computed
  once per distinct offset (a grid repeats its offsets with a small period).
- fast (`forward` / `decode_features` in eval mode without autograd, every read): the same sums laid out for
  matrix products, BatchNorm folded (`ifa.models.ifa_fast`).
- reference (`forward_reference`): the formula written out, concatenation and all. Tests hold the three equal.

The offset ablation (every or some levels' offsets fed as 0) is a per-call argument, `zeroed=`, of `forward`,
`decode_features`, `inspect`, `query_points` and `forward_reference`, or `offsets_zeroed()` for a block of calls
from one thread; the module itself never changes, so threads may share a head.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_gemm import linear
from .geometry import (
    cell_index,
    centred_cells,
    ensemble_cells,
    grid_cells,
    grid_coords,
    grid_reads,
    grid_taps,
    offset_classes,
    query_centres,
)
from .ifa_fast import folded_layers, inference_rows
from .intermediates import HeadIntermediates

__all__ = ["IFA_READS", "POSITION_ENCODINGS", "IFAHead", "PositionEncoding", "cell_index", "centred_cells",
           "ensemble_cells", "grid_cells", "grid_coords", "grid_reads", "offset_classes", "query_centres"]

POSITION_ENCODINGS = ("none", "coord", "sine", "cosine", "fixed", "learned")
# How the head reads a level at a query: "nearest" (the paper: the cell containing it), or a named variant:
# "ensemble" (LIIF's local ensemble: the four nearest cells, each with its own offset, weighted by area) or
# "centred" (the cell whose feature centre is nearest, with cells centred where their features sit: centred_cells).
IFA_READS = ("nearest", "ensemble", "centred")
# Queries per inference chunk when `chunk_size` is None. CPU: a chunk's buffers (4096 x 1024 floats,
# 16 MB) are reused while warm in cache; 2^11-2^12 were the fastest of 2^10..2^17, about 1.25x faster
# than 2^17 on 1024x2048 inputs (BENCHMARKS.md). GPUs want large chunks (few kernel launches).
_AUTO_CHUNK = {"cpu": 2 ** 12}
# The levels whose offsets are zeroed, per thread and head ({id(head): frozenset}): see IFAHead.offsets_zeroed.
_ZEROED = threading.local()
_AUTO_CHUNK_ACCELERATOR = 2 ** 18


class PositionEncoding(nn.Module):
    """PE(r) for offsets r (..., 2) in (y, x) order -> (..., out_dim).

    E holds n = dim / 4 frequencies 2^linspace(0, 6, n) per axis: rows 0..n-1 act on y, rows
    n..2n-1 on x. 'sine' / 'cosine' give [r, sin(r E^T)] / [r, cos(r E^T)]; 'fixed' and 'learned'
    give [r, sin(r E^T), cos(r E^T)] with E constant or trainable; 'coord' gives r; 'none' nothing.
    """

    def __init__(self, kind: str = "learned", dim: int = 24):
        super().__init__()
        if kind not in POSITION_ENCODINGS:
            raise ValueError(f"unknown position encoding {kind!r}; valid: {', '.join(POSITION_ENCODINGS)}")
        self.kind = kind
        self.dim = dim
        if kind in ("none", "coord"):
            self.out_dim = 0 if kind == "none" else 2
            return
        if dim <= 0 or dim % 4:
            raise ValueError(f"position encoding width must be a positive multiple of 4, got {dim}")
        n = dim // 4
        freqs = 2.0 ** torch.linspace(0, 6, n)
        emb = torch.zeros(2 * n, 2)
        emb[:n, 0] = freqs
        emb[n:, 1] = freqs
        if kind == "learned":
            self.emb = nn.Parameter(emb)
        else:
            self.register_buffer("emb", emb)
        self.out_dim = 2 + (dim if kind in ("fixed", "learned") else dim // 2)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """PE(r) in r's dtype; the phases r E^T are computed in at least float32 even under autocast: with
        frequencies up to 2^6 a bf16 phase would be off by up to 0.25 rad."""
        if self.kind == "none":
            return r[..., :0]
        if self.kind == "coord":
            return r
        precise = torch.promote_types(r.dtype, torch.float32)
        with torch.autocast(r.device.type, enabled=False):
            phase = r.to(precise) @ self.emb.to(precise).t()
            parts = [r.to(precise)]
            if self.kind in ("sine", "fixed", "learned"):
                parts.append(torch.sin(phase))
            if self.kind in ("cosine", "fixed", "learned"):
                parts.append(torch.cos(phase))
            return torch.cat(parts, dim=-1).to(r.dtype)


class _AtCellCentre(nn.Module):
    """A position encoding evaluated at r = 0 whatever the offset: (..., 2) -> (..., out_dim)."""

    def __init__(self, encoding: PositionEncoding):
        super().__init__()
        self.encoding = encoding
        self.out_dim = encoding.out_dim

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.encoding(torch.zeros_like(r))


def _accepts_zeroed(method):
    """Give a head method a keyword `zeroed` (levels, 0-based, whose offsets are fed as 0 during this call)."""
    @functools.wraps(method)
    def call(self, *args, zeroed: Sequence[int] = (), **kwargs):
        with self._zeroing(zeroed):
            return method(self, *args, **kwargs)
    return call


class IFAHead(nn.Module):
    """MLP 4(C + P) -> hidden... -> num_classes over aligned multi-level features.

    `in_channels` gives C per level; hidden layers are 1x1 convs + BatchNorm + ReLU (paper:
    512, 256, 256). `dropout` > 0 adds channel dropout (Dropout2d, as Semantic FPN's head) before
    the classifier; the paper has none. Inputs are level maps (B, C_l, h_l, w_l); outputs are logits. Inference
    evaluates queries in chunks of about `chunk_size` (None: 4096 on the CPU, 2^18 on a GPU).
    `read` "ensemble" (a variant, never the paper's) reads each level with LIIF's local ensemble: the level's
    first-layer term is averaged over the four nearest cells, each with its own offset, by area weights
    (`ensemble_cells`), so the head is continuous in the query; `read` "centred" (a variant too) reads the cell
    whose feature centre is nearest, each cell's centre placed where its feature sits (`centred_cells`). Both run
    the generic chunked path, not the fast one.
    """

    def __init__(self, in_channels: list[int], num_classes: int, hidden: tuple[int, ...] = (512, 256, 256),
                 pos_encoding: str = "learned", pos_dim: int = 24, chunk_size: int | None = None,
                 dropout: float = 0.0, read: str = "nearest"):
        super().__init__()
        if not hidden:
            raise ValueError("the IFA MLP needs at least one hidden layer")
        if read not in IFA_READS:
            raise ValueError(f"unknown read {read!r}; valid: {', '.join(IFA_READS)}")
        self.read = read
        self.in_channels = list(in_channels)
        self.pos = nn.ModuleList(PositionEncoding(pos_encoding, pos_dim) for _ in in_channels)
        self.chunk_size = chunk_size
        widths = [sum(c + pe.out_dim for c, pe in zip(in_channels, self.pos)), *hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 1), nn.BatchNorm2d(w_out), nn.ReLU(inplace=True)]
        self.hidden = nn.Sequential(*layers)  # hidden[0] is the first, per-level-split layer
        self.dropout = nn.Dropout2d(dropout)  # identity in eval mode, so inference never applies it
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)

    # --- the offset ablation: per call, per thread; the module is never changed --------------------------------
    @contextmanager
    def offsets_zeroed(self, levels: Sequence[int] | None = None):
        """Within the block, calls from this thread feed every level's offset r (or only those of `levels`,
        0-based) to its position encoding as 0 (such a level contributes its cell's feature and the constant PE(0):
        a coarse level then acts as nearest-cell upsampling, its implicit alignment is off); every path (fast,
        reference, points) sees it. Other threads using the same head are not affected; nothing on the module
        changes. The methods' `zeroed=` argument does the same for one call."""
        chosen = frozenset(range(len(self.pos)) if levels is None else levels)
        if not chosen <= set(range(len(self.pos))):
            raise ValueError(f"levels must lie in 0..{len(self.pos) - 1}, got {sorted(chosen)}")
        table = _ZEROED.__dict__.setdefault("levels", {})
        previous = table.get(id(self))
        table[id(self)] = chosen
        try:
            yield self
        finally:
            if previous is None:
                table.pop(id(self), None)
            else:
                table[id(self)] = previous

    def _zeroing(self, zeroed: Sequence[int]):
        """offsets_zeroed(zeroed) for one call's `zeroed=` argument; nothing when it is empty."""
        return self.offsets_zeroed(zeroed) if zeroed else nullcontext()

    def _encodings(self) -> list[nn.Module]:
        """Each level's position encoding as this thread's calls see it (PE(0) for a zeroed level)."""
        zeroed = getattr(_ZEROED, "levels", {}).get(id(self), frozenset())
        return [_AtCellCentre(pe) if i in zeroed else pe for i, pe in enumerate(self.pos)]

    # --- the first layer, split per level -------------------------------------------------------
    def _split_first_layer(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level (W_pe (D, P), W_z (D, C)) blocks of the first layer's weight."""
        weight = self.hidden[0].weight[:, :, 0, 0]
        blocks, start = [], 0
        for c, pe in zip(self.in_channels, self.pos):
            blocks.append((weight[:, start:start + pe.out_dim], weight[:, start + pe.out_dim:start + pe.out_dim + c]))
            start += pe.out_dim + c
        return blocks

    def level_projections(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """W_z,l z for every cell of every level: list of (B, D, h_l, w_l), at each level's resolution."""
        self._check(feats)
        return [F.conv2d(f, w_z[:, :, None, None]) for f, (_, w_z) in zip(feats, self._split_first_layer())]

    def _encoding_table(self, level: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor | None:
        """W_pe,l PE(r) for offsets rows (a,) x cols (b,) -> (D, a, b); None when P = 0."""
        pe = self._encodings()[level]
        if pe.out_dim == 0:
            return None
        w_pe = self._split_first_layer()[level][0]
        r = torch.stack(torch.broadcast_tensors(rows[:, None], cols[None, :]), dim=-1).to(w_pe.dtype)
        return (pe(r) @ w_pe.t()).permute(2, 0, 1)

    def first_layer_terms(self, feats: list[torch.Tensor], size: tuple[int, int],
                          rows: slice | None = None) -> list[torch.Tensor]:
        """Per level contribution to the first layer's pre-activation on a size-(h, w) query grid.

        Returns a list of (B, D, n_rows, w) tensors, one per level (bias excluded); their sum plus
        the bias is exactly the first layer's output. `rows` restricts to a slice of grid rows.
        """
        projections = self.level_projections(feats)
        return [self._level_term(i, p, size, rows) for i, p in enumerate(projections)]

    def _level_term(self, level: int, projection: torch.Tensor, size: tuple[int, int],
                    rows: slice | None) -> torch.Tensor:
        """Level `level`'s first-layer term on the rows `rows` of a size-(h, w) query grid: (B, D, n_rows, w). Summed
        over the read's taps (`grid_taps`: the nearest or centred cell, or the ensemble's two per axis, weighted) of
        w_row w_col (W_z z of the cell + W_pe PE(r_row, r_col)): the projection gathered (row taps at the level's
        width, then column taps) plus the encodings, one table over the rows' and columns' classes."""
        h, w = size
        h_l, w_l = projection.shape[-2:]
        device = projection.device
        start, stop, _ = (rows or slice(None)).indices(h)
        if (self.read == "nearest" and h % h_l == 0 and w % w_l == 0 and start % (h // h_l) == 0
                and stop % (h // h_l) == 0):
            # Integer ratios (never a tie): cell k holds queries k*s .. k*s + s - 1, and the offsets repeat
            # with period s, so gathering is a broadcast.
            py, px = h // h_l, w // w_l
            (_, ry), (_, rx) = grid_reads(h, h_l), grid_reads(w, w_l)
            table = self._encoding_table(level, ry[:py].to(device), rx[:px].to(device))
            b, d = projection.shape[:2]
            term = projection[:, :, start // py:stop // py, None, :, None]
            if table is not None:
                term = term + table.to(term.dtype)[None, :, None, :, None, :]
            return term.expand(b, d, (stop - start) // py, py, w_l, px).reshape(b, d, stop - start, w)
        row_taps = [(k[start:stop], r[start:stop], None if wt is None else wt[start:stop])
                    for k, r, wt in grid_taps(h, h_l, self.read)]
        col_taps = grid_taps(w, w_l, self.read)

        def weighted(x: torch.Tensor, weight: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
            return x if weight is None else x * weight.to(device, x.dtype).view(shape)

        # One tap per axis: two gathers in the projection's own layout. Weighted taps: channels last, so that the
        # gathers copy whole D-vectors (3x faster for the ensemble read's four than strided NCHW gathers).
        if len(row_taps) == len(col_taps) == 1:
            (ky, _, _), (kx, _, _) = row_taps[0], col_taps[0]
            term = projection.index_select(2, ky.to(device)).index_select(3, kx.to(device))
        else:
            cells = projection.permute(0, 2, 3, 1).contiguous()  # (B, h_l, w_l, D)
            mixed = sum(weighted(cells.index_select(1, k.to(device)), wt, (-1, 1, 1))
                        for k, _, wt in row_taps)  # (B, n_rows, w_l, D)
            term = sum(weighted(mixed.index_select(2, k.to(device)), wt, (-1, 1))
                       for k, _, wt in col_taps).permute(0, 3, 1, 2)  # (B, D, n_rows, w)
        if self.pos[level].out_dim:
            row_ids, row_reps = offset_classes([a for t in row_taps for a in t[1:] if a is not None], stop - start)
            col_ids, col_reps = offset_classes([a for t in col_taps for a in t[1:] if a is not None], w)
            table = 0  # (D, u_y, u_x)
            for _, ry, wy in row_taps:
                for _, rx, wx in col_taps:
                    part = self._encoding_table(level, ry[row_reps].to(device), rx[col_reps].to(device))
                    table = table + weighted(part, None if wy is None else torch.outer(wy[row_reps], wx[col_reps]),
                                             (1, len(row_reps), len(col_reps)))
            table = table.index_select(1, row_ids.to(device)).index_select(2, col_ids.to(device))
            term = term + table.to(term.dtype)[None]
        return term

    def level_term_norms(self, feats: list[torch.Tensor], size: tuple[int, int], budget: int = 2 ** 22
                         ) -> torch.Tensor:
        """(B, L, h, w) float32: the L2 norm over channels of each level's first-layer term (as
        `first_layer_terms` gives them) at every query of a size-(h, w) grid, without building the terms.

        A term is z + e, z = W_z,l z_l of the query's cell and e = W_pe,l PE(r) of its offset, so
        ||z + e||^2 = ||z||^2 + ||e||^2 + 2 z.e: ||z||^2 per cell, ||e||^2 per offset class, z.e by
        `_cross_terms`. Products in float32, the three parts summed in float64: the squared norm is exact to about
        1e-7 x (||z||^2 + ||e||^2), so a term where z and e nearly cancel has a small absolute error, not a small
        relative one (a share map does not see it). Chunks of about `budget` values bound the memory.
        """
        h, w = size
        if self.read != "nearest":  # the terms themselves (no closed form per cell), in row chunks of ~budget values
            with torch.autocast(feats[0].device.type, enabled=False):
                projections = self.level_projections([f.float() for f in feats])
                b, d = projections[0].shape[:2]
                step = max(1, budget // max(1, b * d * w))
                return torch.cat([torch.stack([self._level_term(i, p, size, slice(start, start + step)).norm(dim=1)
                                               for i, p in enumerate(projections)], dim=1)
                                  for start in range(0, h, step)], dim=2)
        norms = []
        with torch.autocast(feats[0].device.type, enabled=False):
            self._check(feats)
            for level, (f, (_, w_z)) in enumerate(zip(feats, self._split_first_layer())):
                device, (b, c, h_l, w_l) = f.device, f.shape
                ky, ry = grid_cells(h, h_l, device)
                kx, rx = grid_cells(w, w_l, device)
                cells = f.float().permute(0, 2, 3, 1).reshape(-1, c)
                z = linear(cells, w_z.float().contiguous(), None, relu=False).view(b, h_l, w_l, -1)  # (B, h_l, w_l, D)
                squared = torch.linalg.vector_norm(z, dim=-1).double().square()[:, ky][:, :, kx]  # (B, h, w)
                if self.pos[level].out_dim:
                    (row_ids, row_reps), (col_ids, col_reps) = offset_classes([ry], h), offset_classes([rx], w)
                    oy, ox = row_ids.to(device), col_ids.to(device)
                    e = self._encoding_table(level, ry[row_reps.to(device)], rx[col_reps.to(device)])
                    e = e.float().permute(1, 2, 0)  # (u_y, u_x, D)
                    squared += torch.linalg.vector_norm(e, dim=-1).double().square()[oy[:, None], ox[None, :]]
                    squared += 2 * self._cross_terms(z, e, (ky, kx), (oy, ox), budget).double()
                norms.append(squared.clamp(min=0).sqrt().float())
        return torch.stack(norms, dim=1)

    @staticmethod
    def _cross_terms(z: torch.Tensor, e: torch.Tensor, cells: tuple[torch.Tensor, torch.Tensor],
                     classes: tuple[torch.Tensor, torch.Tensor], budget: int) -> torch.Tensor:
        """z.e at every query of an (h, w) grid: (B, h, w). z (B, h_l, w_l, D) per cell, e (u_y, u_x, D) per offset
        class; cells / classes: the (h,) and (w,) cell and class indices of the grid's rows and columns.

        Whichever multiplies least: every cell with every class, then read (no waste for integer level ratios);
        or per query row, its cells' z (w_l, D) with its class row's e (u_x, D); or the same per query column.
        """
        (ky, kx), (oy, ox) = cells, classes
        (b, h_l, w_l, d), (u_y, u_x) = z.shape, e.shape[:2]
        h, w = len(ky), len(kx)
        cost = {"all": h_l * w_l * u_y * u_x, "rows": h * w_l * u_x, "columns": w * h_l * u_y}
        way = min(cost, key=cost.get)
        if way == "all" and b * cost["all"] <= budget:
            products = (z.reshape(b, h_l * w_l, d) @ e.reshape(u_y * u_x, d).t()).view(b, h_l, w_l, u_y, u_x)
            return products[:, ky[:, None], kx[None, :], oy[:, None], ox[None, :]]
        transposed = way == "columns"
        if transposed:  # the same computation on the transposed grid
            z, e, ky, kx, oy, ox = z.transpose(1, 2), e.transpose(0, 1), kx, ky, ox, oy
        step = max(1, budget // (b * z.shape[2] * max(d, e.shape[1])))
        cross = torch.cat([torch.einsum("bikd,iod->biko", z[:, ky[i:i + step]], e[oy[i:i + step]])[:, :, kx, ox]
                           for i in range(0, len(ky), step)], dim=1)
        return cross.transpose(1, 2) if transposed else cross

    @_accepts_zeroed
    def inspect(self, feats: list[torch.Tensor], size: tuple[int, int] | None = None) -> HeadIntermediates:
        """On a size-(h, w) query grid (default: the finest level's): each level's first-layer term norm
        (`level_term_norms`), the last hidden features and the logits."""
        size = size if size is not None else tuple(feats[0].shape[-2:])
        features = self.decode_features(feats, size)
        return HeadIntermediates(self.level_term_norms(feats, size), features, self.classifier(self.dropout(features)))

    # --- fast evaluation ------------------------------------------------------------------------
    @_accepts_zeroed
    def decode_features(self, feats: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """Last hidden features on a size-(h, w) query grid (default: the finest level's): (B, D_last, h, w).

        Inference evaluates the grid in row chunks of about `chunk_size` queries (bounded memory);
        training evaluates it whole so BatchNorm sees the full batch.
        """
        h, w = size if size is not None else feats[0].shape[-2:]
        if self._inference():
            out = None
            for start, stop, x in self._inference_rows(feats, (h, w)):
                if out is None:
                    out = x.new_empty(x.shape[0], x.shape[-1], h, w)
                out[:, :, start:stop] = x.permute(0, 3, 1, 2)
            return out
        projections = self.level_projections(feats)
        step = h if self.training else max(1, self._chunk_queries(feats[0].device) // max(w, 1))
        chunks = []
        for start in range(0, h, step):
            rows = slice(start, min(h, start + step))
            pre = sum(self._level_term(i, p, (h, w), rows) for i, p in enumerate(projections))
            pre = pre + self.hidden[0].bias.to(pre.dtype)[None, :, None, None]
            chunks.append(self.hidden[1:](pre))
        return torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0]

    @_accepts_zeroed
    def forward(self, feats: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits on a size-(h, w) query grid (default: the finest level's grid): (B, K, h, w)."""
        if not self._inference():
            return self.classifier(self.dropout(self.decode_features(feats, size)))
        h, w = size if size is not None else feats[0].shape[-2:]
        out = None
        for start, stop, x in self._inference_rows(feats, (h, w)):
            weight = self.classifier.weight[:, :, 0, 0].to(x.dtype)
            logits = linear(x.flatten(0, 2), weight, self.classifier.bias.to(x.dtype), relu=False)
            if out is None:
                out = x.new_empty(x.shape[0], weight.shape[0], h, w)
            out[:, :, start:stop] = logits.view(*x.shape[:3], -1).permute(0, 3, 1, 2)
        return out

    @_accepts_zeroed
    def query_points(self, feats: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Logits at arbitrary points: coords (B, N, 2) normalised (y, x) in [-1, 1] -> (B, K, N).

        Cells follow `cell_index` (the reference's float32 rule). To read a grid exactly as `forward` does,
        pass its centres as `query_centres` builds them (`grid_coords`); exact float64 centres can fall on
        the other side of a tied edge.
        """
        projections = self.level_projections(feats)
        blocks, encodings = self._split_first_layer(), self._encodings()
        outputs = []
        step = coords.shape[1] if self.training else self._chunk_queries(coords.device)  # BN needs the whole batch
        for start in range(0, coords.shape[1], step):
            q = coords[:, start:start + step]
            pre = self.hidden[0].bias[None, :, None]
            for level, (proj, (w_pe, _)) in enumerate(zip(projections, blocks)):
                for cell, r, weight in self._point_reads(q, proj.shape[-2:]):
                    flat = cell[..., 0] * proj.shape[-1] + cell[..., 1]  # (B, n)
                    term = proj.flatten(2).gather(2, flat[:, None, :].expand(-1, proj.shape[1], -1))
                    if encodings[level].out_dim:
                        term = term + (encodings[level](r) @ w_pe.t().to(r.dtype)).transpose(1, 2)
                    pre = pre + (term if weight is None else term * weight[:, None, :].to(term.dtype))
            outputs.append(self.classifier(self.dropout(self.hidden[1:](pre[..., None])))[..., 0])
        return torch.cat(outputs, dim=2)

    def _point_reads(self, q: torch.Tensor, shape) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The cells a level of size `shape` (h_l, w_l) is read at for points q (B, n, 2): [(cell (B, n, 2) long,
        offset r (B, n, 2), weight (B, n) or None)]: the nearest cell (`cell_index`), the centred read's
        (`centred_cells`), or the local ensemble's four (`ensemble_cells`)."""
        size = torch.tensor(tuple(shape), device=q.device)
        if self.read == "centred":
            (ky, ry), (kx, rx) = centred_cells(q[..., 0], shape[0]), centred_cells(q[..., 1], shape[1])
            return [(torch.stack([ky, kx], -1), torch.stack([ry, rx], -1).to(q.dtype), None)]
        if self.read == "nearest":
            cell = cell_index(q, size)
            return [(cell, (q - (-1 + (2 * cell + 1) / size.to(q.dtype))) * size.to(q.dtype), None)]
        (ky, wy, ry), (kx, wx, rx) = ensemble_cells(q[..., 0], shape[0]), ensemble_cells(q[..., 1], shape[1])
        return [(torch.stack([ky[a], kx[b]], -1), torch.stack([ry[a], rx[b]], -1).to(q.dtype), wy[a] * wx[b])
                for a in range(2) for b in range(2)]

    # --- inference: eval mode, no autograd --------------------------------------------------------
    def _inference(self) -> bool:
        """Whether forward / decode_features take the fast inference path (eval mode, autograd off; every read)."""
        return not self.training and not torch.is_grad_enabled()

    def _chunk_queries(self, device: torch.device) -> int:
        """Queries per inference chunk: `chunk_size`, or when None a size chosen for the device."""
        if self.chunk_size is not None:
            return self.chunk_size
        return _AUTO_CHUNK.get(device.type, _AUTO_CHUNK_ACCELERATOR)

    def _inference_rows(self, feats: list[torch.Tensor], size: tuple[int, int]):
        """ifa.models.ifa_fast.inference_rows with this head's folded layers and (possibly zeroed) encodings."""
        self._check(feats)
        return inference_rows(feats, size, folded_layers(self.hidden), self._encodings(),
                              self._chunk_queries(feats[0].device), self.read)

    # --- the formula, written out ---------------------------------------------------------------
    @_accepts_zeroed
    def forward_reference(self, feats: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """The straightforward formula: gather, encode, concatenate 4(C + P) channels, run the MLP. With the
        ensemble read: per level and per each of its four cells the [PE(r), z] vector times the level's block of the
        first layer, weighted by area and summed, then the rest of the MLP."""
        self._check(feats)
        h, w = size if size is not None else feats[0].shape[-2:]
        device = feats[0].device
        if self.read == "ensemble":
            return self._ensemble_reference(feats, (h, w))
        q32 = grid_coords(h, w, device)
        ys = -1 + (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h
        xs = -1 + (2 * torch.arange(w, device=device, dtype=torch.float64) + 1) / w
        q = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2), exact centres
        parts = []
        for f, pe in zip(feats, self._encodings()):
            size_l = torch.tensor(f.shape[-2:], device=device)
            if self.read == "centred":
                (ky, ry), (kx, rx) = (centred_cells(q32[:, i], f.shape[-2 + i], exact=q[:, i]) for i in (0, 1))
                cell, r = torch.stack([ky, kx], -1), torch.stack([ry, rx], -1).to(f.dtype)
            else:
                cell = cell_index(q32, size_l)  # the reference's choice, from its float32 centres
                centre = -1 + (2 * cell + 1) / size_l.double()
                r = ((q - centre) * size_l).to(f.dtype)
            z = f[:, :, cell[:, 0], cell[:, 1]]  # (B, C, N)
            parts += [pe(r).t()[None].expand(f.shape[0], -1, -1), z]
        x = torch.cat(parts, dim=1)[..., None]  # (B, 4(C + P), N, 1)
        return self.classifier(self.dropout(self.hidden(x))).view(x.shape[0], -1, h, w)

    def _ensemble_reference(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        device, batch = feats[0].device, feats[0].shape[0]
        ys = -1 + (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h
        xs = -1 + (2 * torch.arange(w, device=device, dtype=torch.float64) + 1) / w
        q = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2) exact centres
        first = self.hidden[0]
        weight, pre, col = first.weight[:, :, 0, 0], first.bias[None, :, None], 0
        for f, pe in zip(feats, self._encodings()):
            width = pe.out_dim + f.shape[1]
            block = weight[:, col:col + width]  # (D, P + C): the level's part of the first layer
            col += width
            (ky, wy, ry), (kx, wx, rx) = ensemble_cells(q[:, 0], f.shape[-2]), ensemble_cells(q[:, 1], f.shape[-1])
            for a in range(2):
                for b in range(2):
                    r = torch.stack([ry[a], rx[b]], -1).to(f.dtype)
                    x = torch.cat([pe(r).t()[None].expand(batch, -1, -1), f[:, :, ky[a], kx[b]]], dim=1)
                    pre = pre + (wy[a] * wx[b]).to(f.dtype) * (block @ x)
        out = self.hidden[1:](pre[..., None])
        return self.classifier(self.dropout(out)).view(batch, -1, h, w)

    def _check(self, feats: list[torch.Tensor]) -> None:
        channels = [f.shape[1] for f in feats]
        if channels != self.in_channels:
            raise ValueError(f"IFA head expects levels with {self.in_channels} channels, got {channels}")
