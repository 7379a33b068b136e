"""The project as a package: `pip install .` into a fresh virtual environment, then every console script's
--help from outside the checkout, the library imported from the environment (not the source tree), and the
wheel holding `ifa` only.

The venv sees the site-packages of the interpreter running pytest (a .pth file adds them, so this works from
a venv as well as from the system Python: torch and the other pinned dependencies are already installed there
and nothing is downloaded); the wheel is installed with --no-deps, and the venv (a few MB) is removed at the end.
The wheel is built without isolation by the installed setuptools, which leaves build/ and *.egg-info in the
checkout (git-ignored).
"""

from __future__ import annotations

import shutil
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


def site_dirs() -> list[str]:
    """The site-packages folders the running interpreter imports from (a venv's, the system's, the user's)."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "env"
    # Not --system-site-packages: that is the base interpreter's, which lacks a venv's packages when pytest runs
    # in one. A .pth file adds the running interpreter's folders (addsitedir: their own .pth files count too),
    # after the new venv's own site-packages, so the installed wheel's `ifa` comes first.
    run(sys.executable, "-m", "venv", "--without-pip", env)
    site = Path(run(env / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    site.joinpath("running-interpreter.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in site_dirs()))
    wheels = tmp_path_factory.mktemp("wheel")
    # Built by this interpreter's setuptools (a fresh venv's bundled one is too old for pyproject metadata).
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT)
    wheel = next(wheels.glob("ifa_explorer-*.whl"))
    # Installed by this interpreter's pip into the venv, without dependencies: they are there already.
    run(sys.executable, "-m", "pip", "--python", env / "bin" / "python", "install", "-q", "--no-deps",
        "--no-warn-script-location", wheel)
    env.joinpath("wheel.txt").write_text(str(wheel))
    yield env
    shutil.rmtree(env.parent, ignore_errors=True)
    shutil.rmtree(wheels, ignore_errors=True)


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


def test_ifa_app_without_gradio_names_the_extra(tmp_path):
    """`ifa-app` (its entry point, ifa.app:main) where Gradio is not installed: one line naming the extra, exit 2."""
    code = "import sys; sys.modules['gradio'] = None; from ifa.app import main; sys.exit(main(['--help']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "pip install 'ifa-explorer[app]'" in done.stderr and "Traceback" not in done.stderr, done.stderr
