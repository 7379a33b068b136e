"""Robust image and label-map loading: user-supplied files (the app's uploads) and every image the app, its dataset
view and ifa.figures score, so that one image gives the same numbers on every surface.

`load_image(path)` turns whatever a user drops in (any format Pillow reads, grayscale, RGBA, palette,
16-bit, float, CMYK, EXIF-rotated, animated, very large) into a uint8 (H, W, 3) RGB array that fits
the app's working size, plus a list of human-readable notices about what was done to it. Files that
cannot be used raise ImageLoadError with a one-line message that says why (never a traceback).

Memory stays bounded: the pixel count is read from the header before decoding; JPEGs larger than needed are
decoded at 1/2, 1/4 or 1/8 size (draft mode, so a 120 Mpx phone photo decodes as at most a few Mpx); whatever
would still decode to more than `max_pixels` is refused, naming the limit; the image is then downscaled to at
most `max_side` pixels on its long side (Lanczos, `fit_long_side`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .label_sets import IGNORE, apply_lut, fitting_label_sets, get_label_set, scoring_lut

DEFAULT_MAX_SIDE = 1024  # the app's working size (long side)
DEFAULT_MAX_PIXELS = 64_000_000  # refuse to decode more (a 8000 x 8000 photo passes; a decompression bomb not)
MIN_SIDE = 32  # the coarsest pyramid level has stride 32
MAX_FILE_BYTES = 200 * 1024 * 1024


class ImageLoadError(ValueError):
    """A file that cannot be used as an image (or label map); the message is meant for the user."""


@dataclass
class LoadedImage:
    image: np.ndarray  # uint8 (H, W, 3) RGB
    notices: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)  # (width, height) as stored, after EXIF rotation
    name: str = ""

    @property
    def scale(self) -> float:
        """Working width / original width (1.0 when not resized)."""
        return self.image.shape[1] / self.original_size[0] if self.original_size[0] else 1.0


def _open(path: Path, what: str) -> Image.Image:
    """Image.open with every failure turned into ImageLoadError (header only: no pixel is decoded)."""
    if not path.is_file():
        raise ImageLoadError(f"{what} not found: {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise ImageLoadError(f"{what} '{path.name}' is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageLoadError(f"{what} '{path.name}' is {size / 2**20:.0f} MB; files up to "
                             f"{MAX_FILE_BYTES // 2**20} MB are accepted")
    try:
        with warnings.catch_warnings():  # the pixel limit is checked by the caller, after a JPEG's draft
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError:
        raise ImageLoadError(f"{what} '{path.name}' declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
                             f"(a decompression bomb or a huge image); it was not decoded") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"'{path.name}' is not an image file this app can read (PNG, JPEG, WebP, BMP, TIFF, "
                             f"GIF...)") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds for broken headers
        raise ImageLoadError(f"{what} '{path.name}' cannot be read: {_brief(err)}") from None


def _brief(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _to_rgb(img: Image.Image, notices: list[str]) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 3) RGB, with a notice for lossy conversions."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        data = np.asarray(img, dtype=np.float64)
        peak = float(data.max()) if data.size else 0.0
        if peak > 255:
            scale = 65535.0 if peak > 4095 else 4095.0
            notices.append(f"{'16' if scale > 4095 else '12'}-bit grayscale image scaled to 8 bits")
            data = data * (255.0 / scale)
        gray = np.clip(data + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        data = np.asarray(img, dtype=np.float64)
        finite = data[np.isfinite(data)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if low >= 0 and high <= 1:
            data = data * 255.0
        elif high > low:
            data = (data - low) * (255.0 / (high - low))
            notices.append("floating-point image stretched to 0-255")
        gray = np.clip(np.nan_to_num(data) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("1", "L", "LA", "La"):
        notices.append("grayscale image: its gray values were copied to R, G and B")
    if mode == "CMYK":
        notices.append("CMYK image converted to RGB")
    if mode in ("P", "PA"):
        notices.append("palette (indexed-colour) image converted to RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() < 255:
            notices.append("transparent pixels were put on a white background")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(white, rgba)
        else:
            notices.append("alpha channel dropped (every pixel is opaque)")
        return np.asarray(rgba.convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _png_bit_depth(path: Path) -> int | None:
    """Bits per sample of a PNG file from its IHDR chunk (Pillow opens 16-bit colour PNGs as 8-bit RGB)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def load_image(path: str | os.PathLike, max_side: int | None = DEFAULT_MAX_SIDE,
               max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> LoadedImage:
    """Read an image file as uint8 RGB, at most `max_side` px on its long side (None: as stored); raise
    ImageLoadError if unusable.

    Returns the array and notices (downscaled, converted, rotated, first frame only...).
    """
    path = Path(path)
    notices: list[str] = []
    with _open(path, "image") as img:
        width, height = img.size
        if img.format == "JPEG" and max_side and max(width, height) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 size, still >= max_side
        if img.size[0] * img.size[1] > max_pixels:
            raise ImageLoadError(f"image '{path.name}' is {width} x {height} px ({width * height / 1e6:.0f} Mpx); "
                                 f"images that decode to at most {max_pixels / 1e6:.0f} Mpx are accepted (JPEGs are "
                                 f"decoded at up to 1/8 size, so JPEG photos up to {64 * max_pixels / 1e6:.0f} Mpx)")
        if getattr(img, "n_frames", 1) > 1:
            notices.append(f"the file holds {img.n_frames} frames/pages; the first is used")
        try:
            img.load()  # decode first: a corrupt body must fail here, not be half-read behind another call
        except MemoryError:
            raise ImageLoadError(f"image '{path.name}' is too large to decode here") from None
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise ImageLoadError(f"image '{path.name}' is damaged or truncated: {_brief(err)}") from None
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block is not worth refusing the (decoded) image
            orientation = 1
        rotated = orientation in (5, 6, 7, 8)
        if _png_bit_depth(path) == 16 and img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            notices.append("16-bit colour image reduced to 8 bits per channel")
        try:
            if orientation != 1:
                img = ImageOps.exif_transpose(img)
                notices.append(f"rotated upright from its EXIF orientation ({orientation})")
            array = _to_rgb(img, notices)
        except ImageLoadError:
            raise
        except MemoryError:
            raise ImageLoadError(f"image '{path.name}' is too large to decode here") from None
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise ImageLoadError(f"image '{path.name}' is damaged or truncated: {_brief(err)}") from None
    original = (width, height) if not rotated else (height, width)
    h, w = array.shape[:2]
    if min(h, w) < min_side:
        raise ImageLoadError(f"image '{path.name}' is {original[0]} x {original[1]} px; both sides must be at least "
                             f"{min_side} px (the coarsest feature level has stride 32)")
    if max_side and max(h, w) > max_side:
        array = fit_long_side(array, max_side, min_side)
        notices.append(f"downscaled from {original[0]} x {original[1]} to {array.shape[1]} x {array.shape[0]} px "
                       f"(the app works on at most {max_side} px per side)")
    return LoadedImage(np.ascontiguousarray(array, dtype=np.uint8), notices, original, path.name)


def fit_long_side(array: np.ndarray, max_side: int, min_side: int = MIN_SIDE) -> np.ndarray:
    """uint8 (H, W, 3) downscaled (Lanczos) so its long side is `max_side` (each side at least `min_side`);
    returned as is when it already fits. The one resize of every image the app and ifa.figures score."""
    h, w = array.shape[:2]
    if max(h, w) <= max_side:
        return array
    scale = max_side / max(h, w)
    size = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An integer label map (h, w) resized to `size` (width, height) by nearest neighbour, dtype kept."""
    if (label.shape[1], label.shape[0]) == tuple(size):
        return label
    resized = Image.fromarray(label.astype(np.int32)).resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(resized).astype(label.dtype)


def load_label(path: str | os.PathLike, size: tuple[int, int], num_classes: int, label_set: str = "",
               classes: str = "", ignore_index: int = 255) -> tuple[np.ndarray, list[str]]:
    """A ground-truth label map as uint8 (h, w) train ids of the pair's classes at `size` (width, height).

    `label_set` names the file's format (:mod:`ifa.data.label_sets`); "" means the pair's own: values
    outside [0, num_classes) are ignored (CamVid's Unlabelled 11 included). A label set of another class
    set than the pair's (`classes`) goes through the written mapping; without one, ImageLoadError says so.
    A map of another size than the image is resized with nearest neighbour when its aspect ratio matches.
    """
    path = Path(path)
    notices: list[str] = []
    lut = _label_lut(label_set, classes, num_classes, notices)
    with _open(path, "label map") as img:
        if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            raise ImageLoadError(f"label map '{path.name}' must be a single-channel image of class indices "
                                 f"(mode L, P or I), got mode {img.mode}")
        if img.size[0] * img.size[1] > DEFAULT_MAX_PIXELS:
            raise ImageLoadError(f"label map '{path.name}' is too large ({img.size[0]} x {img.size[1]} px)")
        try:
            img.load()
            raw = np.asarray(img).astype(np.int64)
        except Exception as err:  # noqa: BLE001
            raise ImageLoadError(f"label map '{path.name}' is damaged: {_brief(err)}") from None
    label_set, lut = _checked_format(path.name, raw, label_set, classes, num_classes, lut, notices)
    h, w = raw.shape
    if (w, h) != tuple(size):
        if abs(w / h - size[0] / size[1]) > 0.02:
            raise ImageLoadError(f"label map '{path.name}' is {w} x {h} px but the image is {size[0]} x {size[1]} px")
        raw = resize_label(raw, size)
        notices.append(f"label map resized from {w} x {h} to {size[0]} x {size[1]} px (nearest)")
    if lut is None:
        label = np.where((raw < 0) | (raw >= num_classes), ignore_index, raw).astype(np.uint8)
    else:
        label = apply_lut(lut, raw)
    if (label == ignore_index).all():
        found = ", ".join(str(v) for v in np.unique(raw)[:8])
        where = f"as {get_label_set(label_set).title}" if label_set else f"values 0-{num_classes - 1}"
        raise ImageLoadError(f"label map '{path.name}' has no pixel of the model's {num_classes} classes "
                             f"({where}; it holds {found}): nothing to score")
    return label, notices


def _checked_format(name: str, raw: np.ndarray, label_set: str, classes: str, num_classes: int,
                    lut: np.ndarray | None, notices: list[str]) -> tuple[str, np.ndarray | None]:
    """(label set, lookup table) to read `raw` with: the declared ones when every value is legal in the declared
    format; else the one other format the values fit (with a notice); else ImageLoadError naming the formats they
    fit. Never scores a label silently in a format its values contradict. The pair's own format ("") holds class
    indices 0..K-1, K (an "unlabelled" index such as CamVid's 11) and 255."""
    if label_set:
        declared, largest = get_label_set(label_set).title, get_label_set(label_set).max_value
    else:
        declared = f"the pair's class indices (0-{num_classes - 1}, {num_classes} or 255 unscored)"
        largest = num_classes
    values, counts = np.unique(raw, return_counts=True)
    bad = (values < 0) | ((values > largest) & (values != IGNORE))
    if not bad.any():
        return label_set, lut
    share = 100.0 * counts[bad].sum() / counts.sum()
    shown = ", ".join(str(v) for v in values[bad][:6]) + (", ..." if bad.sum() > 6 else "")
    problem = (f"label map '{name}' holds values outside {declared} ({shown}: {share:.1f}% of its pixels)")
    fits = [f for f in fitting_label_sets(values, classes) if f != label_set]
    if len(fits) == 1:
        notices.append(f"{problem}; read as {get_label_set(fits[0]).title}, the one format they fit")
        return fits[0], _label_lut(fits[0], classes, num_classes, notices)
    if fits:
        raise ImageLoadError(f"{problem}; they fit {' and '.join(get_label_set(f).title for f in fits)}: choose its "
                             f"format under 'Its label format'")
    raise ImageLoadError(f"{problem}, and fit no label format the pair can score: not scored")


def _label_lut(label_set: str, classes: str, num_classes: int, notices: list[str]) -> np.ndarray | None:
    """The lookup table of a declared label set for the pair's classes (ifa.data.label_sets.scoring_lut, the rule
    the samples use too); None = read values as class indices."""
    try:
        lut, notice = scoring_lut(label_set, classes, num_classes)
    except ValueError as err:
        raise ImageLoadError(str(err)) from None
    notices += [notice] if notice else []
    return lut
