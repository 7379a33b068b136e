"""The UI-service contract: per event, the named outputs a handler returns (a NamedTuple whose field names are the
components' keys in ifa.app.ui). A handler builds its answer by name; `kept()` leaves every output as it is
(gr.skip), and `_replace(name=...)` changes some and keeps the others. Being tuples, the answers are what Gradio
and the API clients already receive, in the same order."""

from __future__ import annotations

from collections import namedtuple

import gradio as gr


class _Outputs:
    __slots__ = ()

    @classmethod
    def kept(cls):
        """Every output left as shown (gr.skip())."""
        return cls(*(gr.skip() for _ in cls._fields))


def _outputs(name: str, fields: tuple[str, ...]) -> type:
    return type(name, (namedtuple(name, fields), _Outputs), {"__slots__": ()})


Views = _outputs("Views", ("notices", "input_view", "gt_view", "baseline_view", "ifa_view", "baseline_time",
                           "ifa_time", "legend", "slider", "diff_view", "verdict_legend", "regions", "scores",
                           "boundary_plot", "summary"))
Segment = _outputs("Segment", ("result_state", *Views._fields, "click_view", "downloads"))
Welcome = _outputs("Welcome", ("sample", "sample_info", *Segment._fields))
Analyse = _outputs("Analyse", ("ifa_levels", "fpn_levels", "ifa_pca", "fpn_pca", "features_md"))
Probe = _outputs("Probe", ("probe_view", "baseline_probs", "ifa_probs", "probe_table", "probe_md", "click_view",
                           "probe_x", "probe_y"))
Ablation = _outputs("Ablation", ("ablation_view", "ablation_md", "ablation_summary"))
Rank = _outputs("Rank", ("rank_table", "rank_gallery", "rank_status", "rank_summary"))
Export = _outputs("Export", ("figure_files", "figure_md"))
Pair = _outputs("Pair", ("pair_status", "classes", "gallery"))
HubPair = _outputs("HubPair", ("pair", "pair_status", "classes", "gallery"))
