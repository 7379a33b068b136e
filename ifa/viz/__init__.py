"""Visualisation: arrays in, arrays out (uint8 RGB images), no I/O."""

from .colors import colorize, overlay

__all__ = ["colorize", "overlay"]
