"""AppSettings (ifa.app.settings): built from the environment and the command line in one place, frozen, validated;
the service and the engine take it; nothing else under ifa/app/ reads the environment."""

from __future__ import annotations

import ast
import dataclasses
from argparse import Namespace
from pathlib import Path

import pytest

from ifa.app.settings import AppSettings

APP = Path(__file__).resolve().parents[2] / "ifa" / "app"


def test_defaults_variables_and_flags(tmp_path):
    plain = AppSettings.from_env({})
    assert (plain.max_side, plain.max_pixels, plain.queue, plain.gallery, plain.run_mb) == (1024, 64_000_000, 32, 24,
                                                                                         1024.0)
    assert plain.registry == plain.home / "checkpoints" / "registry.json" and plain.max_work_mpx is None
    env = {"IFA_APP_HOME": str(tmp_path), "IFA_APP_MAX_SIDE": "640", "IFA_APP_PRECISION": "FP32",
           "IFA_APP_RANK_SECONDS": "0", "IFA_APP_MAX_WORK_MPX": "0", "IFA_APP_QUEUE": "",
           "IFA_APP_ALLOW_LOCAL_PAIRS": "1"}
    settings = AppSettings.from_env(env)
    assert settings.home == tmp_path.resolve() and settings.max_side == 640 and settings.precision == "fp32"
    assert settings.rank_seconds == 0.0 and settings.max_work_mpx is None and settings.queue == 32
    assert settings.allow_local_pairs and not AppSettings.from_env({**env, "SPACE_ID": "org/space"}).allow_local_pairs
    flags = AppSettings.from_env(env, Namespace(home=None, registry=str(tmp_path / "r.json"), host="0.0.0.0",
                                                port=8000))
    assert flags.registry == tmp_path / "r.json" and (flags.host, flags.port) == ("0.0.0.0", 8000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_side = 1


@pytest.mark.parametrize("name, value", [("IFA_APP_MAX_SIDE", "big"), ("IFA_APP_RUN_MB", "-1"),
                                         ("IFA_APP_QUEUE", "0"), ("IFA_APP_PRECISION", "fp8")])
def test_bad_values_are_refused_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        AppSettings.from_env({name: value})


def test_only_settings_reads_the_environment():
    for path in APP.glob("*.py"):
        tree = ast.parse(path.read_text())
        reads = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                 and node.attr in ("environ", "getenv") and isinstance(node.value, ast.Name) and node.value.id == "os"]
        assert path.name == "settings.py" or not reads, f"{path.name} reads os.environ"
