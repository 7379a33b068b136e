"""README.md's front matter is a Space configuration the Hub accepts (huggingface.co/docs/hub/spaces-config-reference),
read with huggingface_hub's own SpaceCard."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import SpaceCard

ROOT = Path(__file__).resolve().parents[1]
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
            "a10g-largex2", "a10g-largex4", "a100-large"}
ZEROGPU_PYTHONS = {"3.10", "3.12"}  # the versions ZeroGPU's documentation lists


def test_front_matter_is_a_valid_space_config():
    data = SpaceCard.load(ROOT / "README.md").data.to_dict()
    assert data["sdk"] == "gradio" and (ROOT / data["app_file"]).is_file()
    pinned = re.search(r"^gradio(?:\[mcp\])?==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert data["sdk_version"] == pinned
    assert str(data["python_version"]) in ZEROGPU_PYTHONS
    assert 0 < len(data["short_description"]) <= 60
    assert data["colorFrom"] in COLORS and data["colorTo"] in COLORS
    assert data["suggested_hardware"] in HARDWARE
    assert data["license"] == "mit" and (ROOT / "LICENSE").is_file()
    assert "image-segmentation" in data["tags"]
