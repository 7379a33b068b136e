"""Matplotlib figures for the app (Agg, no pyplot state: figures need no closing)."""

from __future__ import annotations

import math

from matplotlib.figure import Figure

BASELINE_COLOR = "#1f77b4"
IFA_COLOR = "#d62728"


def boundary_accuracy_figure(widths, curves: dict[str, list[float]], overall: dict[str, float] | None = None,
                             pixels: list[int] | None = None, title: str | None = None) -> Figure:
    """Accuracy (percent) within w px of a ground-truth boundary, one line per model.

    curves: {model name: [accuracy per width]}; overall: {model name: accuracy over all pixels}
    (dashed reference lines); pixels: scored pixels per width (printed under the axis).
    """
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colors = [BASELINE_COLOR, IFA_COLOR, "#2ca02c", "#9467bd"]
    for (name, values), color in zip(curves.items(), colors):
        ys = [v if v is not None and not math.isnan(v) else float("nan") for v in values]
        ax.plot(widths, ys, marker="o", color=color, label=name)
        if overall and name in overall and not math.isnan(overall[name]):
            ax.axhline(overall[name], color=color, linestyle="--", linewidth=1, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(widths))
    labels = [str(w) if pixels is None else f"{w}\n{_short(n)} px" for w, n in zip(widths, pixels or widths)]
    ax.set_xticklabels(labels)
    ax.set_xlabel("band width w: pixels within w px of a ground-truth boundary")
    ax.set_ylabel("pixel accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9, title="dashed: whole image", title_fontsize=8)
    ax.set_title(title or "Accuracy near ground-truth boundaries", fontsize=11)
    return fig


def _short(n: int) -> str:
    return f"{n / 1000:.0f}k" if n >= 10000 else str(n)
