"""What every event handler of the app shares: the user-error type, the guard that turns any failure into a
one-line gr.Error, and the parsing / packing of raw Gradio values."""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
import math
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from .images import ImageLoadError
from .registry import ECHO_CHARS, PairError, RegistryError, public_path, shorten

log = logging.getLogger("ifa.app")
PROGRESS = gr.Progress()  # the default that makes Gradio pass each event its own progress tracker


class UserError(ValueError):
    """Bad input from the user; the message says what to change."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:/[^\s'\"()\[\],;:]+)+")
_LONG_WORD = re.compile(rf"\S{{{ECHO_CHARS + 1},}}")
MAX_MESSAGE = 1000


def public_message(text: str, home: Path | None = None) -> str:
    """A message fit for the public: every absolute path of this machine as public_path() shows it (relative to
    the app's `home`, else its last part), no word longer than ECHO_CHARS, at most MAX_MESSAGE characters."""
    text = _ABSOLUTE_PATH.sub(lambda m: public_path(m.group(), home), str(text))
    text = _LONG_WORD.sub(lambda m: m.group()[:ECHO_CHARS - 1] + "…", text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def guarded(what: str):
    """Turn every exception of a handler (a method of AppService) into a gr.Error with a one-line public_message
    (no traceback on the page, no path of this machine: paths shown relative to the service's settings.home)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(service, *args, **kwargs):
            home = service.settings.home
            try:
                return fn(service, *args, **kwargs)
            except gr.Error:
                raise
            except (UserError, ImageLoadError, PairError, RegistryError) as err:
                raise gr.Error(public_message(str(err), home), print_exception=False) from None
            except MemoryError:
                raise gr.Error(f"Out of memory while {what}: try a smaller image, fewer scales or the stride-4 "
                               f"IFA output", print_exception=False) from None
            except Exception as err:  # noqa: BLE001 - the app must keep serving
                log.exception("unexpected error while %s", what)
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                raise gr.Error(public_message(f"Unexpected error while {what} ({type(err).__name__}"
                                              f"{': ' + first if first else ''}). The app is still running: try "
                                              f"again or with another input.", home), print_exception=False) from None
        return wrapper
    return decorate


def _path_of(payload: Any) -> str | None:
    """The server-side file path of a Gradio file payload (dict, FileData, str) or None."""
    if payload is None or payload == "":
        return None
    if isinstance(payload, (str, os.PathLike)):
        return str(payload)
    if isinstance(payload, dict):
        return payload.get("path") or None
    return getattr(payload, "path", None)


MAX_DATA_URL_MB = 64  # a data: URL larger than this (decoded) is refused before it is decoded
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
               "image/bmp": ".bmp", "image/tiff": ".tif"}


def _data_url_of(payload: Any) -> str | None:
    """The data: URL a payload carries (a string, or a file payload whose path or url is one), else None."""
    if isinstance(payload, str):
        return payload if payload[:5].lower() == "data:" else None
    for key in ("path", "url"):
        value = payload.get(key) if isinstance(payload, dict) else getattr(payload, key, None)
        if isinstance(value, str) and value[:5].lower() == "data:":
            return value
    return None


@contextlib.contextmanager
def received_file(payload: Any, folder: Path) -> Iterator[str | None]:
    """The path of a received file: a Gradio file payload's own file (Gradio has already fetched an http(s) URL,
    over MCP too, into its cache), or a data: URL's bytes written unchanged to a temp file under `folder` (removed
    afterwards), so that every entry point decodes the same bytes with ifa.app.images; None for no file. A URL that
    is not a data: URL and was not fetched, or a malformed or oversized data: URL, is a one-line UserError."""
    url = _data_url_of(payload)
    if url is None:
        path = _path_of(payload)
        if path and re.match(r"[a-z][a-z0-9+.-]*://", path, re.IGNORECASE):
            raise UserError(f"give the image as a file or a data: URL (got the URL {shorten(path)})")
        yield path
        return
    match = _DATA_URL.match(url)
    if match is None:
        raise UserError(f"not a data: URL this app reads (data:[type][;base64],...): {shorten(url)}")
    body = url[match.end():]
    if len(body) * 3 // 4 > MAX_DATA_URL_MB * 2 ** 20:
        raise UserError(f"the data: URL holds more than {MAX_DATA_URL_MB} MB: send the image as a file")
    try:
        data = (base64.b64decode(re.sub(r"\s+", "", body), validate=True) if match.group("b64")
                else urllib.parse.unquote_to_bytes(body))
    except (binascii.Error, ValueError):
        raise UserError("the data: URL's base64 is malformed") from None
    target = Path(folder) / "received" / uuid.uuid4().hex[:12]
    target.mkdir(parents=True)
    path = target / ("image" + _EXTENSIONS.get((match.group("type") or "").lower(), ""))
    try:
        path.write_bytes(data)
        yield str(path)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _float(value, name: str, low: float, high: float, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {shorten(value)}") from None
    if not math.isfinite(number):
        raise UserError(f"{name} must be a finite number, got {shorten(value)}")
    return min(max(number, low), high)


def _bool(value, name: str) -> bool:
    """A boolean from a checkbox or an API client: True / False, 1 / 0, or the strings true / false, yes / no, on /
    off, 1 / 0 (any case); None or "" is False. Anything else is refused (bool("false") would be True)."""
    if value is None or value == "":
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise UserError(f"{name} must be true or false, got {shorten(value)}")


def _table(headers: list[str], rows: list[list]) -> dict:
    return {"headers": list(headers), "data": rows}


def _jsonable(value):
    """Plain JSON data: numpy scalars to Python numbers, NaN / inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)
