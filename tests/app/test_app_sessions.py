"""Many users at once: every API client keeps its own run.

10 gradio_client sessions, each with its own image (a CamVid val image at its own size), run
/segment -> /probe -> /analyse three rounds, all at the same time. Every request must answer with that
client's own run (its image size, its probe point, its image's analysis), and none may lose its run,
though together they make 30 runs (the old process-wide store kept 8).
"""

from __future__ import annotations

import resource
import statistics
import threading
import time

import numpy as np
import pytest
from conftest import LaunchedApp, app_env
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
CLIENTS, ROUNDS = 10, 3


@pytest.fixture(scope="module")
def app(pair_registry, tmp_path_factory):
    registry, _ = pair_registry
    launched = LaunchedApp(app_env(registry, None, tmp_path_factory.mktemp("dl")))
    yield launched
    launched.close()


def client_images(camvid_val, folder) -> list[tuple[str, tuple[int, int]]]:
    """One small image per client, each of its own size (W, H), from different CamVid val frames."""
    names = sorted(p.name for p in camvid_val.glob("*.png"))[:CLIENTS]
    images = []
    for i, name in enumerate(names):
        size = (120 + 8 * i, 90 + 4 * i)
        path = folder / f"client{i}.png"
        with Image.open(camvid_val / name) as img:
            img.convert("RGB").resize(size, Image.BILINEAR).save(path)
        images.append((str(path), size))
    return images


def test_concurrent_sessions_keep_their_own_runs(app, pair_registry, camvid_val, tmp_path):
    from gradio_client import handle_file

    pair_id = pair_registry[1]
    images = client_images(camvid_val, tmp_path)
    clients = [app.new_client() for _ in range(CLIENTS)]
    errors, latencies, checks = [], [], []
    start_line = threading.Barrier(CLIENTS)

    def user(i: int) -> None:
        client, (path, (w, h)) = clients[i], images[i]
        start_line.wait()
        for round_ in range(ROUNDS):
            try:
                t0 = time.perf_counter()
                out = client.predict(handle_file(path), None, None, pair_id, ["1.0"], False, "stride4", 0.5, None,
                                     64, api_name="/segment")
                latencies.append(time.perf_counter() - t0)
                summary = out[14]
                x, y = (3 * i + round_) % w, (5 * i + round_) % h
                probe = client.predict(x, y, api_name="/probe")
                *_, md = client.predict(api_name="/analyse")
                with Image.open(out[15]) as shown:  # the input as used, for probing
                    own = shown.size == (w, h)
                checks.append((summary["size"] == {"height": h, "width": w}, own, (probe[-2], probe[-1]) == (x, y),
                               f"x={x}, y={y}" in probe[4], "principal components" in md))
            except Exception as err:  # noqa: BLE001 - every failure is reported below
                errors.append(f"client {i} round {round_}: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q = np.percentile(latencies, [50, 90, 100]) if latencies else [float("nan")] * 3
    print(f"{CLIENTS} clients x {ROUNDS} rounds in {wall:.1f} s: /segment latency p50 {q[0]:.2f} s, p90 {q[1]:.2f} s, "
          f"max {q[2]:.2f} s (mean {statistics.fmean(latencies) if latencies else float('nan'):.2f}); "
          f"peak RSS {peak_mb:.0f} MB; errors {len(errors)}")
    assert not any(t.is_alive() for t in threads), "a client did not finish in time"
    assert not errors, errors[:3]
    assert len(checks) == CLIENTS * ROUNDS
    assert all(all(c) for c in checks), [c for c in checks if not all(c)][:3]
