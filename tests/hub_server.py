"""A loopback stand-in for the Hugging Face Hub HTTP API, so tests download and upload with no network.

`FakeHub` holds model and Space repos in memory (each a set of commits and branches) and serves, on
127.0.0.1 at a free port, what huggingface_hub 2.x calls (KIND is "models" or "spaces"):

  GET  /api/KIND/{repo}[/revision/{rev}]          repo info: {"id", "sha", "siblings": [{"rfilename"}]}
  GET  /api/KIND/{repo}/tree/{rev}[/{path}]        listing: [{"type": "file", "path", "size", "oid"}]
  HEAD, GET /[spaces/]{repo}/resolve/{rev}/{file}  content, with X-Repo-Commit, ETag, true Content-Length
  POST /api/repos/create, /api/validate-yaml, /api/KIND/{repo}/preupload/{rev},
       /api/KIND/{repo}/commit/{rev}, /api/KIND/{repo}/branch/{branch}     (upload_folder / create_commit)
  POST /[spaces/]{repo}.git/info/lfs/objects/batch, PUT /lfs-storage/{oid}  (the LFS "basic" transfer)

Uploads follow the Hub's rule: preupload answers "lfs" for binary files (a NUL byte in the sample) and files
over 10 MB, and a commit that carries such a file inline is rejected (400), so a file can only arrive through
LFS. The Xet transfer is not served: tests set huggingface_hub.constants.HF_HUB_DISABLE_XET, which makes
the client use the LFS batch API. Space repos are keyed "spaces/{repo}" in `hub.repos`; `hub.lfs` holds
the uploaded LFS objects by sha256.

Errors are 404s with the X-Error-Code header the Hub sends (RepoNotFound, RevisionNotFound,
EntryNotFound), which huggingface_hub maps to RepositoryNotFoundError, RevisionNotFoundError and
RemoteEntryNotFoundError. A revision is a branch name or a full commit sha. Every request is
recorded in `hub.requests` as (method, path). `hub.fail_status = 503` makes every request fail
(Hub downtime); `hub.write_token = "..."` makes write requests without that bearer token get 401.

    with FakeHub() as hub:
        hub.add_folder("org/model", "checkpoints/a")   # commit 1, "main"
        hub.add_folder("org/model", "checkpoints/b")   # commit 2, "main" moves to it
        # point huggingface_hub.constants.ENDPOINT / HUGGINGFACE_CO_URL_TEMPLATE at hub.url
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_COMMIT = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass(frozen=True)
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str


class Repo:
    """One model repo: commits by sha and branches pointing at them."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.commits: dict[str, Commit] = {}
        self.branches: dict[str, str] = {}

    def commit(self, files: dict[str, bytes], message: str = "", branch: str = "main") -> str:
        """Make a commit holding exactly `files` on `branch` (created if missing); returns its sha."""
        digest = hashlib.sha1(f"{self.repo_id}\n{self.branches.get(branch)}\n{len(self.commits)}\n{message}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
        sha = digest.hexdigest()
        self.commits[sha] = Commit(sha, dict(files), message)
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision) if _COMMIT.fullmatch(revision) else None


def point_hf_at(monkeypatch, endpoint: str, cache: Path) -> None:
    """Point huggingface_hub (its constants, read at import) at `endpoint` with an empty cache `cache`."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # no registry fetch, nothing written to HF_HOME
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # uploads through the LFS batch API served here


class FakeHub:
    """The Hub API on a loopback port, for repos held in memory."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_status: int | None = None
        self.write_token: str | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- repos ---------------------------------------------------------------------------------
    def add_repo(self, repo_id: str) -> Repo:
        return self.repos.setdefault(repo_id, Repo(repo_id))

    def add_files(self, repo_id: str, files: dict[str, bytes], message: str = "", branch: str = "main") -> str:
        """Commit `files` (the whole content of the new commit) to repo_id's `branch`; returns the sha."""
        return self.add_repo(repo_id).commit(files, message=message, branch=branch)

    def add_folder(self, repo_id: str, folder: str | Path, message: str = "", branch: str = "main",
                   skip: tuple[str, ...] = ()) -> str:
        """Commit the top-level files of a local folder (less `skip`); returns the sha."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file() and p.name not in skip}
        return self.add_files(repo_id, files, message=message or f"add {Path(folder).name}", branch=branch)

    # --- server --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: later requests get 'connection refused'."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()


def _etag(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Routes one request (HTTP/1.0: one request per connection, so a stopped hub really is gone)."""

    hub: FakeHub

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # --- plumbing ------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.hub.record(method, unquote(url.path))
        body = self._body() if method in ("POST", "PUT") else b""
        if self.hub.fail_status is not None:
            return self._json({"error": "the Hub is down"}, status=self.hub.fail_status)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        try:
            self._route(method, parts, query, body)
        except _HttpError as err:
            self._json({"error": err.message}, status=err.status, headers=err.headers)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, content: bytes, headers: dict[str, str], head: bool = False) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if not head:
            self.wfile.write(content)

    def _json(self, data, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})},
                   head=self.command == "HEAD")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise _HttpError(404, f"Repository {repo_id} not found", {"X-Error-Code": "RepoNotFound"})
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {revision}", {"X-Error-Code": "RevisionNotFound"})
        return commit

    def _check_write(self) -> None:
        token = self.hub.write_token
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            raise _HttpError(401, "Invalid credentials in Authorization header")

    # --- routes --------------------------------------------------------------------------------
    def _route(self, method: str, parts: list[str], query: dict, body: bytes) -> None:
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._json({"errors": [], "warnings": []})
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body or b"{}"))
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-storage":
            return self._store_lfs(parts[1], body)
        if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "spaces"):
            prefix = "spaces/" if parts[1] == "spaces" else ""
            repo = self._repo(f"{prefix}{parts[2]}/{parts[3]}")
            action, rest = (parts[4], parts[5:]) if len(parts) > 4 else ("revision", ["main"])
            if method == "GET" and action == "revision" and len(rest) == 1:
                return self._info(repo, self._commit(repo, rest[0]))
            if method == "GET" and action == "tree" and rest:
                return self._tree(repo, self._commit(repo, rest[0]), "/".join(rest[1:]))
            if method == "POST" and action == "preupload" and len(rest) == 1:
                return self._preupload(repo, rest[0], json.loads(body))
            if method == "POST" and action == "commit" and len(rest) == 1:
                return self._receive_commit(repo, rest[0], body)
            if method == "POST" and action == "branch" and len(rest) == 1:
                return self._create_branch(repo, rest[0], json.loads(body or b"{}"))
        kind, names = ("spaces/", parts[1:]) if parts[:1] == ["spaces"] else ("", parts)
        if method == "POST" and len(names) == 6 and names[1].endswith(".git") and names[2:] == ["info", "lfs",
                                                                                                   "objects", "batch"]:
            self._repo(f"{kind}{names[0]}/{names[1][:-4]}")
            return self._lfs_batch(json.loads(body))
        if method in ("GET", "HEAD") and len(names) >= 5 and names[2] == "resolve":
            repo = self._repo(f"{kind}{names[0]}/{names[1]}")
            return self._resolve(repo, self._commit(repo, names[3]), "/".join(names[4:]))
        raise _HttpError(404, f"no route for {method} /{'/'.join(parts)}")

    def _info(self, repo: Repo, commit: Commit) -> None:
        self._json({"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.sha, "private": False,
                    "siblings": [{"rfilename": path} for path in sorted(commit.files)]})

    def _tree(self, repo: Repo, commit: Commit, prefix: str) -> None:
        entries = [{"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
                   for path, data in sorted(commit.files.items()) if not prefix or path.startswith(prefix + "/")]
        self._json(entries)

    def _resolve(self, repo: Repo, commit: Commit, path: str) -> None:
        headers = {"X-Repo-Commit": commit.sha}
        if path not in commit.files:
            raise _HttpError(404, f"Entry not found: {path}", {"X-Error-Code": "EntryNotFound", **headers})
        content = commit.files[path]
        headers.update({"ETag": f'"{_etag(content)}"', "Content-Type": "application/octet-stream",
                        "Accept-Ranges": "bytes"})
        match = _RANGE.fullmatch(self.headers.get("Range") or "")
        if match and self.command == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return self._send(206, content[start:end + 1], headers)
        self._send(200, content, headers, head=self.command == "HEAD")

    def _create_repo(self, payload: dict) -> None:
        self._check_write()
        repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
        key = f"spaces/{repo_id}" if payload.get("type") == "space" else repo_id
        if key not in self.hub.repos:
            self.hub.add_files(key, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                               message="initial commit")
        self._json({"url": f"{self.hub.url}/{key}", "name": repo_id, "id": repo_id})

    def _create_branch(self, repo: Repo, branch: str, payload: dict) -> None:
        self._check_write()
        if branch in repo.branches:
            raise _HttpError(409, f"branch {branch} already exists")
        repo.branches[branch] = self._commit(repo, payload.get("startingPoint") or "main").sha
        self._json({})

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
        self._check_write()
        files = [{"path": f["path"], "shouldIgnore": False,
                  "uploadMode": "lfs" if _needs_lfs(base64.b64decode(f.get("sample", "")), f.get("size", 0))
                  else "regular"} for f in payload["files"]]
        self._json({"files": files, "commitOid": repo.branches.get(revision)})

    def _lfs_batch(self, payload: dict) -> None:
        self._check_write()
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise _HttpError(400, "this test server takes LFS uploads through the basic transfer only")
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                    **({} if o["oid"] in self.hub.lfs else
                       {"actions": {"upload": {"href": f"{self.hub.url}/lfs-storage/{o['oid']}"}}})}
                   for o in payload["objects"]]
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _store_lfs(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise _HttpError(400, f"LFS object {oid}: the content's sha256 differs")
        self.hub.lfs[oid] = body
        self._send(200, b"", {})

    def _receive_commit(self, repo: Repo, branch: str, body: bytes) -> None:
        self._check_write()
        if branch not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {branch}", {"X-Error-Code": "RevisionNotFound"})
        files = dict(repo.commits[repo.branches[branch]].files)
        message = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                content = base64.b64decode(value["content"])
                if _needs_lfs(content[:512], len(content)):
                    raise _HttpError(400, f"Your push was rejected: {value['path']} is binary or larger than 10 MB; "
                                          f"store it with Git LFS (or Xet)")
                files[value["path"]] = content
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs:
                    raise _HttpError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = self.hub.lfs[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            else:
                raise _HttpError(400, f"this test server does not take {key!r} commit entries")
        sha = repo.commit(files, message=message, branch=branch)
        self._json({"commitOid": sha, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{sha}", "success": True})


def _needs_lfs(sample: bytes, size: int) -> bool:
    """The Hub's rule for the upload API: binary content or more than 10 MB goes through LFS."""
    return b"\0" in sample or size > 10 * 1024 * 1024


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
