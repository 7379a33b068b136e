"""The app's settings: one frozen, validated object built once, from the environment and the command line.

`AppSettings.from_env(environ, args)` is the only place under ifa/app/ that reads environment variables; `ui.main()`
builds it and hands it to the engine (`engine.configure`) and the service (`AppService(settings=...)`), and nothing
reads the environment at import or per request. Code that builds an `AppService` (or `build_demo()`) without
settings gets `AppSettings.from_env()` at that moment, so a test that sets variables first still sees them.

Each field's default is written on it below; README.md ("Settings") has the table of variables, flags, defaults
and meanings. A flag (--home, --registry, --host, --port) wins over its variable.

An empty variable is its default; a value that is not valid (a word where a number belongs, a number that is not
positive, an unknown precision) is refused at start with a ValueError naming the variable and the valid values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..data.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE

SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]  # the project root when run from a source checkout
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def default_home(cwd: Path | None = None) -> Path:
    """The working directory when it holds checkpoints/registry.json, else the source checkout."""
    cwd = Path.cwd() if cwd is None else cwd
    return cwd if (cwd / "checkpoints" / "registry.json").is_file() else SOURCE_CHECKOUT


@dataclass(frozen=True)
class AppSettings:
    """Everything the app is configured with (the module docstring's table); built once, never changed."""

    home: Path | None = None  # None: default_home(); always a resolved Path after construction
    registry: Path | None = None  # None: home / checkpoints / registry.json
    samples_manifest: Path | None = None  # None: home / assets / samples.json
    samples_dir: Path | None = None
    dataset: str = ""
    max_side: int = DEFAULT_MAX_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_sessions: int = 32
    result_minutes: float = 60.0
    # The stored runs' byte budget: with the shipped pair the CPU app holds about 1 GB of models, Gradio and
    # libraries; 1024 MB of runs (about 16 compacted 1024 x 1024 runs, 60+ of CamVid size) and the dataset view's
    # quarter keep it under about 3 GB with a run being computed.
    run_mb: float = 1024.0
    gallery: int = 24
    queue: int = 32
    rank_max: int = 120
    # None: ifa.app.dataset_view.RANK_SECONDS (30), read when a ranking runs
    rank_seconds: float | None = None
    max_pairs: int = 2
    max_work_mpx: float | None = None  # None: 64 on a GPU, 2 on the CPU (ifa.app.engine.configure)
    precision: str = "auto"
    allow_local_pairs: bool = False
    max_weights_mb: float = 500.0
    host: str | None = None
    port: int | None = None

    def __post_init__(self):
        home = Path(self.home).expanduser().resolve() if self.home is not None else default_home()
        object.__setattr__(self, "home", home)
        object.__setattr__(self, "registry", Path(self.registry).expanduser() if self.registry is not None
                           else home / "checkpoints" / "registry.json")
        object.__setattr__(self, "samples_manifest", Path(self.samples_manifest).expanduser()
                           if self.samples_manifest is not None else home / "assets" / "samples.json")
        if self.samples_dir is not None:
            object.__setattr__(self, "samples_dir", Path(self.samples_dir).expanduser())
        for name in ("max_side", "max_pixels", "max_sessions", "gallery", "queue", "rank_max", "max_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AppSettings.{name} must be a positive whole number, got {value!r}")
        for name in ("result_minutes", "run_mb", "rank_seconds", "max_work_mpx", "max_weights_mb"):
            value = getattr(self, name)
            if value is None and name in ("rank_seconds", "max_work_mpx"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    value < 0 if name == "rank_seconds" else value <= 0):
                raise ValueError(f"AppSettings.{name} must be a positive number, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"AppSettings.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"AppSettings.port must lie in 1..65535, got {self.port!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, args=None) -> AppSettings:
        """The settings of the variables in `environ` (default os.environ) and the command-line `args` (an
        argparse namespace with home, registry, host, port; a flag given wins over its variable)."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str:
            return str(env.get(name, "") or "").strip()

        def number(name: str, kind=float, allow_zero: bool = False):
            value = text(name)
            if not value:
                return None
            try:
                parsed = kind(value)
            except ValueError:
                raise ValueError(f"{name} must be a {'whole ' if kind is int else ''}number, got {value!r}") from None
            if not math.isfinite(parsed) or parsed < 0 or (parsed == 0 and not allow_zero):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
            return parsed

        def flag(name: str):
            return getattr(args, name, None) if args is not None else None

        values = {
            "home": flag("home") or text("IFA_APP_HOME") or None,
            "registry": flag("registry") or text("IFA_REGISTRY") or None,
            "samples_manifest": text("IFA_SAMPLES_MANIFEST") or None,
            "samples_dir": text("IFA_SAMPLES_DIR") or None,
            "dataset": text("IFA_APP_DATASET"),
            "max_side": number("IFA_APP_MAX_SIDE", int),
            "max_pixels": number("IFA_APP_MAX_PIXELS", int),
            "max_sessions": number("IFA_APP_MAX_SESSIONS", int),
            "result_minutes": number("IFA_APP_RESULT_MINUTES"),
            "run_mb": number("IFA_APP_RUN_MB"),
            "gallery": number("IFA_APP_GALLERY", int),
            "queue": number("IFA_APP_QUEUE", int),
            "rank_max": number("IFA_APP_RANK_MAX", int),
            "rank_seconds": number("IFA_APP_RANK_SECONDS", allow_zero=True),
            "max_pairs": number("IFA_APP_MAX_PAIRS", int),
            "max_work_mpx": number("IFA_APP_MAX_WORK_MPX", allow_zero=True) or None,  # 0: the device's default
            "precision": text("IFA_APP_PRECISION").lower() or None,
            "max_weights_mb": number("IFA_APP_MAX_WEIGHTS_MB"),
            "host": flag("host"),
            "port": flag("port"),
        }
        if values["precision"] is not None and values["precision"] not in PRECISIONS:
            raise ValueError(f"IFA_APP_PRECISION must be one of {', '.join(PRECISIONS)}, got "
                             f"{text('IFA_APP_PRECISION')!r}")
        # Local folders in typed pairs: only when the operator says so, and never on a Hugging Face Space.
        allow_local = text("IFA_APP_ALLOW_LOCAL_PAIRS") == "1" and not text("SPACE_ID")
        given = {key: value for key, value in values.items() if value is not None}
        if "rank_seconds" in given and values["rank_seconds"] is not None:
            given["rank_seconds"] = float(given["rank_seconds"])
        return cls(**given, allow_local_pairs=allow_local)

    @property
    def run_bytes(self) -> int:
        """IFA_APP_RUN_MB in bytes."""
        return int(self.run_mb * 2 ** 20)

    @property
    def max_weights_bytes(self) -> int:
        """IFA_APP_MAX_WEIGHTS_MB in bytes."""
        return int(self.max_weights_mb * 2 ** 20)
