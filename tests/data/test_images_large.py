"""Large photos are decoded at reduced size within bounded memory (JPEG draft), declared-size bombs are refused
naming the limit, and figures and the app prepare an image the same way (ifa.data.images)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ifa.data.images import ImageLoadError, fit_long_side, load_image, resize_label


def test_a_108_mpx_phone_photo_is_accepted_with_a_notice(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (12000, 9000), (90, 120, 150)).save(path, quality=70)
    loaded = load_image(path, max_side=1024)
    assert loaded.image.shape == (768, 1024, 3) and loaded.original_size == (12000, 9000)
    assert any("downscaled from 12000 x 9000" in n for n in loaded.notices)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(13000, 13000), (20000, 20000)])
def test_a_declared_bomb_is_refused_naming_the_limit(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(*size))
    with pytest.raises(ImageLoadError, match=r"(at most 64 Mpx|more than \d+ Mpx)"):
        load_image(path)


def test_one_resize_for_images_and_labels():
    image = np.random.default_rng(0).integers(0, 255, (375, 1242, 3), dtype=np.uint8)
    fitted = fit_long_side(image, 1024)
    assert fitted.shape == (309, 1024, 3)
    label = np.arange(375 * 1242).reshape(375, 1242) % 11
    assert resize_label(label, (1024, 309)).shape == (309, 1024) and resize_label(label, (1242, 375)) is label
