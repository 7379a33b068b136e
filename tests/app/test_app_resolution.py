"""Each IFA model's better output resolution on val (its card's ifa.resolution record, tools.resolution_study
--record) is the pair's default: the page starts with it, an API call that gives none gets it, the status says it."""

from __future__ import annotations

import shutil
from pathlib import Path

from ifa.cards import resolution_record

ROOT_IFA = Path(__file__).resolve().parents[2] / "checkpoints" / "camvid-effl0-ifa-lateral-wide"


def test_the_record_decides_the_default(tmp_path):
    from huggingface_hub import ModelCard

    from ifa.app.registry import LoadedPair

    recorded = resolution_record(ROOT_IFA)
    assert recorded is not None and recorded["best"] == ("full" if recorded["full"] >= recorded["stride4"]
                                                         else "stride4")
    copy = tmp_path / "ifa"
    shutil.copytree(ROOT_IFA, copy)
    card = ModelCard.load(copy / "README.md")
    card.data.ifa = {**card.data.ifa, "resolution": {"stride4": 70.0, "full": 71.5, "images": 101}}
    card.save(copy / "README.md")
    assert resolution_record(copy)["best"] == "full"
    pair = LoadedPair.__new__(LoadedPair)
    pair.ifa_resolution = resolution_record(copy)
    assert pair.best_resolution == "full"
    pair.ifa_resolution = None
    assert pair.best_resolution == "stride4"


def test_the_shipped_pair_starts_on_its_best_resolution(pair_registry, monkeypatch):
    from ifa.app import service as S

    monkeypatch.delenv("IFA_SAMPLES_DIR", raising=False)
    service = S.AppService(pair_registry[0])
    spec = service.registry.get(pair_registry[1])
    best = S.engine.load_pair(spec).best_resolution
    assert service.default_resolution() == best
    options, _ = service._options(["1.0"], False, "", spec)
    assert options.ifa_resolution == best
    if S.engine.load_pair(spec).ifa_resolution:
        assert "is this pair's default" in service.preload_default()
