"""Resolve a checkpoint: a local folder, or a Hub repo id (+ pinned revision) through huggingface_hub.

Which one a string names follows one written rule (`resolve_checkpoint`): paths are written as paths ("./x",
"/x", "~/x", "a/b/c") or are existing folders holding config.json; "org/name" is otherwise always a repo id,
whatever folders the working directory holds. A local folder is used as it is. A Hub repo id is downloaded
file by file (config.json, model.safetensors, and README.md when the repo has one) into the normal Hugging Face cache
(HF_HUB_CACHE / HF_HOME) at `revision`: a branch, a tag or a full 40-character commit sha
(default "main"). The endpoint, cache and offline switch are huggingface_hub.constants, which huggingface_hub
sets from HF_ENDPOINT, HF_HUB_CACHE / HF_HOME and HF_HUB_OFFLINE when it is imported: set those variables before
the first import (tests patch the constants instead). Then:

- a full commit sha that is already cached loads without any request;
- otherwise the Hub is asked once for the revision (one request, no retries) before any download,
  so an unreachable Hub falls back to the cache at once (with a warning) instead of retrying for
  several seconds; "main" and other names need their refs/ entry in the cache, which a first online load writes;
- with HF_HUB_OFFLINE=1 only the cache is used.

Every failure is one exception with a one-line message naming the repo, revision and file:
HubError for the Hub side (repo, revision or file not found, no network, offline with a cold cache,
refused upload), CheckpointError for a local folder that does not exist or files that do not form
a loadable checkpoint.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .io import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from .models.checkpoint import CheckpointError, load_checkpoint_folder, read_config
from .models.config import ConfigError
from .models.segmentor import SegmentationModel

DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"[0-9a-f]{40}")
# The Hub cannot be reached: no network, refused connection, timeout, proxy, HF_HUB_OFFLINE.
_UNREACHABLE = (httpx2.TransportError, OfflineModeIsEnabled)


class HubError(RuntimeError):
    """A Hub repo, revision or file that cannot be reached or used: not found, no network, offline with a
    cold cache, an upload refused."""


class HubUnreachableError(HubError):
    """The Hub cannot be reached (no network, HF_HUB_OFFLINE) and the local cache lacks what is needed."""


def resolve_checkpoint(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint folder for `path_or_repo_id` (downloaded into the HF cache when a repo id).

    Local path or Hub repo id, the rule:

    - a `pathlib.Path` (any os.PathLike) is a local path;
    - so is a string written as a path: it starts with ".", "/" or "~" ("./org/name", "../x", "~/ckpt"), is
      absolute, contains the system's own separator ("\\" on Windows), or has more than one "/" ("runs/a/final");
    - a string shaped like a repo id, "org/name" or "name", is a local path only when that folder exists AND
      holds config.json (a checkpoint folder); otherwise it is a Hub repo id, even when a folder "org/" or an
      "org/name" without config.json exists in the working directory. Write "./org/name" to mean the folder.

    `revision` applies to repo ids only.
    """
    return _resolve(path_or_repo_id, revision)[0]


def load_model(path_or_repo_id: str | Path, revision: str | None = None,
               num_classes: int | None = None) -> SegmentationModel:
    """Load a checkpoint folder or Hub repo as an fp32 CPU model in eval mode."""
    folder, where = _resolve(path_or_repo_id, revision)
    if where is None:
        return load_checkpoint_folder(folder, num_classes=num_classes)
    try:
        return load_checkpoint_folder(folder, num_classes=num_classes)
    except CheckpointError as err:
        raise CheckpointError(f"{where} (commit {folder.name}): {err}") from err


def load_hub_model(repo_id: str, revision: str | None = None,
                   max_weights_bytes: int | None = None) -> SegmentationModel:
    """Load a Hub repo, never a local path: for an app that takes repo ids from the public.

    `repo_id` is always read as 'org/name' on the Hub (an existing folder of that name is not looked at);
    config.json is fetched and validated before the weights; weights larger than `max_weights_bytes` are
    refused before they are downloaded. Error messages name the repo, never a path of this machine.
    """
    repo_id = str(repo_id or "").strip()
    _check_repo_id(repo_id)
    revision = revision or DEFAULT_REVISION
    where = f"Hub repo '{repo_id}' at revision '{revision}'"
    try:
        folder = _download(repo_id, revision, where, max_weights_bytes)
        return load_checkpoint_folder(folder)
    except HubUnreachableError:  # how this server reaches the Hub (offline switch, endpoint, cache) is its own
        raise HubError(f"{where}: the model could not be downloaded (offline or unreachable)") from None
    except (HubError, CheckpointError) as err:
        raise type(err)(_without_paths(str(err))) from None


def _without_paths(text: str) -> str:
    """`text` with this machine's cache folder, home directory and Hub endpoint replaced by words."""
    text = text.replace(f" at {constants.ENDPOINT}", "")
    for path, words in ((constants.HF_HUB_CACHE, "the server's cache"), (str(Path.home()), "~"),
                        (constants.ENDPOINT, "the Hub")):
        if path:
            text = text.replace(str(path), words)
    return text


def push_to_hub(folder: str | Path, repo_id: str, revision: str | None = None, private: bool = False,
                token: str | None = None, commit_message: str = "Upload FPN / IFA segmentation checkpoint") -> str:
    """Upload a checkpoint folder to a Hub model repo; returns the commit sha.

    The folder must load (config.json + model.safetensors, checked first); those two files and
    README.md are uploaded, nothing else. The repo is created when missing (`private` applies then
    only); `revision` is a branch, created from "main" when missing. `token` defaults to the
    logged-in one (HF_TOKEN or `hf auth login`).
    """
    folder = Path(folder).expanduser()
    where = f"Hub repo '{repo_id}'" + (f" (branch '{revision}')" if revision else "")
    _check_repo_id(repo_id)
    if revision is not None and _COMMIT.fullmatch(revision):
        raise HubError(f"cannot push to {where}: a commit sha is not a branch; give a branch name or None for main")
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"cannot push {folder} to {where}: HF_HUB_OFFLINE is set")
    load_checkpoint_folder(folder)  # CheckpointError before anything is sent
    files = [name for name in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if (folder / name).is_file()]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, DEFAULT_REVISION):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, allow_patterns=files, revision=revision,
                                 commit_message=commit_message)
    except _UNREACHABLE as err:
        raise HubError(f"cannot reach the Hub at {constants.ENDPOINT} to push {folder} to {where} "
                       f"({_brief(err)})") from err
    except HfHubHTTPError as err:
        if isinstance(err, RepositoryNotFoundError) or err.response.status_code in (401, 403):
            raise HubError(f"not allowed to write to {where} at {constants.ENDPOINT} ({_brief(err)}): log in with "
                           f"`hf auth login`, set HF_TOKEN or pass token= (a token with write access)") from err
        raise HubError(f"pushing {folder} to {where} failed ({_brief(err)})") from err
    return info.oid


# --- resolution ----------------------------------------------------------------------------------


def _resolve(path_or_repo_id: str | Path, revision: str | None) -> tuple[Path, str | None]:
    """(local folder, None) for a local checkpoint; (cache snapshot folder, "Hub repo ... at revision ...") else."""
    if not str(path_or_repo_id).strip():
        raise CheckpointError("no checkpoint given: pass a checkpoint folder or a Hub repo id")
    local = _as_local_path(path_or_repo_id)
    if local is not None:
        if not local.exists():
            raise CheckpointError(f"checkpoint folder not found: {path_or_repo_id} ({local.absolute()})")
        if not local.is_dir():
            raise CheckpointError(f"{local} is a file; a checkpoint is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
        if revision is not None:
            raise HubError(f"revision={revision!r} applies to Hub repos, but {path_or_repo_id} is a local folder")
        return local, None
    repo_id = str(path_or_repo_id)
    revision = revision or DEFAULT_REVISION
    where = f"Hub repo '{repo_id}' at revision '{revision}'"
    _check_repo_id(repo_id)
    return _download(repo_id, revision, where), where


def _as_local_path(path_or_repo_id: str | Path) -> Path | None:
    """The local path `path_or_repo_id` names, or None when it is a Hub repo id (the rule: `resolve_checkpoint`)."""
    if isinstance(path_or_repo_id, os.PathLike):
        return Path(path_or_repo_id).expanduser()
    text = str(path_or_repo_id)
    path = Path(text).expanduser()
    separators = [sep for sep in (os.sep, os.altsep) if sep and sep != "/"]
    written_as_path = (text.startswith((".", "~", "/")) or os.path.isabs(text)
                       or any(sep in text for sep in separators) or text.count("/") > 1)
    if written_as_path or (path / CONFIG_NAME).is_file():
        return path
    return None


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id "
                       f"('org/name'): {err}") from err


def _download(repo_id: str, revision: str, where: str, max_weights_bytes: int | None = None) -> Path:
    """The cache snapshot folder holding config.json, model.safetensors (and README.md) of repo_id@revision.

    config.json comes first and must describe a model of this project before the weights are fetched;
    weights above `max_weights_bytes` (when given) are refused before their download."""
    if constants.HF_HUB_OFFLINE:
        return _from_cache(repo_id, revision, where, reason="HF_HUB_OFFLINE is set")
    if _COMMIT.fullmatch(revision):  # an immutable commit that is already cached needs no request at all
        try:
            return _cached_snapshot(repo_id, revision)
        except _NotCached:
            pass
    api = HfApi()
    try:  # one request without retries: reachability, repo and revision, before any download
        info = api.repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except GatedRepoError as err:
        raise HubError(f"{where} is gated: accept its conditions on the Hub, then log in with `hf auth login` "
                       f"or set HF_TOKEN") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"Hub repo '{repo_id}' not found at {constants.ENDPOINT} (nor a local checkpoint folder of "
                       f"that name, which holds {CONFIG_NAME}); if it is private, log in with `hf auth login` or set "
                       f"HF_TOKEN; for a local folder write ./{repo_id}") from err
    except RevisionNotFoundError as err:
        raise HubError(f"revision '{revision}' not found in Hub repo '{repo_id}': give a branch, a tag or "
                       f"a full commit sha of that repo") from err
    except (*_UNREACHABLE, HfHubHTTPError) as err:
        if isinstance(err, HfHubHTTPError) and err.response.status_code < 500:
            raise HubError(f"{where}: the Hub at {constants.ENDPOINT} refused the request ({_brief(err)})") from err
        reason = f"cannot reach the Hub at {constants.ENDPOINT} ({_brief(err)})"
        folder = _from_cache(repo_id, revision, where, reason=reason)
        warnings.warn(f"{reason}; using the cached copy of {where} (commit {folder.name})", stacklevel=4)
        return folder
    siblings = [s.rfilename for s in info.siblings] if info.siblings is not None else None
    # config.json at the revision's name so that refs/<revision> is cached for later offline use;
    # the other files at the commit it resolved to, so that all of them come from one commit.
    config = _fetch(repo_id, CONFIG_NAME, revision, where, siblings)
    commit = config.parent.name
    try:
        read_config(config.parent)
    except (CheckpointError, ConfigError) as err:
        reason = str(err).split(f"{CONFIG_NAME}: ", 1)[-1]  # without the cache path
        raise CheckpointError(f"{where} (commit {commit}): its {CONFIG_NAME} does not describe a model of this "
                              f"project ({reason}); its weights were not downloaded") from None
    if max_weights_bytes is not None:
        _check_weights_size(repo_id, commit, where, max_weights_bytes)
    _fetch(repo_id, WEIGHTS_NAME, commit, where, siblings)
    if siblings is None or CARD_NAME in siblings:
        try:
            _fetch(repo_id, CARD_NAME, commit, where, siblings)
        except HubError:
            pass  # the model card is optional
    return config.parent


def _check_weights_size(repo_id: str, commit: str, where: str, limit: int) -> None:
    """HubError when the repo's weights file is larger than `limit` bytes (asked with one HEAD request)."""
    try:
        size = get_hf_file_metadata(hf_hub_url(repo_id, WEIGHTS_NAME, revision=commit)).size
    except RemoteEntryNotFoundError:
        return  # missing weights: the download below says so
    except _UNREACHABLE as err:
        raise HubUnreachableError(f"asking the size of {WEIGHTS_NAME} of {where} failed ({_brief(err)})") from err
    except (HfHubHTTPError, OSError) as err:
        raise HubError(f"asking the size of {WEIGHTS_NAME} of {where} failed ({_brief(err)})") from err
    if size is not None and size > limit:
        raise HubError(f"{where}: {WEIGHTS_NAME} is {size / 2 ** 20:.0f} MB; this app loads weights up to "
                       f"{limit / 2 ** 20:.0f} MB, so it was not downloaded")


def _fetch(repo_id: str, filename: str, revision: str, where: str, siblings: list[str] | None) -> Path:
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except RemoteEntryNotFoundError as err:
        holds = f"; it holds {', '.join(sorted(siblings)) or 'no files'}" if siblings is not None else ""
        raise HubError(f"{where} has no {filename}: not a checkpoint of this project, which needs "
                       f"{CONFIG_NAME} and {WEIGHTS_NAME}{holds}") from err
    except (LocalEntryNotFoundError, *_UNREACHABLE) as err:
        raise HubUnreachableError(f"downloading {filename} of {where} failed ({_brief(err)})") from err
    except (HfHubHTTPError, OSError) as err:
        raise HubError(f"downloading {filename} of {where} failed ({_brief(err)})") from err


def _from_cache(repo_id: str, revision: str, where: str, reason: str) -> Path:
    """The cached snapshot folder of repo_id@revision, without any request; HubError naming `reason` if cold."""
    try:
        return _cached_snapshot(repo_id, revision)
    except _NotCached as miss:
        if miss.known_missing:
            raise HubError(f"{reason}, and the cache records that {where} has no {miss.filename}: not a checkpoint "
                           f"of this project, which needs {CONFIG_NAME} and {WEIGHTS_NAME}") from None
        fix = ("unset HF_HUB_OFFLINE to download it" if constants.HF_HUB_OFFLINE else
               "check the network and HF_ENDPOINT; to work offline set HF_HUB_OFFLINE=1")
        raise HubUnreachableError(f"{reason}, and {where} is not in the local cache ({constants.HF_HUB_CACHE}; "
                       f"{miss.filename} missing): {fix}, or load a revision downloaded before "
                       f"(pinning its full commit sha needs no network)") from None


class _NotCached(Exception):
    def __init__(self, filename: str, known_missing: bool):
        super().__init__(filename)
        self.filename, self.known_missing = filename, known_missing


def _cached_snapshot(repo_id: str, revision: str) -> Path:
    """The cache snapshot folder with repo_id@revision's config.json and model.safetensors, from the disk alone.

    Raises _NotCached(first missing file, whether the cache records that the repo lacks it).
    """
    path, commit = None, revision
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        path = try_to_load_from_cache(repo_id, filename, revision=commit)
        if not isinstance(path, str):
            raise _NotCached(filename, known_missing=path is not None)
        commit = Path(path).parent.name
    return Path(path).parent


def _brief(err: BaseException) -> str:
    """One line about `err`: its type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines and lines[0].endswith("Client Error.") else (lines[0] if lines else "")
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
