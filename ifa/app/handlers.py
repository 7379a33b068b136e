"""What every event handler of the app shares: the user-error type, the guard that turns any failure into a
one-line gr.Error, and the parsing / packing of raw Gradio values."""

from __future__ import annotations

import functools
import logging
import math
import os
import re
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


def public_message(text: str) -> str:
    """A message fit for the public: every absolute path of this machine as public_path() shows it (relative to
    the app's home, else its last part), no word longer than ECHO_CHARS, at most MAX_MESSAGE characters."""
    text = _ABSOLUTE_PATH.sub(lambda m: public_path(m.group()), str(text))
    text = _LONG_WORD.sub(lambda m: m.group()[:ECHO_CHARS - 1] + "…", text)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def guarded(what: str):
    """Turn every exception of a handler into a gr.Error with a one-line public_message (no traceback on the
    page, no path of this machine)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except (UserError, ImageLoadError, PairError, RegistryError) as err:
                raise gr.Error(public_message(str(err)), print_exception=False) from None
            except MemoryError:
                raise gr.Error(f"Out of memory while {what}: try a smaller image, fewer scales or the stride-4 "
                               f"IFA output", print_exception=False) from None
            except Exception as err:  # noqa: BLE001 - the app must keep serving
                log.exception("unexpected error while %s", what)
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                raise gr.Error(public_message(f"Unexpected error while {what} ({type(err).__name__}"
                                              f"{': ' + first if first else ''}). The app is still running: try "
                                              f"again or with another input."), print_exception=False) from None
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
