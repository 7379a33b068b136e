"""What the implicit alignment changes on one image: the IFA model as trained against its offsets zeroed.

Zeroing a level's offsets feeds its position encoding r = 0 at every query: the level then contributes the
feature of the cell the query falls in and the constant PE(0), i.e. nearest-cell upsampling, and its implicit
alignment is off. `ablation_summary` compares the labels as trained with all levels zeroed and with each level
zeroed alone (engine.offset_ablation gives them, from the run's stored head inputs: no backbone pass).

Pure functions of numpy arrays; the verdicts reuse ifa.compare with the zeroed labels as the "before".
"""

from __future__ import annotations

import numpy as np

from ..compare import AGREE, BOTH_WRONG, IFA_BROKE, IFA_FIXED, UNKNOWN, difference_regions, verdict_map
from ..metrics import image_summary
from ..viz.boxes import verdict_image
from .results import Result

# ifa.compare's verdicts, read for "offsets zeroed" (before) -> "as trained" (after).
ABLATION_VERDICTS = {IFA_FIXED: "the offsets fixed it", IFA_BROKE: "the offsets broke it", BOTH_WRONG: "both wrong",
                     UNKNOWN: "no ground truth"}
EXPLAINED = (
    "**Offsets zeroed.** Each level's offset r (where the query lies inside the level's cell) is fed to its "
    "position encoding as 0: the level then contributes its cell's feature and the constant PE(0), i.e. "
    "nearest-cell upsampling; the implicit alignment of that level is off. The IFA model runs as trained and "
    "with every level's offsets zeroed, then with each level's alone, at scale 1, unflipped, on the stride-4 "
    "grid (the analysis' pass, whatever the run's options), from the run's own head inputs. Coloured: the pixels "
    "whose label changes, by who is right (green: the offsets fixed it, red: they broke it); boxed: the largest "
    "such regions.")


def ablation_summary(result: Result, labels: dict[str, np.ndarray], strides: list[int], min_area: int,
                     top_k: int) -> tuple[np.ndarray, dict]:
    """(verdict image (H, W, 3) uint8, summary) of engine.offset_ablation's `labels` for a run.

    summary: "changed_pixels" (percent of scored pixels whose label changes with all offsets zeroed; scored =
    labelled when there is ground truth, else all), "mIoU" {"as_trained", "offsets_zeroed", "change"} (None
    without ground truth; change = zeroed - trained), "levels" (the same per level zeroed alone), "regions"
    and "verdict_pixels".
    """
    trained, zeroed, gt = labels["as trained"], labels["all levels"], result.gt
    scored = gt != 255 if gt is not None else np.ones(trained.shape, bool)
    total = max(int(scored.sum()), 1)

    def figures(other: np.ndarray) -> dict:
        changed = int(((other != trained) & scored).sum())
        out = {"changed_pixel_count": changed, "changed_pixels": round(100 * changed / total, 3)}
        if gt is not None:
            before, after = (image_summary(x, gt, result.class_names)["mIoU"] for x in (trained, other))
            out.update(mIoU=round(after, 3), mIoU_change=round(after - before, 3))
        return out

    regions = difference_regions(zeroed, trained, gt, min_area=min_area, ignore_index=255)
    verdicts = (verdict_map(zeroed, trained, gt) if gt is not None else
                np.where(zeroed != trained, UNKNOWN, AGREE).astype(np.uint8))
    as_trained = image_summary(trained, gt, result.class_names)["mIoU"] if gt is not None else None
    all_levels = figures(zeroed)
    summary = {
        "what": "IFA labels as trained vs with offsets zeroed (scale 1, unflipped, stride-4 grid)",
        "scored_pixels": total, "has_ground_truth": gt is not None,
        "changed_pixels": all_levels["changed_pixels"], "changed_pixel_count": all_levels["changed_pixel_count"],
        "mIoU": None if gt is None else {"as_trained": round(as_trained, 3), "offsets_zeroed": all_levels["mIoU"],
                                         "change": all_levels["mIoU_change"]},
        "levels": [{"level": level, "stride": stride, **figures(labels[f"level {level}"])}
                   for level, stride in enumerate(strides, start=1)],
        "verdict_pixels": {name: int((verdicts == v).sum()) for v, name in ABLATION_VERDICTS.items()},
        "regions": [dict(r.to_dict(), rank=k + 1, verdict_name=ABLATION_VERDICTS[r.verdict],
                         zeroed_class_name=result.class_names[r.baseline_class],
                         trained_class_name=result.class_names[r.ifa_class])
                    for k, r in enumerate(regions[:20])],
        "region_count": len(regions),
    }
    return verdict_image(result.image, verdicts, regions[:top_k]), summary


def ablation_markdown(summary: dict) -> str:
    """The summary in words: changed pixels, mIoU change, one line per level."""
    scope = "labelled pixels" if summary["has_ground_truth"] else "pixels"
    lines = [EXPLAINED, "",
             f"**All levels zeroed:** {summary['changed_pixel_count']:,} pixels change label "
             f"({summary['changed_pixels']:.2f}% of the {scope}; {summary['region_count']} regions)."]
    if summary["mIoU"]:
        m = summary["mIoU"]
        lines[-1] += (f" mIoU on this image {m['as_trained']:.2f} as trained, {m['offsets_zeroed']:.2f} with offsets "
                      f"zeroed ({m['change']:+.2f}).")
    for row in summary["levels"]:
        text = f"- level {row['level']} (stride {row['stride']}) alone: {row['changed_pixels']:.2f}% change"
        if "mIoU_change" in row:
            text += f", mIoU {row['mIoU_change']:+.2f}"
        lines.append(text)
    return "\n".join(lines)
