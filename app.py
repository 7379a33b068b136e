"""IFA explorer: what Implicit Feature Alignment (ECCV 2022) changes compared with a Semantic FPN baseline.

`python app.py` serves the app on http://127.0.0.1:7860 (also the Hugging Face Space's entry point); the UI
is ifa.app.ui (`build_demo()` returns the gr.Blocks), the same as the `ifa-app` console script serves.
"""

try:  # ZeroGPU: `spaces` must be imported before anything touches CUDA
    import spaces  # noqa: F401
except ImportError:
    spaces = None

import sys

from ifa.app.ui import build_demo, launch_kwargs, main

__all__ = ["build_demo", "launch_kwargs", "main"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
