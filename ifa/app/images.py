"""The app's view of ifa.data.images: the same loader, at the server's limits (AppSettings.max_side and max_pixels:
IFA_APP_MAX_SIDE, IFA_APP_MAX_PIXELS), which the service passes."""

from __future__ import annotations

from ..data.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageLoadError, LoadedImage, load_label
from ..data.images import load_image as _load_image

__all__ = ["ImageLoadError", "LoadedImage", "load_image", "load_label"]


def load_image(path, max_side: int | None = None, max_pixels: int | None = None) -> LoadedImage:
    """ifa.data.images.load_image at the given limits (the service's settings), else ifa.data.images' defaults
    (1024 px, 64 Mpx)."""
    return _load_image(path, max_side or DEFAULT_MAX_SIDE, max_pixels or DEFAULT_MAX_PIXELS)
