"""Gradio's Image and ImageSlider with a faster encoding of the arrays a handler returns.

Gradio encodes an output array with PIL's defaults: WebP at method 4 (quality 80) or PNG at zlib level 6, 16 and
80 ms for a 480x360 view here, and an app request returns about ten views. These components encode arrays as
JPEG quality 90 without chroma subsampling (about 1 ms), PNG at level 1 or WebP at method 0 (SAVE_OPTIONS) into
Gradio's own cache (`processing_utils.save_bytes_to_cache`, as Gradio stores bytes itself), then hand the path
to Gradio's postprocessing; everything else, the frontend included (`is_template`: the parent's Svelte
component), is Gradio's. Handlers keep returning arrays, so in-process callers never pay for encoding.
"""

from __future__ import annotations

import io

import gradio as gr
import numpy as np
from gradio import processing_utils
from PIL import Image

SAVE_OPTIONS = {"jpeg": {"quality": 90, "subsampling": 0}, "png": {"compress_level": 1},
                "webp": {"method": 0, "quality": 90}}


def encoded(value, cache_dir: str, fmt: str):
    """An (H, W[, C]) uint8 array -> the path of its `fmt` file in `cache_dir`; anything else unchanged."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or fmt not in SAVE_OPTIONS:
        return value
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(value)).save(buffer, fmt, **SAVE_OPTIONS[fmt])
    return processing_utils.save_bytes_to_cache(buffer.getvalue(), f"image.{fmt}", cache_dir)


class FastImage(gr.Image):
    """gr.Image (output) whose array values are encoded by `encoded`."""

    is_template = True

    def postprocess(self, value):
        return super().postprocess(encoded(value, self.GRADIO_CACHE, self.format))


class FastImageSlider(gr.ImageSlider):
    """gr.ImageSlider (output) whose array pairs are encoded by `encoded`."""

    is_template = True

    def postprocess(self, value):
        if value is not None:
            value = tuple(encoded(v, self.GRADIO_CACHE, self.format) for v in value)
        return super().postprocess(value)
