"""Legends as small HTML snippets (class colours, verdict colours) for the app."""

from __future__ import annotations

from html import escape

from ..compare import BOTH_WRONG, IFA_BROKE, IFA_FIXED, UNKNOWN, VERDICTS
from ..viz.colors import VERDICT_COLORS


def _swatch(color, text: str, dim: bool = False, bold: bool = False) -> str:
    r, g, b = (int(c) for c in color)
    style = "opacity:0.35;" if dim else ""
    weight = "font-weight:600;" if bold else ""
    return (f'<span style="display:inline-flex;align-items:center;margin:2px 10px 2px 0;{style}{weight}">'
            f'<span style="display:inline-block;width:14px;height:14px;border:1px solid #555;'
            f'background:rgb({r},{g},{b});margin-right:4px"></span>{escape(text)}</span>')


def legend_html(class_names, palette, present=None, visible=None) -> str:
    """Class colour legend. Classes in `present` (indices) are bold; classes not `visible` are dimmed."""
    present = set(present) if present is not None else set()
    parts = []
    for index, (name, color) in enumerate(zip(class_names, palette)):
        hidden = visible is not None and not visible[index]
        parts.append(_swatch(color, name + (" (hidden)" if hidden else ""), dim=hidden, bold=index in present))
    note = "<small>bold: predicted or labelled in this image</small>" if present else ""
    return f'<div class="ifa-legend" style="line-height:1.9">{"".join(parts)} {note}</div>'


def verdict_legend_html(with_ground_truth: bool) -> str:
    """Legend of the difference view's colours."""
    if with_ground_truth:
        items = [(VERDICT_COLORS[v], VERDICTS[v]) for v in (IFA_FIXED, IFA_BROKE, BOTH_WRONG, UNKNOWN)]
    else:
        items = [(VERDICT_COLORS[UNKNOWN], "the two models disagree (no ground truth to say who is right)")]
    items.append(((255, 221, 0), "region box (numbered by size)"))
    return f'<div class="ifa-legend" style="line-height:1.9">{"".join(_swatch(c, t) for c, t in items)}</div>'
