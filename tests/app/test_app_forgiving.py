"""No mistake costs a shown result: a bad side input after a run gives a warning and leaves every output as it was
(the page's chains, service.segment_in_page / attach_label); with nothing shown, the error takes the outputs; the
public /segment stays strict."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

SAMPLE = "CamVid 0016E5_07959 (shops, cyclists)"


def _kept(outputs) -> bool:
    return all(isinstance(o, dict) and o.get("__type__") == "update" and len(o) == 1 for o in outputs)


def test_a_mistake_keeps_the_shown_result(pair_registry, tmp_path, monkeypatch):
    from ifa.app import service as S

    monkeypatch.delenv("IFA_SAMPLES_DIR", raising=False)
    warnings = []
    monkeypatch.setattr(S.gr, "Warning", lambda message, *a, **k: warnings.append(message))
    service = S.AppService(pair_registry[0])
    pair = pair_registry[1]
    shown = service.segment_in_page(None, None, SAMPLE, pair, ["1.0"], False, "stride4", 0.5, None, 16)
    run_id = shown[0]
    assert service.results.get(run_id) is not None

    # Five scales (the server takes four), after a good run: the run stays, a warning says why.
    kept = service.segment_in_page(None, None, SAMPLE, pair, ["0.5", "0.75", "1.0", "1.25", "1.5"], False,
                                   "stride4", 0.5, None, 16, "", run_id)
    assert _kept(kept) and "unchanged" in warnings[-1] and len(kept) == len(S.SEGMENT_OUTPUTS)
    # A broken upload after a good run: the same.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert _kept(service.segment_in_page(str(broken), None, None, pair, ["1.0"], False, "stride4", 0.5, None, 16,
                                         "", run_id))
    # A label of the wrong size attached to the shown run: the run and its scores stay.
    label = tmp_path / "label.png"
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(label)
    assert _kept(service.attach_label(run_id, str(label), 0.5, None, 16, ""))
    assert "ground truth not used" in warnings[-1]
    assert service.results.get(run_id).gt is not None  # the sample's own label is still attached
    # Nothing shown yet: the error takes the outputs (and the public /segment is strict either way).
    with pytest.raises(gr.Error, match="at most 4"):
        service.segment_in_page(None, None, SAMPLE, pair, ["0.5", "0.75", "1.0", "1.25", "1.5"], False, "stride4",
                                0.5, None, 16)
    with pytest.raises(gr.Error):
        service.segment(None, None, SAMPLE, pair, ["0.5", "0.75", "1.0", "1.25", "1.5"], False, "stride4", 0.5,
                        None, 16, "", run_id)
    # A pair switch before any image: nothing to re-run, nothing happens.
    assert _kept(service.segment_in_page(None, None, None, pair, ["1.0"], False, "stride4", 0.5, None, 16))
