"""The project as a package: `pip install .` into a fresh virtual environment, then every console script's
--help from outside the checkout, the library imported from the environment (not the source tree), and the
wheel holding `ifa` only.

The venv sees the machine's site-packages (torch and the other pinned dependencies are already installed
there and nothing can be downloaded); the wheel is built without isolation by the installed setuptools, which
leaves build/ and *.egg-info in the checkout (git-ignored).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("ifa-app", "ifa-train", "ifa-evaluate", "ifa-convert", "ifa-figures", "ifa-benchmark")
pytestmark = pytest.mark.slow


def run(*cmd, cwd=None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "env"
    run(sys.executable, "-m", "venv", "--system-site-packages", env)
    wheels = tmp_path_factory.mktemp("wheel")
    # Built by this interpreter's setuptools (a fresh venv's bundled one is too old for pyproject metadata).
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT)
    wheel = next(wheels.glob("ifa_explorer-*.whl"))
    run(env / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    env.joinpath("wheel.txt").write_text(str(wheel))
    return env


def test_wheel_holds_the_ifa_package_only(venv):
    with zipfile.ZipFile((venv / "wheel.txt").read_text()) as whl:
        names = whl.namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ifa", "ifa_explorer-0.1.0.dist-info"}, tops
    assert "ifa/app/ui.py" in names and "ifa/data/label_sets.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile((venv / "wheel.txt").read_text()) as whl:
        text = whl.read(entry_points).decode()
    assert all(f"{script} = " in text for script in SCRIPTS)


def test_console_scripts_work_outside_the_checkout(venv, tmp_path):
    where = run(venv / "bin" / "python", "-c", "import ifa, ifa.app.registry as r; print(ifa.__file__); "
                "print(r.app_home())", cwd=tmp_path).split("\n")
    assert str(venv) in where[0] and str(ROOT) not in where[0]
    for script in SCRIPTS:
        out = run(venv / "bin" / script, "--help", cwd=tmp_path)
        assert "usage:" in out, script
