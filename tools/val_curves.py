"""Val mIoU curves of training runs side by side, and each group's mean +- std over its runs (seeds).

python -m tools.val_curves fpn=runs/camvid-effl0-fpn,runs/camvid-effl0-fpn-seed1 ifa=runs/camvid-effl0-ifa,...

Reads each run's metrics.jsonl (the `val_mIoU` records `ifa.train` writes every eval_interval) and
prints a markdown table: one column per run, one row per evaluated iteration, then one line per group
at the last iteration all of its runs have reached (so runs still training compare fairly).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def val_curve(run: Path) -> dict[int, float]:
    """{iteration: val mIoU} from run/metrics.jsonl; the last record wins for a repeated iteration."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run} a training run folder?")
    curve = {}
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "val_mIoU" in record:
            curve[int(record["iter"])] = float(record["val_mIoU"])
    return curve


def mean_std(values: list[float]) -> str:
    """'mean +- sample std (n runs)'; the std is left out for a single run."""
    if len(values) == 1:
        return f"{values[0]:.2f} (1 run)"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f} ({len(values)} runs)"


def report(groups: dict[str, list[Path]]) -> str:
    """Markdown table of every run's curve, then each group's val mIoU as mean +- std at the last
    iteration all of the group's runs have evaluated."""
    curves = {run: val_curve(run) for runs in groups.values() for run in runs}
    iters = sorted({i for curve in curves.values() for i in curve})
    lines = ["| iteration | " + " | ".join(Path(r).name for r in curves) + " |",
             "|---:|" + "---:|" * len(curves)]
    for i in iters:
        cells = (f"{curve[i]:.2f}" if i in curve else "" for curve in curves.values())
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, runs in groups.items():
        common = set.intersection(*(set(curves[r]) for r in runs))
        if not common:
            lines.append(f"- {name}: no iteration evaluated in every run yet")
            continue
        last = max(common)
        lines.append(f"- {name}: val mIoU at iteration {last} {mean_std([curves[r][last] for r in runs])}")
    return "\n".join(lines)


def parse_group(text: str) -> tuple[str, list[Path]]:
    name, sep, runs = text.partition("=")
    if not sep or not name or not runs:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN[,RUN...], got {text!r}")
    return name, [Path(r) for r in runs.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", type=parse_group, help="NAME=RUN[,RUN...] (run folders)")
    try:
        print(report(dict(parser.parse_args(argv).groups)))
    except FileNotFoundError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
