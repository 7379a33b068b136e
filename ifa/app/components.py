"""Gradio's Image and ImageSlider with a faster encoding of the arrays a handler returns.

Gradio encodes an output array with PIL's defaults: WebP at method 4 (quality 80), PNG at zlib level 6. On a
480x360 view those take 16 ms and 80 ms, method 0 (quality 90) and level 1 take 4-6 ms and 12 ms (1 core), and
an app request returns about ten such images. These components encode arrays that way into Gradio's own cache
(`processing_utils.save_bytes_to_cache`, as Gradio itself stores bytes), then hand the path to Gradio's own
postprocessing; everything else, the frontend included (`is_template`: the parent's Svelte component), is
Gradio's. The handlers keep returning arrays, so in-process callers never pay for encoding.
"""

from __future__ import annotations

import io

import gradio as gr
import numpy as np
from gradio import processing_utils
from PIL import Image

SAVE_OPTIONS = {"webp": {"method": 0, "quality": 90}, "png": {"compress_level": 1}, "jpeg": {"quality": 90, "subsampling": 0}}


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
