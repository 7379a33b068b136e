"""The comparison app's logic (app.py at the project root only wires the UI).

- engine: model-running functions (ZeroGPU-ready), the device and the cache of loaded pairs
- service: AppService, one method per UI event / API endpoint, errors as clear gr.Error messages
- views: what is shown, from arrays (overlays, difference regions, scores, feature panels, probes)
- probe: geometry of what each model reads at a pixel
- samples: the sample manifest and IFA_SAMPLES_DIR
- results: one run and the bounded store of runs
"""

from .service import AppService

__all__ = ["AppService"]
