"""Nothing leaked: no API answer, summary JSON or error message of the app names a path of the server, how it
reaches the Hub, or its cache; echoed inputs are shortened.

The app is launched on localhost; every public endpoint but /export_figure (whose bundle names its files on
purpose) is called, with good and bad inputs, by a gradio_client that does not download files, and every answer
is scanned recursively. Gradio's own file payloads (the "path" and "url" of an output file it serves) are the
one exception.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, LaunchedApp, app_env, shipped_pair_present

pytestmark = [pytest.mark.slow,  # gradio's own pandas deprecation notices
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]


def _forbidden() -> re.Pattern:
    from huggingface_hub import constants

    roots = {"/work/", "/tmp/", "/root/", "/home/", str(ROOT), tempfile.gettempdir(), str(Path.home()),
             str(constants.HF_HUB_CACHE), "HF_HUB_OFFLINE", "HF_HOME", "HF_ENDPOINT"}
    return re.compile("|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True)))


FORBIDDEN = _forbidden()


def _is_gradio_file(value) -> bool:
    return isinstance(value, dict) and (value.get("meta") or {}).get("_type") == "gradio.FileData"


def leaks(value, where: str = "answer") -> list[str]:
    """Every string inside `value` (dicts, lists, JSON text) that names a forbidden path or setting."""
    found = []
    if _is_gradio_file(value):
        value = {k: v for k, v in value.items() if k not in ("path", "url")}
    if isinstance(value, dict):
        for key, item in value.items():
            found += leaks(key, f"{where} key") + leaks(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            found += leaks(item, f"{where}[{k}]")
    elif isinstance(value, str):
        if FORBIDDEN.search(value):
            found.append(f"{where}: {value[:300]}")
        if value.lstrip().startswith(("{", "[")):
            try:
                found += leaks(json.loads(value), f"{where} (JSON)")
            except ValueError:
                pass
    return found


@pytest.fixture(scope="module")
def app(pair_registry, tmp_path_factory):
    launched = LaunchedApp(app_env(pair_registry[0], None, tmp_path_factory.mktemp("dl")))
    yield launched
    launched.close()


def test_no_answer_or_message_names_a_server_path(app, pair_registry, small_image, monkeypatch):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from huggingface_hub import constants

    import ifa.app.dataset_view as dataset_view

    monkeypatch.setattr(dataset_view, "RANK_SECONDS", 0.1)  # one image per ranking request is enough here
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    client = Client(app.url, verbose=False, download_files=False, httpx_kwargs={"timeout": 600})
    pair = pair_registry[1]
    answers, errors = {}, {}

    def call(name, *args, api_name):
        try:
            answers[name] = client.predict(*args, api_name=api_name)
        except AppError as err:
            errors[name] = str(err)

    call("catalog", api_name="/catalog")
    catalog = answers["catalog"]
    sample = catalog["samples"][0]["name"]
    call("load_pair", pair, api_name="/load_pair")
    call("segment sample", None, None, sample, pair, ["1.0"], False, "stride4", 0.5, None, 64, api_name="/segment")
    call("render", 0.7, None, 64, api_name="/render")
    call("analyse", api_name="/analyse")
    call("probe", 20, 10, api_name="/probe")
    call("ablation", api_name="/alignment_ablation")
    call("segment upload", handle_file(str(small_image)), None, None, pair, ["1.0"], False, "stride4", 0.5, None,
         64, api_name="/segment")
    call("rank", "shipped samples", pair, ["1.0"], False, "stride4", api_name="/dataset_rank")
    call("compare_models", handle_file(str(small_image)), None, pair, ["1.0"], False, "stride4", "",
         api_name="/compare_models")
    assert not errors, errors
    # bad inputs: each a clear, short error
    huge = "org/" + "x" * 6000
    call("hub offline", "org/fpn", "", "org/ifa", "", api_name="/load_hub_pair")
    call("hub huge id", huge, "", "org/ifa", "", api_name="/load_hub_pair")
    call("hub huge revision", "org/fpn", "r" * 6000, "org/ifa", "", api_name="/load_hub_pair")
    call("unknown pair", None, None, sample, "p" * 6000, ["1.0"], False, "stride4", 0.5, None, 64,
         api_name="/segment")
    call("unknown sample", None, None, "s" * 6000, pair, ["1.0"], False, "stride4", 0.5, None, 64,
         api_name="/segment")
    call("bad resolution", None, None, sample, pair, ["1.0"], False, "r" * 6000, 0.5, None, 64, api_name="/segment")
    call("bad scale", None, None, sample, pair, ["1" * 6000], False, "stride4", 0.5, None, 64, api_name="/segment")
    call("bad source", "s" * 6000, pair, ["1.0"], False, "stride4", api_name="/dataset_rank")
    assert set(errors) == {"hub offline", "hub huge id", "hub huge revision", "unknown pair", "unknown sample",
                           "bad resolution", "bad scale", "bad source"}, errors

    found = leaks(answers) + leaks(errors, "errors")
    assert not found, "\n".join(found)
    assert all(len(message) < 400 for message in errors.values()), {k: len(v) for k, v in errors.items()}
    assert "could not be downloaded (offline or unreachable)" in errors["hub offline"], errors["hub offline"]
    assert "not a Hub repo id" in errors["hub huge id"] and "…" in errors["hub huge id"]
    # local pairs are named relative to the app's home (the shipped registry's) or by their folder's name
    locations = [p[side]["location"] for p in catalog["pairs"] for side in ("baseline", "ifa")]
    if shipped_pair_present():
        assert "checkpoints/camvid-effl0-fpn" in locations and "checkpoints/camvid-effl0-ifa" in locations
        assert catalog["registry"] == "checkpoints/registry.json"
    summary = answers["segment sample"][-3]
    assert summary["pair"] == catalog["pairs"][0]
    # output files are still served: Gradio's payloads for the two label maps
    downloads = answers["segment sample"][-1]
    assert len(downloads) == 2 and all(_is_gradio_file(f) and f["url"].startswith(app.url) for f in downloads)


def test_messages_shorten_inputs_and_hide_paths():
    from ifa.app.handlers import public_message
    from ifa.app.registry import shorten

    assert shorten("a" * 6000) == "'" + "a" * 78 + "…" and shorten("org/name") == "'org/name'"
    text = public_message(f"checkpoint folder not found: {ROOT}/checkpoints/x ({tempfile.gettempdir()}/y/z.png); "
                          f"see https://huggingface.co/org/name and {'q' * 6000}")
    assert "checkpoints/x" in text and "(z.png)" in text and "https://huggingface.co/org/name" in text
    assert not FORBIDDEN.search(text) and len(text) < 300, text
