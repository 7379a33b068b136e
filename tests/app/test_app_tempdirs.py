"""Nothing left behind: the app's temp folder goes on SIGTERM and SIGINT (the real `python app.py`), and the
folders of earlier runs that were killed without cleaning up are removed at the next start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from ifa.app.tempdirs import OWNER_FILE, PREFIX, sweep_stale

START_TIMEOUT = float(os.environ.get("IFA_APP_START_TIMEOUT", "600"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_folders_of_dead_owners(tmp_path):
    def folder(name: str, owner: str | None) -> Path:
        path = tmp_path / f"{PREFIX}{name}"
        (path / "run").mkdir(parents=True)
        (path / "run" / "labels.png").write_bytes(b"x")
        if owner is not None:
            (path / OWNER_FILE).write_text(owner)
        return path

    crashed = folder("crashed", str(_dead_pid()))
    live = folder("live", str(os.getppid()))
    mine = folder("mine", str(os.getpid()))
    unowned, garbled = folder("unowned", None), folder("garbled", "not a pid")
    other = tmp_path / "something-else"
    other.mkdir()
    (other / OWNER_FILE).write_text(str(_dead_pid()))
    assert sweep_stale(tmp_path) == [crashed]
    assert not crashed.exists()
    assert all(p.is_dir() for p in (live, mine, unowned, garbled, other))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_app_removes_its_temp_folder_on_a_signal(sig, pair_registry, tmp_path):
    """`python app.py` with its own temp dir: a stale folder of a killed run is swept at start, the running
    app's folder (with its gallery thumbnails) exists while it serves, and is gone after the signal."""
    temp = tmp_path / "tmp"
    stale = temp / f"{PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / OWNER_FILE).write_text(str(_dead_pid()))
    port = _free_port()
    env = dict(os.environ, TMPDIR=str(temp), IFA_REGISTRY=str(pair_registry[0]), IFA_SAMPLES_DIR="",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_SSR_MODE="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = tmp_path / "app.log"
    with open(log, "w") as out:  # SIGINT's default action restored: a background shell may have it ignored
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + START_TIMEOUT
        # Launched: the last line Gradio prints before it waits for requests (a signal that arrives while launch()
        # still runs its own start-up requests interrupts those instead of the serving loop).
        while "Streamable HTTP URL" not in log.read_text():
            assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"app.py did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        time.sleep(2)
        assert not stale.exists()
        roots = [p for p in temp.glob(f"{PREFIX}*")]
        assert len(roots) == 1, roots
        root = roots[0]
        assert (root / OWNER_FILE).read_text().strip() == str(proc.pid)
        assert any((root / "thumbs").iterdir())  # the gallery's thumbnails live there too
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == (-signal.SIGTERM if sig == signal.SIGTERM else 0), log.read_text()[-3000:]
    assert not root.exists()
    assert not list(temp.glob(f"{PREFIX}*"))
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
