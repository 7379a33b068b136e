"""What one comparison in the app costs against the two models' bare forward passes, side by side.

In process: AppService.segment + AppService.analyse (both models, comparison, views, feature analysis) on a
CamVid val image, against `model(x)` of both models on the normalised image (inference mode), interleaved.
With --api the same comparison goes through the API of an app launched here on 127.0.0.1, Gradio's encoding
and transport included, two ways: with gradio_client (it opens a new HTTP connection for each call, upload and
output file: about 30 ms each, mostly its own set-up) and with Gradio's HTTP API (/gradio_api/upload,
/gradio_api/call/<name> and its event stream, the output files) over one kept-alive connection, as a browser
fetches them. Both upload the image and download every output file of both calls.

With --users N (and --api) N users then compare at once, each over its own kept-alive connection, --repeats
comparisons each: the wall time and each comparison's latency (run it with --threads 1 and 2 to choose the app's
intra-op threads; the app runs one model event at a time, the others queue).
python -m tools.bench_app_request [--threads 2] [--repeats 5] [--api [--users 2]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "camvid" / "val" / "0016E5_07959.png"


class HttpApi:
    """Gradio's HTTP API over one kept-alive connection: upload, /call/<name> + its event stream, output files."""

    def __init__(self, url: str):
        import httpx

        self.client = httpx.Client(base_url=url.rstrip("/") + "/gradio_api", timeout=120)

    def call(self, name: str, data: list, session: str) -> list:
        import json

        event = self.client.post(f"/call/{name}", json={"data": data, "session_hash": session}).json()["event_id"]
        kind = outputs = None
        with self.client.stream("GET", f"/call/{name}/{event}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind in ("complete", "error"):
                    if kind == "error":
                        raise RuntimeError(f"/{name}: {line[6:]}")
                    outputs = json.loads(line[6:])
                    break
        if outputs is None:
            raise RuntimeError(f"/{name}: the event stream ended without a result")
        for path in _file_paths(outputs):
            self.client.get(f"/file={path}").raise_for_status()
        return outputs

    def compare(self, image: Path, pair_id: str) -> None:
        import uuid

        with open(image, "rb") as f:
            uploaded = self.client.post("/upload", files={"files": (image.name, f, "image/png")}).json()[0]
        session = uuid.uuid4().hex
        picture = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
        self.call("segment", [picture, None, None, pair_id, ["1.0"], False, "stride4", 0.5, None, 64, ""], session)
        self.call("analyse", [], session)


def _file_paths(value) -> list[str]:
    """The server paths of every file object in an API output (nested lists and dicts)."""
    if isinstance(value, dict):
        if value.get("meta", {}).get("_type") == "gradio.FileData" and value.get("path"):
            return [value["path"]]
        return [p for v in value.values() for p in _file_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _file_paths(v)]
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image", type=Path, default=IMAGE)
    p.add_argument("--api", action="store_true", help="also through the API of an app launched here")
    p.add_argument("--users", type=int, default=0, help="with --api: then this many users comparing at once")
    args = p.parse_args(argv)
    if args.users and not args.api:
        p.error("--users needs --api")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    from PIL import Image

    from ifa.app import engine
    from ifa.app.service import AppService

    service = AppService()
    pair_id = service.default_pair
    pair = engine.load_pair(service._spec(pair_id))
    image = np.asarray(Image.open(args.image).convert("RGB"))
    from ifa.inference import Predictor

    x = Predictor(pair.ifa, device=engine.DEVICE).preprocess(image)

    def bare():
        with torch.inference_mode():
            pair.baseline(x.contiguous(memory_format=torch.channels_last))
            pair.ifa(x.contiguous(memory_format=torch.channels_last))

    def comparison():
        out = service.segment({"path": str(args.image)}, None, None, pair_id, ["1.0"], False, "stride4", 0.5, None,
                              64)
        service.analyse(out[0])

    fns = {"bare forwards (both models)": bare, "segment + analyse, in process": comparison}
    client = app = None
    if args.api:
        from gradio_client import Client, handle_file

        import app as app_module

        app = app_module.build_demo()
        app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, ssr_mode=False,
                   **app_module.launch_kwargs())
        client = Client(app.local_url, verbose=False, download_files=tempfile.mkdtemp())

        def through_api():
            client.predict(handle_file(str(args.image)), None, None, pair_id, ["1.0"], False, "stride4", 0.5, None,
                           64, api_name="/segment")
            client.predict(api_name="/analyse")

        fns["segment + analyse, through the API (gradio_client)"] = through_api
        http = HttpApi(app.local_url)
        fns["segment + analyse, through the API (one kept-alive connection)"] = lambda: http.compare(args.image,
                                                                                                      pair_id)
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(args.repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    users = _users_at_once(app.local_url, args.image, pair_id, args.users, args.repeats) if args.users else None
    if app is not None:
        app.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["bare forwards (both models)"]
    print(f"{torch.get_num_threads()} thread(s), {engine.device_description()}, "
          f"image {image.shape[1]}x{image.shape[0]}, "
          f"{args.repeats} interleaved repeats (medians):")
    for name, value in med.items():
        print(f"  {name}: {1e3 * value:.0f} ms ({value / base:.2f}x the bare forwards)")
    if users:
        wall, latencies = users
        print(f"  {args.users} users at once, {args.repeats} comparisons each through the API: wall {wall:.2f} s, "
              f"latency median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s")
    return 0


def _users_at_once(url: str, image: Path, pair_id: str, users: int, repeats: int) -> tuple[float, list[float]]:
    """`users` threads, each with its own kept-alive connection, run `repeats` comparisons at once: (wall s,
    every comparison's latency s)."""
    from concurrent.futures import ThreadPoolExecutor

    clients = [HttpApi(url) for _ in range(users)]

    def user(http: HttpApi) -> list[float]:
        latencies = []
        for _ in range(repeats):
            start = time.perf_counter()
            http.compare(image, pair_id)
            latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        latencies = [t for result in pool.map(user, clients) for t in result]
    wall = time.perf_counter() - start
    for http in clients:
        http.client.close()
    return wall, latencies


if __name__ == "__main__":
    raise SystemExit(main())
