"""Fixtures of the app tests: the model pair, CamVid samples, the app launched once per module.

The model pair is the shipped default (checkpoints/camvid-effl0-fpn + -ifa-lateral-wide, the paper's IFA; registry
checkpoints/registry.json)
when its files exist, else two random-init models of the same architecture written to a temp folder with
a temp registry (IFA_REGISTRY). The terminal summary says which was used.

CamVid val images come from IFA_SAMPLES_DIR (CI: ../shared/data/camvid/val), default that same folder;
outside CI the tests that need them are skipped when it is missing; with CI=true they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("camvid-effl0-fpn", "camvid-effl0-ifa-lateral-wide")
CAMVID_VAL = ROOT.parent / "shared" / "data" / "camvid" / "val"
SAMPLE = "0016E5_07959.png"  # a CamVid val image with its label in valannot/
_USED: list[str] = []


def shipped_pair_present() -> bool:
    return all((ROOT / "checkpoints" / name / "config.json").is_file() for name in SHIPPED)


def _camvid_info():
    from ifa.data.classes import get_dataset_info

    return get_dataset_info("camvid")


def make_random_pair(folder: Path) -> Path:
    """Random-init FPN and IFA models shaped like the shipped pair, and a registry for them."""
    import torch

    import ifa

    info = _camvid_info()
    common = dict(backbone="efficientnet_lite0", num_classes=11, class_names=list(info.class_names),
                  palette=[list(c) for c in info.palette], dataset="camvid", neck_channels=128)
    torch.manual_seed(0)
    ifa.save_pretrained(ifa.create_model(architecture="fpn", head_channels=64, **common), folder / "fpn")
    ifa.save_pretrained(ifa.create_model(architecture="ifa", mlp_channels=[256, 128, 128], **common), folder / "ifa")
    registry = {"default": "camvid-effl0", "pairs": [{
        "id": "camvid-effl0", "title": "CamVid · random-init test pair", "dataset": "camvid",
        "classes": list(info.class_names),
        "baseline": {"source": "local", "path": str(folder / "fpn")},
        "ifa": {"source": "local", "path": str(folder / "ifa")}}]}
    path = folder / "registry.json"
    path.write_text(json.dumps(registry))
    return path


@pytest.fixture(scope="session")
def pair_registry(tmp_path_factory) -> tuple[Path, str]:
    """(registry file, default pair id): the shipped pair when present, else random-init temp models."""
    if shipped_pair_present():
        registry = ROOT / "checkpoints" / "registry.json"
        default = json.loads(registry.read_text())["default"]
        _USED.append(f"the shipped default pair {default} (checkpoints/registry.json)")
        return registry, default
    _USED.append("random-init temp models (the shipped pair checkpoints/camvid-effl0-* is not there yet)")
    return make_random_pair(tmp_path_factory.mktemp("pair")), "camvid-effl0"


def samples_folder() -> Path | None:
    """IFA_SAMPLES_DIR (relative to the project root) or ../shared/data/camvid/val, if it exists."""
    folder = Path(os.environ.get("IFA_SAMPLES_DIR") or CAMVID_VAL)
    folder = (ROOT / folder).resolve() if not folder.is_absolute() else folder
    return folder if folder.is_dir() else None


@pytest.fixture(scope="session")
def camvid_val() -> Path:
    """The CamVid val folder (labels in the sibling valannot/)."""
    folder = samples_folder() or CAMVID_VAL
    if not (folder / SAMPLE).is_file() or not (folder.parent / f"{folder.name}annot" / SAMPLE).is_file():
        message = f"CamVid val images not found at {folder} (set IFA_SAMPLES_DIR)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def small_image(tmp_path_factory) -> Path:
    """A 160 x 120 RGB PNG (a resized shipped CamVid sample): the cheap 'good request' after each bad one."""
    path = tmp_path_factory.mktemp("good") / "good_small.png"
    with Image.open(ROOT / "assets" / "samples" / "camvid" / "0016E5_07959.png") as img:
        img.convert("RGB").resize((160, 120)).save(path)
    return path


def camvid_label(camvid_val: Path, name: str = SAMPLE) -> np.ndarray:
    """Ground truth of a CamVid val image as the app reads it: uint8, 255 where ignored (11 = Unlabelled)."""
    raw = np.asarray(Image.open(camvid_val.parent / f"{camvid_val.name}annot" / name)).astype(np.int64)
    return np.where((raw < 0) | (raw >= 11), 255, raw).astype(np.uint8)


def load_app_module():
    """app.py of the project root, imported by path."""
    if "ifa_app_main" in sys.modules:
        return sys.modules["ifa_app_main"]
    spec = importlib.util.spec_from_file_location("ifa_app_main", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ifa_app_main"] = module
    spec.loader.exec_module(module)
    return module


class LaunchedApp:
    """The app built in this process and served on 127.0.0.1 (prevent_thread_lock), with a gradio_client."""

    def __init__(self, env: dict[str, str]):

        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        app = load_app_module()
        self.demo = app.build_demo()
        self.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False,
                         **app.launch_kwargs())
        self.url = self.demo.local_url
        self.client = self.new_client()

    def new_client(self):
        """A gradio_client session (its own state); generous timeouts for a machine busy with other work."""
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=os.environ["IFA_TEST_DOWNLOADS"],
                      httpx_kwargs={"timeout": 600})

    def close(self) -> None:
        self.demo.close()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def app_env(registry: Path, samples_dir: Path | None, downloads: Path, **extra) -> dict[str, str]:
    env = {"IFA_REGISTRY": str(registry), "IFA_SAMPLES_DIR": str(samples_dir or ""),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "IFA_TEST_DOWNLOADS": str(downloads)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def pytest_terminal_summary(terminalreporter):
    if _USED:
        terminalreporter.write_line(f"app tests ran against: {_USED[0]}")
