"""ifa.hub against a loopback Hub (tests/hub_server.py): real huggingface_hub downloads and uploads, no network.

huggingface_hub reads HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE into `huggingface_hub.constants` at
import; ifa.hub reads those constants when called, so patching them (monkeypatch) is enough.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

import ifa
from ifa import CheckpointError, HubError, create_model, load_model, push_to_hub, save_pretrained
from ifa.hub import resolve_checkpoint
from ifa.io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub, point_hf_at  # noqa: E402

REPO = "org/tiny"
TINY = dict(architecture="ifa", backbone="efficientnet_lite0", num_classes=3, neck_channels=8, mlp_channels=[16, 8])
FAST = 8.0  # seconds, generous for a loaded CI machine: no-network paths take milliseconds, retries would take ~23 s


def tiny(seed: int):
    torch.manual_seed(seed)
    return create_model(**TINY).eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two checkpoints with different weights: v1 (old commit) and v2 (newest, "main")."""
    root = tmp_path_factory.mktemp("sources")
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = {"image": image}
    for name, seed in (("v1", 1), ("v2", 2)):
        model = tiny(seed)
        folder = save_pretrained(model, root / name, card=f"# tiny {name}\n")
        with torch.no_grad():
            out[name] = {"folder": folder, "state": model.state_dict(), "logits": model(image)}
    return out


@pytest.fixture
def hub(sources, tmp_path, monkeypatch):
    """A running FakeHub with REPO = [v1, v2] ("main" -> v2) and huggingface_hub pointed at it, empty cache."""
    server = FakeHub()
    server.shas = {name: server.add_folder(REPO, sources[name]["folder"]) for name in ("v1", "v2")}
    server.start()
    point_hf_at(monkeypatch, server.url, tmp_path / "hf-cache")
    yield server
    server.stop()


def offline(monkeypatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_same_weights(model, source) -> None:
    state = model.state_dict()
    assert state.keys() == source["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in source["state"].items())


def assert_same_outputs(model, source, image) -> None:
    with torch.no_grad():
        assert torch.equal(model(image), source["logits"])


def assert_same_files(folder: Path, source) -> None:
    """A downloaded snapshot holds exactly the source checkpoint's config and weights (cheaper than a model)."""
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (folder / name).read_bytes() == (source["folder"] / name).read_bytes(), name


# --- downloads -----------------------------------------------------------------------------------


def test_main_downloads_the_newest_commit(hub, sources):
    model = load_model(REPO)
    assert_same_outputs(model, sources["v2"], sources["image"])
    assert_same_weights(model, sources["v2"])
    folder = resolve_checkpoint(REPO)
    assert folder.name == hub.shas["v2"]
    assert folder.is_relative_to(Path(constants.HF_HUB_CACHE))
    assert {p.name for p in folder.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME}
    assert (folder / CARD_NAME).read_text() == "# tiny v2\n"
    assert ("GET", f"/{REPO}/resolve/{hub.shas['v2']}/{WEIGHTS_NAME}") in hub.requests


def test_pinned_old_revision_gives_the_old_weights(hub, sources):
    model = load_model(REPO, revision=hub.shas["v1"])
    assert_same_outputs(model, sources["v1"], sources["image"])
    with torch.no_grad():
        assert not torch.equal(model(sources["image"]), sources["v2"]["logits"])
    assert resolve_checkpoint(REPO, revision=hub.shas["v1"]).name == hub.shas["v1"]


def test_branch_name_follows_the_branch(hub, sources):
    assert_same_files(resolve_checkpoint(REPO, revision="main"), sources["v2"])
    sha = hub.add_folder(REPO, sources["v1"]["folder"], message="roll back to v1")
    folder = resolve_checkpoint(REPO)
    assert folder.name == sha
    assert_same_files(folder, sources["v1"])
    hub.add_folder(REPO, sources["v2"]["folder"], branch="dev")
    assert_same_files(resolve_checkpoint(REPO, revision="dev"), sources["v2"])


def test_cached_pinned_revision_makes_no_request(hub, sources):
    resolve_checkpoint(REPO, revision=hub.shas["v1"])
    hub.clear_requests()
    assert_same_weights(load_model(REPO, revision=hub.shas["v1"]), sources["v1"])
    assert hub.requests == []


def test_cached_main_costs_two_small_requests_and_no_download(hub):
    resolve_checkpoint(REPO)
    hub.clear_requests()
    resolve_checkpoint(REPO)
    assert [method for method, _ in hub.requests] == ["GET", "HEAD"]  # revision info, config.json's metadata


def test_cached_revisions_load_offline_with_the_server_stopped(hub, sources, monkeypatch):
    resolve_checkpoint(REPO, revision=hub.shas["v1"])
    resolve_checkpoint(REPO)  # caches refs/main -> v2
    hub.stop()
    offline(monkeypatch)
    start = time.monotonic()
    assert_same_files(resolve_checkpoint(REPO), sources["v2"])
    assert_same_files(resolve_checkpoint(REPO, revision="main"), sources["v2"])
    assert resolve_checkpoint(REPO, revision=hub.shas["v1"]).name == hub.shas["v1"]
    assert time.monotonic() - start < FAST
    assert_same_outputs(load_model(REPO, revision=hub.shas["v1"]), sources["v1"], sources["image"])


def test_server_down_uses_the_cache(hub, sources):
    resolve_checkpoint(REPO, revision=hub.shas["v1"])
    resolve_checkpoint(REPO)
    hub.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cached pinned commit needs no request, so nothing to warn about
        assert_same_files(resolve_checkpoint(REPO, revision=hub.shas["v1"]), sources["v1"])
    start = time.monotonic()
    with pytest.warns(UserWarning, match=rf"cannot reach the Hub .* using the cached copy of Hub repo '{REPO}' "
                                         rf"at revision 'main' \(commit {hub.shas['v2']}\)"):
        folder = resolve_checkpoint(REPO)
    assert time.monotonic() - start < FAST
    assert_same_files(folder, sources["v2"])


def test_hub_answering_503_uses_the_cache_or_fails_clearly(hub, sources):
    resolve_checkpoint(REPO)
    hub.fail_status = 503
    with pytest.warns(UserWarning, match="cannot reach the Hub .*503"):
        assert_same_files(resolve_checkpoint(REPO), sources["v2"])
    with pytest.raises(HubError, match=rf"503.*Hub repo '{REPO}' at revision 'dev' is not in the local cache"):
        load_model(REPO, revision="dev")



@pytest.mark.slow  # a new Python process that imports torch
def test_environment_variables_set_before_import(hub):
    """The real user setup: HF_HUB_CACHE / HF_HUB_OFFLINE / HF_ENDPOINT in the environment of a new process."""
    resolve_checkpoint(REPO, revision=hub.shas["v1"])
    resolve_checkpoint(REPO)
    hub.stop()
    script = ("import sys; from ifa.hub import resolve_checkpoint; "
              "print(resolve_checkpoint(sys.argv[1], revision=sys.argv[2]).name); "
              "print(resolve_checkpoint(sys.argv[1]).name)")
    env = {**os.environ, "HF_HUB_CACHE": constants.HF_HUB_CACHE, "HF_HUB_OFFLINE": "1",
           "HF_ENDPOINT": closed_port_url(), "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(ifa.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, REPO, hub.shas["v1"]], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [hub.shas["v1"], hub.shas["v2"]]

# --- clear errors --------------------------------------------------------------------------------


def test_missing_repo(hub):
    with pytest.raises(HubError, match=r"Hub repo 'org/absent' not found at http://127\.0\.0\.1:\d+ .*HF_TOKEN"):
        load_model("org/absent")


@pytest.mark.parametrize("revision", ["no-such-branch", "0123456789abcdef0123456789abcdef01234567"])
def test_missing_revision(hub, revision):
    with pytest.raises(HubError, match=rf"revision '{revision}' not found in Hub repo '{REPO}'"):
        load_model(REPO, revision=revision)


@pytest.mark.parametrize(("skip", "missing"), [
    ((CONFIG_NAME,), CONFIG_NAME),
    ((WEIGHTS_NAME,), WEIGHTS_NAME),
    ((CONFIG_NAME, WEIGHTS_NAME), CONFIG_NAME),
])
def test_file_missing_in_the_repo(hub, sources, skip, missing):
    sha = hub.add_folder("org/partial", sources["v1"]["folder"], skip=skip)
    held = ", ".join(sorted({CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} - set(skip)))
    with pytest.raises(HubError, match=rf"Hub repo 'org/partial' at revision 'main' has no {missing}: .*"
                                       rf"needs {CONFIG_NAME} and {WEIGHTS_NAME}; it holds {held}$"):
        load_model("org/partial")
    with pytest.raises(HubError, match=rf"at revision '{sha}' has no {missing}"):
        load_model("org/partial", revision=sha)


def test_repo_without_a_card_loads(hub, sources):
    hub.add_folder("org/nocard", sources["v1"]["folder"], skip=(CARD_NAME,))
    assert_same_weights(load_model("org/nocard"), sources["v1"])
    assert not (resolve_checkpoint("org/nocard") / CARD_NAME).exists()
    assert not any(path.endswith(CARD_NAME) for _, path in hub.requests)  # not listed, so not asked for


def test_offline_with_a_cold_cache(hub, monkeypatch):
    offline(monkeypatch)
    for revision, hint in ((None, "load a revision downloaded before"), (hub.shas["v1"], "pinning its full commit")):
        start = time.monotonic()
        with pytest.raises(HubError, match=rf"HF_HUB_OFFLINE is set, and Hub repo '{REPO}' at revision "
                                           rf"'{revision or 'main'}' is not in the local cache .*unset HF_HUB_OFFLINE"
                                           rf".*{hint}"):
            load_model(REPO, revision=revision)
        assert time.monotonic() - start < FAST
    assert hub.requests == []


def test_offline_with_a_partial_cache_names_the_missing_file(hub, monkeypatch):
    weights = resolve_checkpoint(REPO) / WEIGHTS_NAME
    weights.unlink()  # e.g. an interrupted download
    offline(monkeypatch)
    with pytest.raises(HubError, match=rf"not in the local cache \(.*; {WEIGHTS_NAME} missing\)"):
        load_model(REPO)


@pytest.mark.parametrize("revision", [None, "0123456789abcdef0123456789abcdef01234567"])
def test_no_server_with_a_cold_cache_fails_fast(tmp_path, monkeypatch, revision):
    point_hf_at(monkeypatch, closed_port_url(), tmp_path / "cache")
    start = time.monotonic()
    with pytest.raises(HubError, match=r"cannot reach the Hub at http://127\.0\.0\.1:\d+ \(ConnectError: .*\), and "
                                       rf"Hub repo '{REPO}' at revision '{revision or 'main'}' is not in the local "
                                       r"cache .*HF_ENDPOINT; to work offline set HF_HUB_OFFLINE=1"):
        load_model(REPO, revision=revision)
    assert time.monotonic() - start < FAST


def test_server_stopped_with_a_cold_cache(hub):
    hub.stop()
    with pytest.raises(HubError, match=rf"cannot reach the Hub .*'{REPO}' at revision 'dev' is not in the local"):
        load_model(REPO, revision="dev")


def test_broken_checkpoint_on_the_hub_is_a_checkpoint_error_naming_the_repo(hub, sources, tmp_path):
    bad = Path(shutil.copytree(sources["v1"]["folder"], tmp_path / "bad"))
    config = json.loads((bad / CONFIG_NAME).read_text())
    (bad / CONFIG_NAME).write_text(json.dumps({**config, "backbone": "resnet9000"}))
    sha = hub.add_folder("org/bad", bad)
    with pytest.raises(CheckpointError, match=rf"Hub repo 'org/bad' at revision 'main' \(commit {sha}\): "
                                              r".*unknown backbone 'resnet9000'"):
        load_model("org/bad")
    weights = (sources["v1"]["folder"] / WEIGHTS_NAME).read_bytes()
    config = (sources["v1"]["folder"] / CONFIG_NAME).read_bytes()
    hub.add_files("org/bad", {CONFIG_NAME: config, WEIGHTS_NAME: weights[: len(weights) // 2]})
    with pytest.raises(CheckpointError, match=r"Hub repo 'org/bad' .*unreadable or truncated"):
        load_model("org/bad")


def test_num_classes_is_checked_for_hub_checkpoints(hub):
    assert load_model(REPO, num_classes=3).config.num_classes == 3
    with pytest.raises(CheckpointError, match=rf"Hub repo '{REPO}' .*predicts 3 classes, expected 19"):
        load_model(REPO, num_classes=19)


# --- local paths never reach the Hub -------------------------------------------------------------


@pytest.mark.parametrize("name", ["./missing", "../missing/ckpt", "/definitely/not/here", "~/no-such-ckpt-dir",
                                  "a/b/c", "./tests/no-such-checkpoint"])
def test_path_that_looks_local_but_does_not_exist(hub, name, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)  # so that "tests/" exists: a partly existing path
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_model(name)
    assert hub.requests == []


def test_a_repo_id_never_becomes_a_local_path_because_of_the_working_directory(hub, sources, tmp_path, monkeypatch):
    """The rule (ifa.hub.resolve_checkpoint): "org/name" is local only when that folder holds config.json."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()  # a folder named like the org
    assert_same_weights(load_model(REPO), sources["v2"])  # org/tiny: still the Hub repo
    (tmp_path / "org" / "tiny").mkdir()  # even a folder named like the repo, when it is no checkpoint
    (tmp_path / "org" / "tiny" / "notes.txt").write_text("not a checkpoint")
    assert_same_weights(load_model(REPO), sources["v2"])
    with pytest.raises(HubError, match=r"Hub repo 'org/missing' not found .*for a local folder write ./org/missing"):
        load_model("org/missing")  # the folder org/ exists, the repo does not: a Hub error, not a path error
    with pytest.raises(CheckpointError, match=rf"{CONFIG_NAME} is missing"):
        load_model("./org/tiny")  # written as a path: the folder, whatever the Hub holds
    shutil.copytree(sources["v1"]["folder"], tmp_path / "org" / "tiny", dirs_exist_ok=True)
    requests = len(hub.requests)
    assert_same_weights(load_model(REPO), sources["v1"])  # now a checkpoint folder: local, no request
    assert len(hub.requests) == requests


def test_local_folder_is_used_as_is(hub, sources, tmp_path, monkeypatch):
    shutil.copytree(sources["v1"]["folder"], tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert_same_weights(load_model("org/tiny"), sources["v1"])  # an existing checkpoint folder wins over the repo id
    assert resolve_checkpoint(tmp_path / "org" / "tiny") == tmp_path / "org" / "tiny"
    assert resolve_checkpoint(Path("org/tiny")) == Path("org/tiny")
    assert hub.requests == []
    with pytest.raises(HubError, match="applies to Hub repos"):
        load_model("org/tiny", revision="main")
    with pytest.raises(CheckpointError, match="is a file"):
        load_model(f"org/tiny/{CONFIG_NAME}")


@pytest.mark.parametrize("name", ["not a repo!", "org/na me", ""])
def test_invalid_repo_id(hub, name):
    with pytest.raises((HubError, CheckpointError), match="valid Hub repo id|no checkpoint given"):
        load_model(name)
    assert hub.requests == []


# --- uploads -------------------------------------------------------------------------------------


def test_push_then_load(hub, sources, tmp_path):
    folder = Path(shutil.copytree(sources["v1"]["folder"], tmp_path / "ckpt"))
    (folder / "train.log").write_text("not uploaded")
    sha = push_to_hub(folder, "me/pushed", commit_message="first upload")
    repo = hub.repos["me/pushed"]
    assert repo.branches["main"] == sha and repo.commits[sha].message == "first upload"
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= set(repo.commits[sha].files) and "train.log" not in \
        repo.commits[sha].files
    # the weights (binary) went through LFS, as the Hub requires; the JSON config inline
    weights = repo.commits[sha].files[WEIGHTS_NAME]
    assert hashlib.sha256(weights).hexdigest() in hub.lfs and len(hub.lfs) == 1
    assert_same_outputs(load_model("me/pushed", revision=sha), sources["v1"], sources["image"])

    dev = push_to_hub(sources["v2"]["folder"], "me/pushed", revision="dev")
    assert repo.branches == {"main": sha, "dev": dev}
    assert_same_files(resolve_checkpoint("me/pushed", revision="dev"), sources["v2"])
    assert_same_files(resolve_checkpoint("me/pushed"), sources["v1"])


def test_push_validates_the_folder_before_any_request(hub, sources, tmp_path):
    folder = Path(shutil.copytree(sources["v1"]["folder"], tmp_path / "ckpt"))
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing"):
        push_to_hub(folder, "me/pushed")
    with pytest.raises(CheckpointError, match="does not exist"):
        push_to_hub(tmp_path / "nowhere", "me/pushed")
    assert hub.requests == [] and "me/pushed" not in hub.repos


def test_push_errors(hub, sources, monkeypatch):
    folder = sources["v1"]["folder"]
    hub.write_token = "secret"
    with pytest.raises(HubError, match=r"not allowed to write to Hub repo 'me/pushed' .*401.*HF_TOKEN"):
        push_to_hub(folder, "me/pushed", token="wrong")
    assert len(push_to_hub(folder, "me/pushed", token="secret")) == 40
    with pytest.raises(HubError, match="a commit sha is not a branch"):
        push_to_hub(folder, "me/pushed", revision=hub.shas["v1"], token="secret")
    with pytest.raises(HubError, match="valid Hub repo id"):
        push_to_hub(folder, "me/not valid", token="secret")
    offline(monkeypatch)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(folder, "me/pushed", token="secret")
    hub.stop()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubError, match=r"cannot reach the Hub at .* to push"):
        push_to_hub(folder, "me/pushed", token="secret")


def test_public_api():
    assert ifa.load_model is load_model and ifa.push_to_hub is push_to_hub and issubclass(ifa.HubError, Exception)


# --- load_hub_model: what a public app may load ---------------------------------------------------
def _weights_requested(hub) -> bool:
    return any(method == "GET" and path.endswith(WEIGHTS_NAME) for method, path in hub.requests)


def test_hub_model_loads_a_repo_and_never_a_local_folder(hub, sources, tmp_path, monkeypatch):
    from ifa.hub import load_hub_model

    model = load_hub_model(REPO)
    torch.testing.assert_close(model.state_dict(), sources["v2"]["state"])
    # a local folder that looks like a repo id is not looked at: the Hub is asked for it (and has no such repo)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sources["v1"]["folder"], tmp_path / "org" / "local")
    with pytest.raises(HubError) as err:
        load_hub_model("org/local")
    assert "not found" in str(err.value) and str(tmp_path) not in str(err.value)
    for bad in ("/etc/passwd", "../org/tiny", "not a repo"):
        with pytest.raises(HubError, match="repo id"):
            load_hub_model(bad)


def test_hub_model_validates_config_before_the_weights_and_limits_their_size(hub, sources, tmp_path):
    from ifa.hub import load_hub_model

    broken = tmp_path / "broken"
    shutil.copytree(sources["v1"]["folder"], broken)
    config = json.loads((broken / CONFIG_NAME).read_text())
    config["architecture"] = "segformer"
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    hub.add_folder("org/broken", broken)
    hub.clear_requests()
    with pytest.raises(CheckpointError, match="does not describe a model of this project") as err:
        load_hub_model("org/broken")
    assert not _weights_requested(hub) and constants.HF_HUB_CACHE not in str(err.value)
    size = (sources["v2"]["folder"] / WEIGHTS_NAME).stat().st_size
    hub.clear_requests()
    with pytest.raises(HubError, match="MB; this app loads weights up to"):
        load_hub_model(REPO, max_weights_bytes=size - 1)
    assert not _weights_requested(hub)
    assert load_hub_model(REPO, max_weights_bytes=size) is not None


def test_hub_model_errors_name_no_server_path(monkeypatch, tmp_path):
    from ifa.hub import load_hub_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "secret-cache"))
    offline(monkeypatch)
    with pytest.raises(HubError) as err:
        load_hub_model("org/absent")
    assert "secret-cache" not in str(err.value) and "HF_HUB_OFFLINE" not in str(err.value)
    assert "the model could not be downloaded (offline or unreachable)" in str(err.value)
