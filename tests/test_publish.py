"""tools.publish end to end against the loopback Hub (tests/hub_server.py): a pair's models to model repos
(weights through LFS), the app to a Space whose registry pins those commits and whose README front matter
names the models and preloads them; then the Space's registry loads both models from that server at the
pinned revisions; the checkout is unchanged."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import SpaceCard

import ifa
from ifa.app.registry import PairCache, read_registry
from ifa.data.classes import get_dataset_info

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub, point_hf_at  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def local_pair(tmp_path) -> Path:
    """Two tiny CamVid-class models in tmp_path and a registry naming them as local folders."""
    info = get_dataset_info("camvid")
    common = dict(backbone="efficientnet_lite0", num_classes=11, class_names=list(info.class_names),
                  dataset="camvid", neck_channels=8)
    torch.manual_seed(0)
    ifa.save_pretrained(ifa.create_model(architecture="fpn", head_channels=8, **common), tmp_path / "tiny-fpn")
    ifa.save_pretrained(ifa.create_model(architecture="ifa", mlp_channels=[16, 8], **common), tmp_path / "tiny-ifa")
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"default": "tiny", "pairs": [{
        "id": "tiny", "title": "CamVid · tiny", "dataset": "camvid", "classes": list(info.class_names),
        "baseline": {"source": "local", "path": str(tmp_path / "tiny-fpn")},
        "ifa": {"source": "local", "path": str(tmp_path / "tiny-ifa")}}]}))
    return registry


def test_publish_models_and_space_then_the_space_loads_the_pinned_models(local_pair, tmp_path, monkeypatch,
                                                                          capsys):
    from tools.publish import main

    readme_before = (ROOT / "README.md").read_bytes()
    registry_before = (ROOT / "checkpoints" / "registry.json").read_bytes()
    with FakeHub() as hub:
        point_hf_at(monkeypatch, hub.url, tmp_path / "hf-cache")
        assert main(["--models", "org", "--space", "org/ifa-explorer", "--registry", str(local_pair)]) == 0
        result = json.loads(capsys.readouterr().out)
        shas = {p[side]["repo_id"]: p[side]["revision"] for p in result["pairs"] for side in ("baseline", "ifa")}
        assert set(shas) == {"org/tiny-fpn", "org/tiny-ifa"}

        # Model repos: config, weights (through LFS) and card at the pinned commits.
        for repo_id, sha in shas.items():
            files = hub.repos[repo_id].commits[sha].files
            assert {"config.json", "model.safetensors", "README.md"} <= set(files)
            assert hashlib.sha256(files["model.safetensors"]).hexdigest() in hub.lfs

        # The Space: the app's files, no weights, a registry of Hub sources at those commits.
        space = hub.repos["spaces/org/ifa-explorer"]
        files = space.commits[space.branches["main"]].files
        assert {"app.py", "ifa/app/ui.py", "requirements.txt", "LICENSE", "README.md", "assets/samples.json",
                "checkpoints/registry.json"} <= set(files)
        assert not any(name.endswith(".safetensors") or name.startswith(("tests/", "runs/")) for name in files)
        sample = next(name for name in files if name.startswith("assets/samples/") and name.endswith(".png"))
        assert hashlib.sha256(files[sample]).hexdigest() in hub.lfs  # binaries went through LFS
        registry_file = tmp_path / "space-registry.json"
        registry_file.write_bytes(files["checkpoints/registry.json"])
        space_registry = read_registry(registry_file)
        spec = space_registry.pairs[space_registry.default]
        assert (spec.baseline.source, spec.baseline.location, spec.baseline.revision) == (
            "hub", "org/tiny-fpn", shas["org/tiny-fpn"])
        card_file = tmp_path / "SPACE_README.md"
        card_file.write_bytes(files["README.md"])
        data = SpaceCard.load(card_file).data
        assert data.models == ["org/tiny-fpn", "org/tiny-ifa"] and data.sdk == "gradio"
        assert data.preload_from_hub == [f"{r} config.json,model.safetensors,README.md {shas[r]}" for r in data.models]

        # The Space's registry loads both models from this server at the pinned commits.
        hub.clear_requests()
        pair = PairCache("cpu").get(spec)
        assert pair.baseline.config.architecture == "fpn" and pair.ifa.config.architecture == "ifa"
        resolved = [path for method, path in hub.requests if "/resolve/" in path]
        assert resolved and all(shas["org/tiny-fpn"] in p or shas["org/tiny-ifa"] in p for p in resolved)
    # The checkout is untouched: the local offline default stays.
    assert (ROOT / "README.md").read_bytes() == readme_before
    assert (ROOT / "checkpoints" / "registry.json").read_bytes() == registry_before
