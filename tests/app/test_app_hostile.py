"""Hostile and unusual input, kept from the review of issue 29 (loopback only, the app launched once, small images,
a bounded number of cases); every case is followed by a normal request that must still work.

- One image pipeline: the same unusual files (16-bit grayscale PNG, half-transparent RGBA, CMYK JPEG, palette PNG)
  sent to /segment, to /compare_models (the stateless tool, also the MCP tool) as a file and as a data: URL, and
  picked as a sample give identical label maps and notices; a PNG declaring 169 Mpx (a bomb: a few hundred bytes)
  is refused by each with the same one-line message, from its header.
- Strict parameters: flip as a string, /probe with x="abc", unknown class names, a label sent with a sample, a label
  mostly out of range, and the session endpoints before any run, each answered in one line.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import LaunchedApp, app_env
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
W, H = 96, 64
UNUSUAL = ("gray16.png", "rgba.png", "cmyk.jpg", "palette.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _scene() -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 255 // (W - 1), y * 255 // (H - 1), (x * y) % 256], -1).astype(np.uint8)


def write_files(folder: Path) -> dict[str, Path]:
    """The unusual files, and the bomb: a PNG header declaring 13000 x 13000 RGB pixels over a tiny IDAT."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = _scene()
    gray = (np.linspace(0, 65535, W)[None, :] * np.linspace(0.2, 1, H)[:, None]).astype(np.uint16)
    Image.fromarray(gray).save(folder / "gray16.png")  # mode I;16: a 16-bit grayscale PNG
    rgba = np.dstack([scene, np.full((H, W), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(scene).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(scene).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(folder / "palette.png")
    bomb = folder.parent / "bomb" / "bomb.png"  # not in the samples folder: the gallery would only refuse it
    bomb.parent.mkdir(exist_ok=True)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 2, 0, 0, 0))
                     + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""))
    files = {name: folder / name for name in UNUSUAL}
    files["bomb.png"] = bomb
    return files


@pytest.fixture(scope="module")
def hostile(pair_registry, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    files = write_files(folder / "samples")
    app = LaunchedApp(app_env(pair_registry[0], folder / "samples", tmp_path_factory.mktemp("dl")))
    yield app, files, pair_registry[1]
    app.close()


def data_url(path: Path) -> dict:
    """A file payload carrying a data: URL (what an HTTP API client sends instead of an upload)."""
    kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    url = f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()
    return {"url": url, "path": None, "meta": {"_type": "gradio.FileData"}}


def segment(client, pair, image=None, sample=None, ground_truth=None, flip=False, classes=None):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)) if image else None,
                          handle_file(str(ground_truth)) if ground_truth else None, sample, pair, ["1.0"], flip,
                          "stride4", 0.5, classes, 64, api_name="/segment")


def from_segment(out) -> tuple[dict, list[str]]:
    """({tag: label map}, notices) of a /segment answer."""
    maps = {}
    for path in out[-1]:
        tag = "semantic-fpn" if "semantic-fpn" in Path(path).name else "fpn-ifa"
        maps[tag] = np.asarray(Image.open(path))
    return maps, out[-3]["notices"]


def from_tool(answer: str) -> tuple[dict, list[str]]:
    document = json.loads(answer)
    maps = {tag: np.asarray(Image.open(io.BytesIO(base64.b64decode(v)))) for tag, v in document["label_maps"].items()}
    return maps, document["summary"]["notices"]


def tool(client, image_payload, flip=False):
    return client.predict(image_payload, None, "", ["1.0"], flip, "stride4", "", api_name="/compare_models")


def one_line(err: BaseException, *needles: str) -> str:
    text = str(err)
    assert "Traceback" not in text and "upstream" not in text.lower() and "\n" not in text.strip(), text
    assert all(n.lower() in text.lower() for n in needles), text
    return text


def good(app, pair, small_image) -> None:
    out = segment(app.client, pair, image=small_image)
    assert out[-3]["size"] == {"height": 120, "width": 160}


def test_every_entry_point_sees_the_same_image(hostile, small_image):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    app, files, pair = hostile
    for name in UNUSUAL:
        path = files[name]
        answers = {"segment": from_segment(segment(app.client, pair, image=path)),
                   "sample": from_segment(segment(app.client, pair, sample=f"samples/{name}")),
                   "compare_models": from_tool(tool(app.client, handle_file(str(path)))),
                   "compare_models data: URL": from_tool(tool(app.client, data_url(path)))}
        maps, notices = answers["segment"]
        assert maps["semantic-fpn"].shape == (H, W)
        for where, (other_maps, other_notices) in answers.items():
            for tag in ("semantic-fpn", "fpn-ifa"):
                assert np.array_equal(other_maps[tag], maps[tag]), (name, where, tag)
            assert other_notices == notices, (name, where)
        good(app, pair, small_image)
    messages = set()
    for label, call in (("segment", lambda: segment(app.client, pair, image=files["bomb.png"])),
                        ("compare_models", lambda: tool(app.client, handle_file(str(files["bomb.png"])))),
                        ("data: URL", lambda: tool(app.client, data_url(files["bomb.png"])))):
        start = time.perf_counter()
        with pytest.raises(AppError) as err:
            call()
        assert time.perf_counter() - start < 10, label  # refused from the header, not after a decode
        messages.add(re.sub(r"image '[^']*'", "image", one_line(err.value, "169 Mpx")))  # a data: URL has no name
        good(app, pair, small_image)
    assert len(messages) == 1, messages


def test_parameters_are_parsed_strictly(hostile, small_image, tmp_path):
    from gradio_client.exceptions import AppError

    app, files, pair = hostile
    # Session endpoints before any run: one line saying what to do.
    fresh = app.new_client()
    for endpoint, args in (("/render", (0.5, None, 64)), ("/probe", (3, 3)), ("/analyse", ()),
                           ("/alignment_ablation", ())):
        with pytest.raises(AppError) as err:
            fresh.predict(*args, api_name=endpoint)
        one_line(err.value, "run a segmentation first")
    good(app, pair, small_image)
    # Booleans from strings: "false" is false, "maybe" is refused.
    assert segment(app.client, pair, image=small_image, flip="false")[-3]["options"]["flip"] is False
    assert json.loads(tool(app.client, data_url(small_image), flip="false"))["summary"]["options"]["flip"] is False
    with pytest.raises(AppError) as err:
        segment(app.client, pair, image=small_image, flip="maybe")
    one_line(err.value, "flip must be true or false")
    good(app, pair, small_image)
    # /probe with a coordinate that is not a number.
    with pytest.raises(AppError) as err:
        app.client.predict("abc", 3, api_name="/probe")
    one_line(err.value, "x must be a number")
    assert app.client.predict(5, 6, api_name="/probe")[-2:] == (5, 6)
    # Unknown class names: a notice naming them and the valid ones; the known ones are coloured.
    out = segment(app.client, pair, image=small_image, classes=["Road", "Dragons"])
    assert "unknown class name(s) ignored: 'Dragons'" in out[0] and "Pedestrian" in out[0]
    good(app, pair, small_image)
    # A label sent with a sample is not used, and said so.
    label = tmp_path / "label.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(label)
    out = segment(app.client, pair, sample="samples/rgba.png", ground_truth=label)
    assert any("label sent with the sample is ignored" in n for n in out[-3]["notices"])
    assert not out[-3]["has_ground_truth"]
    good(app, pair, small_image)
    # A label mostly out of the pair's range is not scored (ifa.data.images' format check), with a notice.
    mostly_out = np.full((H, W), 200, np.uint8)
    mostly_out[:, : W // 10] = 1
    Image.fromarray(mostly_out).save(label)
    out = segment(app.client, pair, image=files["rgba.png"], ground_truth=label)
    assert not out[-3]["has_ground_truth"] and any("ground truth not used" in n for n in out[-3]["notices"])
    good(app, pair, small_image)
    # A URL that is neither an upload nor a data: URL, and a malformed data: URL.
    for payload, needle in (({"url": "data:image/png;base64,@@@", "path": None, "meta": {"_type": "gradio.FileData"}},
                             "base64"),):
        with pytest.raises(AppError) as err:
            tool(app.client, payload)
        one_line(err.value, needle)
        good(app, pair, small_image)
