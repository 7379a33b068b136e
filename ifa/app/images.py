"""The app's view of ifa.data.images: the same loader, with the server's limits (IFA_APP_MAX_SIDE,
IFA_APP_MAX_PIXELS) applied."""

from __future__ import annotations

import os

from ..data.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageLoadError, LoadedImage, load_label
from ..data.images import load_image as _load_image

__all__ = ["ImageLoadError", "LoadedImage", "limits_from_env", "load_image", "load_label"]


def limits_from_env() -> tuple[int, int]:
    """(max_side, max_pixels) from IFA_APP_MAX_SIDE / IFA_APP_MAX_PIXELS, with ifa.data.images' defaults."""
    def read(name: str, default: int) -> int:
        try:
            value = int(os.environ.get(name, default))
        except ValueError:
            return default
        return value if value > 0 else default
    return read("IFA_APP_MAX_SIDE", DEFAULT_MAX_SIDE), read("IFA_APP_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def load_image(path, max_side: int | None = None, max_pixels: int | None = None) -> LoadedImage:
    """ifa.data.images.load_image at the server's limits (or the given ones)."""
    env_side, env_pixels = limits_from_env()
    return _load_image(path, max_side or env_side, max_pixels or env_pixels)
