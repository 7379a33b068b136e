"""Bad input through the API: a clear error (no traceback) or a clear notice, and the app keeps serving.

Every case is followed by a good request (a small image) that must succeed. The app is launched once for
this module, with IFA_APP_MAX_SIDE=640 so that the 'very large image' case stays cheap.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import LaunchedApp, app_env
from PIL import Image

pytestmark = [pytest.mark.slow,  # gradio's own pandas deprecation notices
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="module")
def app(pair_registry, tmp_path_factory):
    launched = LaunchedApp(app_env(pair_registry[0], None, tmp_path_factory.mktemp("dl"), IFA_APP_MAX_SIDE=640))
    yield launched
    launched.close()


def run(client, pair_id, image=None, sample=None, scales=("1.0",), resolution="stride4", ground_truth=None):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)) if image else None,
                          handle_file(str(ground_truth)) if ground_truth else None, sample, pair_id, list(scales),
                          False, resolution, 0.5, None, 64, api_name="/segment")


def assert_clean_error(err: BaseException, *needles: str) -> None:
    text = str(err)
    assert "Traceback" not in text and 'File "' not in text, text
    assert any(n.lower() in text.lower() for n in needles), text


def good_request(app, pair_id, small_image) -> None:
    out = run(app.client, pair_id, image=small_image)
    assert out[-3]["size"] == {"height": 120, "width": 160}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path) -> None:
    """A valid PNG header declaring 40000 x 40000 pixels (1.6 Gpx) with almost no data: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def raw_png(path: Path, rows: list[bytes], width: int, height: int, bit_depth: int, colour_type: int) -> None:
    """A PNG written by hand (Pillow cannot write 16-bit colour): IHDR, one IDAT of filter-0 rows, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + row for row in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))


def _photo(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) % 256)], -1).astype(np.uint8)


def make(kind: str, folder: Path) -> Path:
    """Write one bad or unusual input file."""
    if kind == "corrupt":
        path = folder / "corrupt.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    elif kind == "not_an_image":
        path = folder / "notes.png"
        path.write_text("this is a text file, not an image\n" * 20)
    elif kind == "empty":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "one_pixel":
        path = folder / "one.png"
        Image.new("RGB", (1, 1), (255, 0, 0)).save(path)
    elif kind == "bomb":
        path = folder / "bomb.png"
        bomb_png(path)
    elif kind == "truncated":
        path = folder / "truncated.jpg"
        Image.fromarray(_photo(320, 240)).save(path, quality=90)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "corrupt_body":  # a valid 200 x 150 RGB header, then pixel data that does not decompress
        path = folder / "corrupt_body.png"
        ihdr = struct.pack(">IIBBBBB", 200, 150, 8, 2, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"broken" * 50)
                         + _png_chunk(b"IEND", b""))
    elif kind == "rgb16":
        path = folder / "rgb16.png"
        photo = _photo(200, 150).astype(">u2") * 257
        raw_png(path, [row.tobytes() for row in photo], 200, 150, 16, 2)
    elif kind == "grayscale":
        path = folder / "gray.png"
        Image.fromarray(_photo(200, 150)[..., 0]).save(path)
    elif kind == "rgba":
        path = folder / "rgba.png"
        rgba = np.dstack([_photo(200, 150), np.full((150, 200), 255, np.uint8)])
        rgba[:40, :, 3] = 0
        Image.fromarray(rgba, mode="RGBA").save(path)
    elif kind == "gray16":
        path = folder / "gray16.png"
        Image.fromarray(_photo(200, 150)[..., 0].astype(np.uint16) * 257).save(path)
    elif kind == "palette":
        path = folder / "palette.gif"
        Image.fromarray(_photo(200, 150)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif kind == "exif_rotated":
        path = folder / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        Image.fromarray(_photo(200, 120)).save(path, exif=exif, quality=90)
    elif kind == "large":
        path = folder / "large.jpg"
        Image.fromarray(_photo(2000, 1500)).save(path, quality=80)
    else:
        raise ValueError(kind)
    return path


REFUSED = [
    ("corrupt", ("cannot be read", "not an image", "damaged")),
    ("not_an_image", ("not an image file",)),
    ("empty", ("empty",)),
    ("one_pixel", ("1 x 1 px", "at least 32 px")),
    ("bomb", ("too many pixels", "Mpx")),
    ("truncated", ("damaged or truncated",)),
    ("corrupt_body", ("damaged or truncated",)),
]
ACCEPTED = [  # (kind, expected working size (h, w), words in the notices)
    ("grayscale", (150, 200), "grayscale"),
    ("rgba", (150, 200), "transparent"),
    ("gray16", (150, 200), "16-bit"),
    ("palette", (150, 200), "palette"),
    ("rgb16", (150, 200), "16-bit colour"),
    ("exif_rotated", (200, 120), "EXIF"),
    ("large", (480, 640), "downscaled from 2000 x 1500"),
]


@pytest.mark.parametrize("kind,needles", REFUSED, ids=[k for k, _ in REFUSED])
def test_refused_file_then_good_request(app, pair_registry, small_image, tmp_path, kind, needles):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        run(app.client, pair_registry[1], image=make(kind, tmp_path))
    assert_clean_error(err.value, *needles)
    good_request(app, pair_registry[1], small_image)


@pytest.mark.parametrize("kind,size,words", ACCEPTED, ids=[k for k, *_ in ACCEPTED])
def test_converted_file_with_notice_then_good_request(app, pair_registry, small_image, tmp_path, kind, size, words):
    out = run(app.client, pair_registry[1], image=make(kind, tmp_path))
    summary = out[-3]
    assert (summary["size"]["height"], summary["size"]["width"]) == size
    if words:
        assert any(words.lower() in n.lower() for n in summary["notices"]), summary["notices"]
        assert words.lower() in out[0].lower()
    with Image.open(out[-1][0]) as labels:
        assert labels.size == (size[1], size[0])
    good_request(app, pair_registry[1], small_image)


def test_bad_options_and_requests_then_good_request(app, pair_registry, small_image, tmp_path):
    from gradio_client.exceptions import AppError

    pair = pair_registry[1]
    cases = [
        (dict(image=small_image, scales=("9",)), ("scales must lie between",)),
        (dict(image=small_image, scales=("0.5", "0.75", "1.0", "1.25", "1.5")), ("at most 4 scales",)),
        (dict(image=small_image, resolution="sharp"), ("'stride4' or 'full'",)),
        (dict(sample="no/such/sample.png"), ("unknown sample",)),
        (dict(), ("no image",)),
    ]
    for kwargs, needles in cases:
        with pytest.raises(AppError) as err:
            run(app.client, pair, **kwargs)
        assert_clean_error(err.value, *needles)
        good_request(app, pair, small_image)
    with pytest.raises(AppError) as err:
        run(app.client, "no-such-pair", image=small_image)
    assert_clean_error(err.value, "unknown model pair")
    good_request(app, pair, small_image)
    # A probe outside the image, and a probe from a session that has not run anything.
    with pytest.raises(AppError) as err:
        app.client.predict(5000, 10, api_name="/probe")
    assert_clean_error(err.value, "outside the 160 × 120 image")
    with pytest.raises(AppError) as err:
        app.new_client().predict(10, 10, api_name="/probe")
    assert_clean_error(err.value, "run a segmentation first")
    # A ground-truth file that does not fit the image is reported and ignored; the run succeeds.
    bad_gt = tmp_path / "gt.png"
    Image.new("L", (50, 300)).save(bad_gt)
    out = run(app.client, pair, image=small_image, ground_truth=bad_gt)
    assert not out[-3]["has_ground_truth"] and any("ground truth not used" in n for n in out[-3]["notices"])
    good_request(app, pair, small_image)
    # A label map with no pixel of the model's classes is reported, not scored as ground truth.
    all_ignore = tmp_path / "all_ignore.png"
    Image.new("L", (160, 120), 11).save(all_ignore)
    out = run(app.client, pair, image=small_image, ground_truth=all_ignore)
    notices = out[-3]["notices"]
    assert not out[-3]["has_ground_truth"] and any("no pixel of the model's 11 classes" in n for n in notices)
    good_request(app, pair, small_image)
    # /render with classes=None (all classes) redraws
    redrawn = app.client.predict(0.7, None, 64, api_name="/render")
    assert redrawn[-1]["size"] == {"height": 120, "width": 160}
    good_request(app, pair, small_image)


def test_hub_pair_errors_are_clear_then_good_request(app, pair_registry, small_image, monkeypatch):
    from gradio_client.exceptions import AppError
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AppError) as err:
        app.client.predict("org/fpn", "", "org/ifa", "", api_name="/load_hub_pair")
    assert_clean_error(err.value, "could not be downloaded (offline or unreachable)")
    assert "HF_HUB_OFFLINE" not in str(err.value)
    with pytest.raises(AppError) as err:
        app.client.predict("not a repo id", "", "", "", api_name="/load_hub_pair")
    assert_clean_error(err.value, "repo id")
    # the shipped folders are not Hub repos: refused (IFA_APP_ALLOW_LOCAL_PAIRS is not set), no server path named
    with pytest.raises(AppError) as err:
        app.client.predict("checkpoints/camvid-effl0-fpn", "", "checkpoints/camvid-effl0-ifa", "",
                           api_name="/load_hub_pair")
    assert_clean_error(err.value, "Hub repo 'checkpoints/camvid-effl0-fpn'")
    assert str(Path.home()) not in str(err.value) and constants.HF_HUB_CACHE not in str(err.value)
    good_request(app, pair_registry[1], small_image)


def test_hub_pair_loads_from_a_hub_and_class_mismatch_is_reported(app, small_image, tmp_path, monkeypatch):
    """Two repos on a loopback Hub (tests/hub_server.py): a matching pair loads and runs at a pinned revision;
    a pair whose models disagree on classes is refused with a clear message."""
    import torch
    from gradio_client.exceptions import AppError
    from hub_server import FakeHub, point_hf_at

    import ifa

    tiny = dict(backbone="efficientnet_lite0", neck_channels=8, dataset="camvid")
    torch.manual_seed(0)
    folders = {}
    variants = (("fpn", "fpn", 3, {"head_channels": 8}), ("ifa", "ifa", 3, {"mlp_channels": [16, 8]}),
                ("ifa4", "ifa", 4, {"mlp_channels": [16, 8]}))
    for name, arch, classes, extra in variants:
        model = ifa.create_model(architecture=arch, num_classes=classes, **tiny, **extra)
        folders[name] = ifa.save_pretrained(model, tmp_path / name)
    with FakeHub() as hub:
        shas = {name: hub.add_folder(f"org/{name}", folder) for name, folder in folders.items()}
        point_hf_at(monkeypatch, hub.url, tmp_path / "hf-cache")
        pair_update, status, classes, gallery = app.client.predict("org/fpn", shas["fpn"], "org/ifa", "main",
                                                                   api_name="/load_hub_pair")
        assert len(gallery) >= 13  # the gallery, ordered for the new pair
        pair_id = pair_update["value"]  # a dropdown update: the new pair id and the choices
        assert pair_id == f"hub:org/fpn@{shas['fpn']}|org/ifa@main" and pair_id in str(pair_update["choices"])
        assert "3 classes" in status and classes["value"] == ["class 0", "class 1", "class 2"]
        out = run(app.client, pair_id, image=small_image)
        assert out[-3]["pair"]["ifa"]["location"] == "org/ifa"
        # the pair is this session's: another user's pair list does not get it
        assert pair_id not in str(app.new_client().predict(api_name="/catalog")["pairs"])
        with pytest.raises(AppError) as err:
            app.client.predict("org/fpn", "", "org/ifa4", "", api_name="/load_hub_pair")
        assert_clean_error(err.value, "disagree on classes")
        with pytest.raises(AppError) as err:
            app.client.predict("org/fpn", "v9", "org/ifa", "", api_name="/load_hub_pair")
        assert_clean_error(err.value, "revision 'v9' not found")
    good_request(app, app.client.predict(api_name="/catalog")["default_pair"], small_image)
