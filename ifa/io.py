"""File names of a checkpoint folder and the one atomic writer every module that writes files uses.

A leaf of the package (it imports nothing from `ifa`), so checkpoints, model cards, training, figures and
the prediction cache can all import it without importing each other.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CONFIG_NAME = "config.json"  # everything needed to rebuild the model (ifa.models.config.ModelConfig)
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the model card (ifa.cards)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path), then move tmp_path over `path`: readers never see a half-written file.

    The temporary file lies in `path`'s folder (created when missing), so the final rename stays on one file
    system; on any error it is removed and `path` keeps its previous content. The file is made readable by
    everyone (0644): checkpoints and figures are meant to be shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
