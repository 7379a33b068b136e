"""The IFA head (Hu et al., ECCV 2022): an implicit function of multi-level features and offsets.

Conventions: feature levels are a list of maps (B, C, h_l, w_l), finest first. A query point q is
in normalised coordinates (y, x) in [-1, 1]; grid row i of a size-h grid has centre
y = -1 + (2i + 1) / h. For each level the head reads the feature z_l of the cell containing q
(nearest, not interpolated) and the offset r_l = (q - v_l) * (h_l, w_l) to that cell's centre v_l,
so each component of r_l lies in [-1, 1]. The MLP input is [PE(r_1), z_1, ..., PE(r_4), z_4].

Two evaluations of the same function:
- fast (`forward`, `query_points`): the first MLP layer is linear, so it is split per level; the
  feature part is projected at each level's own resolution and gathered, and the encoding part is
  computed once per distinct offset (a grid repeats its offsets with a small period).
  In eval mode without autograd (inference) `forward` / `decode_features` run a leaner version of
  the same: BatchNorm folded into the 1x1 layers, one combined table of all levels' encoding terms
  (+ bias), channels-last row chunks through matrix products into reused buffers, per-chunk
  classification; no host-device synchronisation (see `_inference_rows`).
- reference (`forward_reference`): the formula written out, concatenation and all. Tests hold the
  two equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POSITION_ENCODINGS = ("none", "coord", "sine", "cosine", "fixed", "learned")
# Inference sums all levels' encoding terms (and the first bias) into one table over the common
# period of their offsets when it has at most this many (row, column) entries (e.g. 8 x 8 on the
# stride-4 grid, 32 x 32 at full resolution); otherwise each level's term is added per chunk.
_COMBINED_TABLE_MAX = 4096
# Queries per inference chunk when `chunk_size` is None. CPU: a chunk's buffers (4096 x 1024 floats,
# 16 MB) are reused while warm in cache; 2^11-2^12 were the fastest of 2^10..2^17, about 1.25x faster
# than 2^17 on 1024x2048 inputs (BENCHMARKS.md). GPUs want large chunks (few kernel launches).
_AUTO_CHUNK = {"cpu": 2 ** 12}
_AUTO_CHUNK_ACCELERATOR = 2 ** 18


def _cell_of(q: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Index of the cell containing normalised coordinates q (..., 2) on a grid of `size` (2,) cells.

    A point exactly on a cell boundary belongs to the upper cell (as in `grid_cells`' exact
    integer rule); the tolerance, a few ulps of the scaled coordinate, absorbs rounding. The
    reference code's grid_sample breaks such ties by float rounding instead: they only occur when
    a query centre falls exactly on a coarser cell's edge (never at its odd 769 / 1024x2048 sizes).
    """
    scaled = (q + 1) / 2 * size
    tolerance = 4 * torch.finfo(q.dtype).eps * size
    return (scaled + tolerance).floor().clamp(min=0).minimum(size - 1)


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
        if self.kind == "none":
            return r[..., :0]
        if self.kind == "coord":
            return r
        phase = r @ self.emb.to(r.dtype).t()
        parts = [r]
        if self.kind in ("sine", "fixed", "learned"):
            parts.append(torch.sin(phase))
        if self.kind in ("cosine", "fixed", "learned"):
            parts.append(torch.cos(phase))
        return torch.cat(parts, dim=-1)


def grid_cells(n_query: int, n_level: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis: the level cell containing each query centre, and the offset to its centre.

    Query i of an n_query grid has centre (2i + 1) / (2 n_query) in [0, 1] units; its cell is
    k = floor((2i + 1) n_level / (2 n_query)) (exact integer arithmetic) and the offset is
    r = (2i + 1) n_level / n_query - (2k + 1), in [-1, 1]. Returns (k long (n_query,), r float (n_query,)).
    """
    odd = 2 * torch.arange(n_query, device=device) + 1
    k = torch.div(odd * n_level, 2 * n_query, rounding_mode="floor").clamp_(max=n_level - 1)
    r = odd.double() * n_level / n_query - (2 * k + 1)
    return k, r


def _rows(f: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of a level map (B, C, h, w) as (B, (stop - start) w, C): a view when the map is
    contiguous in NCHW or in NHWC (channels_last)."""
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        return f.permute(0, 2, 3, 1)[:, start:stop].reshape(f.shape[0], -1, f.shape[1])
    return f[:, :, start:stop].flatten(2).transpose(1, 2)


class IFAHead(nn.Module):
    """MLP 4(C + P) -> hidden... -> num_classes over aligned multi-level features.

    `in_channels` gives C per level; hidden layers are 1x1 convs + BatchNorm + ReLU (paper:
    512, 256, 256). `dropout` > 0 adds channel dropout (Dropout2d, as Semantic FPN's head) before
    the classifier; the paper has none. Inputs are level maps (B, C_l, h_l, w_l); outputs are logits. Inference
    evaluates queries in chunks of about `chunk_size` (None: 4096 on the CPU, 2^18 on a GPU).
    """

    def __init__(self, in_channels: list[int], num_classes: int, hidden: tuple[int, ...] = (512, 256, 256),
                 pos_encoding: str = "learned", pos_dim: int = 24, chunk_size: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("the IFA MLP needs at least one hidden layer")
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
        pe = self.pos[level]
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
        h, w = size
        h_l, w_l = projection.shape[-2:]
        device = projection.device
        ky, ry = grid_cells(h, h_l, device)
        kx, rx = grid_cells(w, w_l, device)
        # Offsets repeat with period h / gcd(h, h_l) rows and w / gcd(w, w_l) columns.
        py, px = h // math.gcd(h, h_l), w // math.gcd(w, w_l)
        table = self._encoding_table(level, ry[:py], rx[:px])
        start, stop, _ = (rows or slice(None)).indices(h)
        if h % h_l == 0 and w % w_l == 0 and start % py == 0 and stop % py == 0:
            # Integer ratios: cell k holds queries k*s .. k*s + s - 1, so gathering is a broadcast.
            b, d = projection.shape[:2]
            term = projection[:, :, start // py:stop // py, None, :, None]
            if table is not None:
                term = term + table.to(term.dtype)[None, :, None, :, None, :]
            return term.expand(b, d, (stop - start) // py, py, w_l, px).reshape(b, d, stop - start, w)
        row_ids = torch.arange(start, stop, device=device)
        term = projection.index_select(2, ky[row_ids]).index_select(3, kx)
        if table is not None:
            table = table.to(term.dtype)[:, row_ids % py]  # (D, n_rows, px)
            b, d, n = term.shape[:3]
            term = (term.view(b, d, n, w // px, px) + table[None, :, :, None, :]).view(b, d, n, w)
        return term

    # --- fast evaluation ------------------------------------------------------------------------
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

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits on a size-(h, w) query grid (default: the finest level's grid): (B, K, h, w)."""
        if not self._inference():
            return self.classifier(self.dropout(self.decode_features(feats, size)))
        h, w = size if size is not None else feats[0].shape[-2:]
        out = None
        for start, stop, x in self._inference_rows(feats, (h, w)):
            weight = self.classifier.weight[:, :, 0, 0].to(x.dtype)
            logits = torch.addmm(self.classifier.bias.to(x.dtype), x.flatten(0, 2), weight.t())
            if out is None:
                out = x.new_empty(x.shape[0], weight.shape[0], h, w)
            out[:, :, start:stop] = logits.view(*x.shape[:3], -1).permute(0, 3, 1, 2)
        return out

    def query_points(self, feats: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """Logits at arbitrary points: coords (B, N, 2) normalised (y, x) in [-1, 1] -> (B, K, N)."""
        projections = self.level_projections(feats)
        blocks = self._split_first_layer()
        outputs = []
        step = coords.shape[1] if self.training else self._chunk_queries(coords.device)  # BN needs the whole batch
        for start in range(0, coords.shape[1], step):
            q = coords[:, start:start + step]
            pre = self.hidden[0].bias[None, :, None]
            for level, (proj, (w_pe, _)) in enumerate(zip(projections, blocks)):
                size = torch.tensor(proj.shape[-2:], device=q.device, dtype=q.dtype)
                cell = _cell_of(q, size)
                r = (q - (-1 + (2 * cell + 1) / size)) * size
                flat = (cell[..., 0] * proj.shape[-1] + cell[..., 1]).long()  # (B, n)
                gathered = proj.flatten(2).gather(2, flat[:, None, :].expand(-1, proj.shape[1], -1))
                pre = pre + gathered
                if self.pos[level].out_dim:
                    pre = pre + (self.pos[level](r) @ w_pe.t().to(r.dtype)).transpose(1, 2)
            outputs.append(self.classifier(self.dropout(self.hidden[1:](pre[..., None])))[..., 0])
        return torch.cat(outputs, dim=2)

    # --- inference: eval mode, no autograd --------------------------------------------------------
    def _inference(self) -> bool:
        """Whether forward / decode_features take the inference path (eval mode, autograd off)."""
        return not self.training and not torch.is_grad_enabled()

    def _chunk_queries(self, device: torch.device) -> int:
        """Queries per inference chunk: `chunk_size`, or when None a size chosen for the device."""
        if self.chunk_size is not None:
            return self.chunk_size
        return _AUTO_CHUNK.get(device.type, _AUTO_CHUNK_ACCELERATOR)

    def _folded_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Eval: each hidden 1x1 conv with its BatchNorm folded in, as (W (out, in), b (out,))."""
        layers = []
        for i in range(0, len(self.hidden), 3):
            conv, bn = self.hidden[i], self.hidden[i + 1]
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            layers.append((conv.weight[:, :, 0, 0] * scale[:, None], (conv.bias - bn.running_mean) * scale + bn.bias))
        return layers

    def _inference_rows(self, feats: list[torch.Tensor], size: tuple[int, int]):
        """Last hidden features on a size-(h, w) grid, chunk by chunk of rows: yields (start, stop,
        x (B, stop - start, w, D_last)); x lives in a buffer that the next chunk overwrites.

        The same function as `decode_features` in eval mode, laid out for matrix products: queries are
        rows of (queries, channels) matrices. The first layer's pre-activation starts from one table
        of the summed encoding terms of all levels and the bias (periodic over the grid), then each
        level's projection is added: computed straight into the buffer for a level on the query grid
        itself, broadcast for integer size ratios, gathered otherwise. Under autocast everything runs
        in the autocast dtype. Only Python integers steer it: no host-device synchronisation.
        """
        self._check(feats)
        h, w = size
        device = feats[0].device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else feats[0].dtype
        with torch.autocast(device.type, enabled=False):
            layers = [(weight.to(dtype), bias.to(dtype)) for weight, bias in self._folded_layers()]
            (w0, b0), rest = layers[0], layers[1:]
            b, d = feats[0].shape[0], w0.shape[0]
            levels, col = [], 0
            for f, pe in zip(feats, self.pos):
                f = f.to(dtype)
                w_pe, w_z = w0[:, col:col + pe.out_dim], w0[:, col + pe.out_dim:col + pe.out_dim + f.shape[1]]
                col += pe.out_dim + f.shape[1]
                h_l, w_l = f.shape[-2:]
                ky, ry = grid_cells(h, h_l, device)
                kx, rx = grid_cells(w, w_l, device)
                on_grid = (h_l, w_l) == (h, w)
                levels.append({
                    "f": f, "w_z": w_z, "w_pe": w_pe, "pe": pe, "ky": ky, "ry": ry, "rx": rx, "kx": kx, "w_l": w_l,
                    "py": h // math.gcd(h, h_l), "px": w // math.gcd(w, w_l), "on_grid": on_grid,
                    "int_rows": h % h_l == 0, "int_cols": w % w_l == 0,
                    # W_z,l z at the level's resolution, channels last: (B, h_l, w_l, D).
                    "proj": None if on_grid else (_rows(f, 0, h_l) @ w_z.t()).view(b, h_l, w_l, d),
                })

            def encoding(level, rows):  # W_pe,l PE(r) for offset rows x the first px columns: (n, px, D)
                r = torch.stack(torch.broadcast_tensors(rows[:, None], level["rx"][None, :level["px"]]), dim=-1)
                return level["pe"](r.to(dtype)) @ level["w_pe"].t()

            encoded = [lv for lv in levels if lv["pe"].out_dim]
            ly = math.lcm(1, *(lv["py"] for lv in encoded))
            lx = math.lcm(1, *(lv["px"] for lv in encoded))
            table = None
            if ly * lx <= _COMBINED_TABLE_MAX:
                table = b0.expand(ly, lx, d).clone()
                for lv in encoded:
                    py, px = lv["py"], lv["px"]
                    table.view(ly // py, py, lx // px, px, d).add_(encoding(lv, lv["ry"][:py])[None, :, None])
            # Chunks of whole periods of the broadcast levels' rows (when chunks are that tall).
            align = math.lcm(1, *(lv["py"] for lv in levels if lv["int_rows"] and lv["int_cols"]))
            step = max(1, self._chunk_queries(device) // max(w, 1))
            step = step - step % align if step >= align else step
            widest = max((weight.shape[0] for weight, _ in rest), default=0)
            m_max = b * min(step, h) * w
            work = torch.empty(m_max * (d + 2 * widest), device=device, dtype=dtype)
            for start in range(0, h, step):
                stop = min(h, start + step)
                n, m = stop - start, b * (stop - start) * w
                pre = work[:m * d].view(b, n, w, d)
                if table is not None:
                    rows = table[torch.arange(start, stop, device=device) % ly]  # (n, lx, D)
                    pre.view(b, n, w // lx, lx, d).copy_(rows[None, :, None])
                else:
                    pre.copy_(b0.expand(b, n, w, d))
                    for lv in encoded:
                        term = encoding(lv, lv["ry"][start:stop])  # (n, px, D)
                        pre.view(b, n, w // lv["px"], lv["px"], d).add_(term[None, :, None])
                for lv in levels:
                    py, px, w_l = lv["py"], lv["px"], lv["w_l"]
                    if lv["on_grid"]:
                        z = _rows(lv["f"], start, stop)
                        pre.view(b, n * w, d).baddbmm_(z, lv["w_z"].t().expand(b, -1, -1))
                    elif lv["int_rows"] and lv["int_cols"] and start % py == 0 and n % py == 0:
                        # Cell (i, j) covers query rows i*py.. and columns j*px..: a broadcast add.
                        pre.view(b, n // py, py, w_l, px, d).add_(lv["proj"][:, start // py:stop // py, None, :, None])
                    else:
                        rows = lv["proj"].index_select(1, lv["ky"][start:stop])  # (B, n, w_l, D)
                        if lv["int_cols"]:
                            pre.view(b, n, w_l, px, d).add_(rows[:, :, :, None])
                        else:
                            pre.add_(rows.index_select(2, lv["kx"]))
                x = pre.view(m, d).relu_()
                for i, (weight, bias) in enumerate(rest):
                    out = work[m_max * (d + (i % 2) * widest):][:m * weight.shape[0]].view(m, -1)
                    x = torch.addmm(bias, x, weight.t(), out=out).relu_()
                yield start, stop, x.view(b, n, w, -1)

    # --- the formula, written out ---------------------------------------------------------------
    def forward_reference(self, feats: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
        """The straightforward formula: gather, encode, concatenate 4(C + P) channels, run the MLP."""
        self._check(feats)
        h, w = size if size is not None else feats[0].shape[-2:]
        device = feats[0].device
        ys = -1 + (2 * torch.arange(h, device=device, dtype=torch.float64) + 1) / h
        xs = -1 + (2 * torch.arange(w, device=device, dtype=torch.float64) + 1) / w
        q = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (N, 2)
        parts = []
        for f, pe in zip(feats, self.pos):
            size_l = torch.tensor(f.shape[-2:], device=device, dtype=torch.float64)
            cell = _cell_of(q, size_l)
            centre = -1 + (2 * cell + 1) / size_l
            r = ((q - centre) * size_l).to(f.dtype)
            z = f[:, :, cell[:, 0].long(), cell[:, 1].long()]  # (B, C, N)
            parts += [pe(r).t()[None].expand(f.shape[0], -1, -1), z]
        x = torch.cat(parts, dim=1)[..., None]  # (B, 4(C + P), N, 1)
        return self.classifier(self.dropout(self.hidden(x))).view(x.shape[0], -1, h, w)

    def _check(self, feats: list[torch.Tensor]) -> None:
        channels = [f.shape[1] for f in feats]
        if channels != self.in_channels:
            raise ValueError(f"IFA head expects levels with {self.in_channels} channels, got {channels}")
