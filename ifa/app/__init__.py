"""The comparison app's logic (app.py at the project root only wires the UI).

- settings: AppSettings, every setting of the app, read once from the environment and the command line
- engine: model-running functions (ZeroGPU-ready), the device and the cache of loaded pairs (`configure(settings)`)
- service: AppService, one method per UI event / API endpoint, errors as clear gr.Error messages
- views: what is shown, from arrays (overlays, difference regions, scores, feature panels, probes)
- probe: geometry of what each model reads at a pixel
- samples: the sample manifest and IFA_SAMPLES_DIR
- results: one run and the bounded store of runs

`main` (the `ifa-app` console script) is importable without Gradio, so that an install without the app extra
says which extra to install instead of failing on an import.
"""

from __future__ import annotations

import sys

APP_EXTRA = "pip install 'ifa-explorer[app]'"

__all__ = ["AppService", "main"]


def __getattr__(name: str):
    if name == "AppService":  # imported on first use: it needs Gradio
        from .service import AppService

        return AppService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """`ifa-app`: serve the app (ifa.app.ui.main); without Gradio, one line naming the extra to install."""
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        print(f"ifa-app: the app needs Gradio, which is not installed here: {APP_EXTRA} (or pip install -r "
              f"requirements.txt in a checkout)", file=sys.stderr)
        return 2
    from .ui import main as serve

    return serve(argv)
