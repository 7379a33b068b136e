"""The app's MCP server (gradio[mcp]) driven by the `mcp` client package over streamable HTTP on loopback:
the stateless tool compares both models on an image given as a data: URL, with its CamVid label, and answers
with every number and the two label maps; the session endpoints are not offered as tools."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import pytest
from conftest import SAMPLE, LaunchedApp, app_env, camvid_label, samples_folder
from PIL import Image


@pytest.fixture(scope="module")
def app(pair_registry, tmp_path_factory):
    launched = LaunchedApp(app_env(pair_registry[0], samples_folder(), tmp_path_factory.mktemp("dl")))
    yield launched
    launched.close()


def data_url(path, size=None) -> str:
    with Image.open(path) as img:
        img = img.resize(size, Image.Resampling.NEAREST) if size else img
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def _session(url: str, work):
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx.AsyncClient(timeout=600) as http, \
            streamable_http_client(url.rstrip("/") + "/gradio_api/mcp/", http_client=http) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)


def test_mcp_tool_compares_both_models_statelessly(app, camvid_val):
    image = camvid_val / SAMPLE
    label = camvid_val.parent / f"{camvid_val.name}annot" / SAMPLE

    async def work(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        args = {"image": data_url(image), "label": data_url(label), "pair_id": "", "scales": ["1.0"],
                "flip": False, "ifa_resolution": "stride4", "label_set": "camvid"}
        return tools, await session.call_tool("compare_models", args)

    tools, answer = asyncio.run(_session(app.url, work))
    assert set(tools) == {"compare_models", "catalog"}  # no session endpoint (they need a client session)
    assert "IFA" in tools["compare_models"].description
    assert not answer.isError, answer.content
    document = json.loads(answer.content[0].text)
    summary = document["summary"]
    assert summary["size"] == {"height": 360, "width": 480} and summary["has_ground_truth"]
    scores = summary["scores"]
    assert set(scores) == {"Semantic FPN", "FPN + IFA"} and all(0 <= s["mIoU"] <= 100 for s in scores.values())
    assert summary["differing_pixels"] >= 0 and len(summary["class_names"]) == 11
    # The two label maps: palette PNGs whose pixels are the class indices the scores were computed from.
    maps = {tag: np.asarray(Image.open(io.BytesIO(base64.b64decode(v)))) for tag, v in document["label_maps"].items()}
    assert set(maps) == {"semantic-fpn", "fpn-ifa"} and all(m.shape == (360, 480) for m in maps.values())
    assert int((maps["semantic-fpn"] != maps["fpn-ifa"]).sum()) == summary["differing_pixels"]
    gt = camvid_label(camvid_val)
    valid = gt != 255
    accuracy = 100 * float((maps["fpn-ifa"][valid] == gt[valid]).mean())
    assert abs(accuracy - scores["FPN + IFA"]["aAcc"]) < 0.01
    assert "result_id" not in summary  # nothing is kept for a later call
