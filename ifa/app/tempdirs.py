"""The app's temp folders: nothing is left behind after a normal exit, SIGTERM, SIGINT or a crash.

Each AppService keeps the files it serves (label maps, exported figures, gallery thumbnails) in one folder
`<temp dir>/ifa-app-XXXXXXXX` that records its owner's PID in `owner.pid`. The folder is removed at exit
(atexit), by the signal handlers that `main()` installs when it starts serving (`remove_on_signals`), and, when
a run was killed without a chance to clean up (SIGKILL, a power cut), by the next start (`sweep_stale`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

PREFIX = "ifa-app-"
OWNER_FILE = "owner.pid"
_ROOTS: list[Path] = []  # the folders this process made, removed at exit or on a signal


def make_files_root() -> Path:
    """A new temp folder owned by this process (its PID in OWNER_FILE), removed at exit."""
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    (root / OWNER_FILE).write_text(f"{os.getpid()}\n")
    _ROOTS.append(root)
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def remove_files_roots() -> None:
    """Remove every temp folder this process made (idempotent)."""
    for root in _ROOTS:
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale(temp_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the `ifa-app-*` folders of earlier runs whose owner (the PID in OWNER_FILE) is no longer alive;
    returns them. Folders without an owner file (another version's, or one being created) are left alone."""
    removed = []
    for folder in Path(temp_dir or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            pid = int((folder / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def remove_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Remove this process's temp folders on each of `signals`, then hand the signal on: to the handler that
    was there before (SIGINT: Python's KeyboardInterrupt, which stops Gradio's server), else to the default
    action (SIGTERM: the process ends, killed by the signal as before). An ignored signal stays ignored.
    Call it from the main thread (Python's rule for signal handlers); elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_IGN, None):
            continue

        def handler(signum, frame, previous=previous):
            remove_files_roots()
            if callable(previous):
                return previous(signum, frame)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(sig, handler)
