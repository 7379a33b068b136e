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


def _full_is_better(folder: Path) -> None:
    """Rewrite the card in `folder` so that its record says the every-pixel query is the better one."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    card.data.ifa = {**card.data.ifa, "resolution": {"stride4": 70.0, "full": 71.5, "images": 101}}
    card.save(folder / "README.md")


def test_every_surface_follows_the_pairs_record(tmp_path, monkeypatch):
    """A pair whose IFA card says every pixel is better: switching to it moves the page's option there (with the
    numbers as its help), the catalog says so, and an API call that names no resolution gets it."""
    import json

    import numpy as np

    from ifa.app import service as S

    monkeypatch.delenv("IFA_SAMPLES_DIR", raising=False)
    shutil.copytree(ROOT_IFA, tmp_path / "ifa")
    _full_is_better(tmp_path / "ifa")
    fpn = ROOT_IFA.parent / "camvid-effl0-fpn"
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"default": "grid", "pairs": [
        {"id": "grid", "title": "grid pair", "dataset": "camvid",
         "baseline": {"source": "local", "path": str(fpn)}, "ifa": {"source": "local", "path": str(ROOT_IFA)}},
        {"id": "every-pixel", "title": "every-pixel pair", "dataset": "camvid",
         "baseline": {"source": "local", "path": str(fpn)}, "ifa": {"source": "local", "path": str(tmp_path / "ifa")}},
    ]}))
    service = S.AppService(registry)
    assert service.default_resolution() == "stride4"
    assert "70.74" in service.default_resolution_info() and "stride-4 grid" in service.default_resolution_info()

    assert "every-pixel query is this pair's default" in service.load_pair("every-pixel").pair_status
    option = service.pair_resolution("every-pixel")
    assert option["value"] == "full" and "71.50 val mIoU against 70.00" in option["info"]
    assert service.pair_resolution("grid")["value"] == "stride4"

    catalog = {p["id"]: p["ifa_resolution"] for p in service.catalog()["pairs"]}
    assert catalog["every-pixel"]["best"] == "full" and catalog["grid"]["best"] == "stride4"

    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    path = tmp_path / "scene.png"
    from PIL import Image

    Image.fromarray(image).save(path)
    answers = {pair: json.loads(service.compare_models(str(path), pair_id=pair))["summary"]["options"]
               for pair in ("grid", "every-pixel")}
    assert answers["grid"]["ifa_resolution"] == "stride4" and answers["every-pixel"]["ifa_resolution"] == "full"


def test_a_hub_pair_not_loaded_is_not_fetched_for_its_record(monkeypatch):
    """The catalog and summaries read a local card; a Hub pair's card is read when the pair loads, never fetched
    for a summary (that would download its weights on a /catalog request)."""
    from ifa.app import engine, registry
    from ifa.app.registry import ModelSource, PairSpec

    def no_download(*args, **kwargs):
        raise AssertionError("a summary must not fetch a Hub repo")

    monkeypatch.setattr(registry, "resolve_checkpoint", no_download)
    spec = PairSpec("hub-pair", "a Hub pair", ModelSource("hub", "org/fpn"), ModelSource("hub", "org/ifa"))
    assert engine.pair_summary(spec)["ifa_resolution"] is None
    local = PairSpec("local-pair", "a local pair", ModelSource("local", str(ROOT_IFA.parent / "camvid-effl0-fpn")),
                     ModelSource("local", str(ROOT_IFA)))
    assert engine.pair_summary(local)["ifa_resolution"]["best"] == "stride4"
