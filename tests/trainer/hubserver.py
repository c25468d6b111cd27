"""A Hugging Face Hub on 127.0.0.1 for the fetch stage's and the publishing's tests: the few
routes huggingface_hub uses to download a snapshot (revision info, the file tree, ``resolve``
HEAD and GET), and to publish one (create a repository or a branch, ``preupload``, ``commit``).

Repositories live in memory; a repository may require a token, or be gated. Downloads of
chosen files can be paced. Writes need one of the ``writers`` tokens (else a 401, as the Hub
answers a bad token); every file is uploaded inline ("regular"), never through LFS or Xet.
Every request is recorded with the token it carried, every commit with the files it brought.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PACE_BYTES = 64 * 1024
PACE_SECONDS = 0.1
_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)$")
_RESOLVE = re.compile(r"^/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_WRITE = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$")
_BAD_TOKEN = "Invalid credentials in Authorization header"


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None
    """Requests must carry ``Bearer <token>``."""
    gated: bool = False
    private: bool = False
    branches: set[str] = field(default_factory=lambda: {"main"})
    """Its branches; they all show the same files (one history is all this Hub keeps)."""

    @property
    def commit(self) -> str:
        listing = sorted(
            (name, hashlib.sha256(data).hexdigest()) for name, data in self.files.items()
        )
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


@dataclass(frozen=True)
class Commit:
    repo: tuple[str, str]
    revision: str
    files: dict[str, bytes]
    """The files it added or changed."""
    token: str | None


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        """By (``models`` or ``datasets``, ``org/name``)."""
        self.paced: set[str] = set()
        """File names whose downloads are paced."""
        self.writers: set[str] = set()
        """Tokens that may create repositories and branches, and commit."""
        self.requests: list[tuple[str, str, str | None]] = []
        """(method, path, the bearer token or None) of every request, in order."""
        self.commits: list[Commit] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def downloads(self) -> int:
        return sum(
            1 for method, path, _ in self.requests if method == "GET" and "/resolve/" in path
        )

    def url(self, kind: str, repo_id: str) -> str:
        """A repository's web address (models have no prefix)."""
        return f"{self.endpoint}{'' if kind == 'models' else '/' + kind}/{repo_id}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        hub, token = self._hub()
        body = self.rfile.read(int(self.headers["Content-Length"] or 0))
        path = unquote(urlsplit(self.path).path)
        write = _WRITE.match(path)
        if token not in hub.writers:
            self._error(401, "", _BAD_TOKEN)
        elif path == "/api/repos/create":
            self._create(hub, json.loads(body), token)
        elif write is None or (repo := hub.repos.get(write.group(1, 2))) is None:
            self._error(404, "RepoNotFound")
        elif write[3] == "branch":
            self._branch(repo, write[4])
        elif write[4] not in repo.branches:
            self._error(404, "RevisionNotFound")
        elif write[3] == "preupload":
            files = [_upload_mode(repo, f["path"]) for f in json.loads(body)["files"]]
            self._json({"files": files})
        else:
            commit = Commit(write.group(1, 2), write[4], _added(body), token)
            repo.files |= commit.files
            hub.commits.append(commit)
            url = f"{hub.url(*commit.repo)}/commit/{repo.commit}"
            self._json({"commitUrl": url, "commitOid": repo.commit, "pullRequestUrl": None})

    def _hub(self) -> tuple[HubServer, str | None]:
        hub: HubServer = self.server.owner  # type: ignore[attr-defined]
        token = (self.headers["Authorization"] or "").removeprefix("Bearer ") or None
        hub.requests.append((self.command, self.path, token))
        return hub, token

    def _answer(self) -> None:
        hub, _ = self._hub()
        path = unquote(urlsplit(self.path).path)
        if api := _API.match(path):
            kind, repo_id, route, revision = api.groups()
            self._api(hub, kind, repo_id, route, revision)
        elif resolve := _RESOLVE.match(path):
            kind, repo_id, revision, name = resolve.groups()
            self._resolve(hub, kind or "models", repo_id, revision, name)
        else:
            self._error(404, "RepoNotFound")

    def _repo(self, hub: HubServer, kind: str, repo_id: str, revision: str) -> Repo | None:
        repo = hub.repos.get((kind, repo_id))
        if repo is None or (repo.token and self.headers["Authorization"] != f"Bearer {repo.token}"):
            self._error(401 if repo else 404, "RepoNotFound")
            return None
        if repo.gated:
            self._error(403, "GatedRepo")
            return None
        if revision not in (*repo.branches, repo.commit):
            self._error(404, "RevisionNotFound")
            return None
        return repo

    def _api(self, hub: HubServer, kind: str, repo_id: str, route: str, revision: str) -> None:
        repo = self._repo(hub, kind, repo_id, revision)
        if repo is None:
            return
        answer: Any
        if route == "revision":
            siblings = [{"rfilename": name} for name in repo.files]
            answer = {"id": repo_id, "sha": repo.commit, "siblings": siblings, "private": False}
        else:
            answer = [
                {"type": "file", "path": name, "size": len(data), "oid": _blob(data)}
                for name, data in repo.files.items()
            ]
        data = json.dumps(answer).encode()
        self._send(200, data, {"Content-Type": "application/json"})

    def _resolve(self, hub: HubServer, kind: str, repo_id: str, revision: str, name: str) -> None:
        repo = self._repo(hub, kind, repo_id, revision)
        if repo is None:
            return
        data = repo.files.get(name)
        if data is None:
            self._error(404, "EntryNotFound")
            return
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{_blob(data)}"'}
        self._send(200, data, headers, paced=name in hub.paced)

    def _create(self, hub: HubServer, payload: dict[str, Any], token: str | None) -> None:
        kind = f"{payload.get('type') or 'model'}s"
        repo_id = f"{payload['organization']}/{payload['name']}"
        answer = {"url": hub.url(kind, repo_id), "name": repo_id}
        if (kind, repo_id) in hub.repos:  # the Hub's 409 names the repository too
            self._send(409, json.dumps(answer).encode(), {"X-Error-Message": "Repo exists"})
            return
        private = payload.get("visibility") == "private"
        hub.repos[kind, repo_id] = Repo({}, token if private else None, private=private)
        self._json(answer)

    def _branch(self, repo: Repo, branch: str) -> None:
        if branch in repo.branches:
            self._error(409, "", "Reference already exists")
            return
        repo.branches.add(branch)
        self._json({})

    def _json(self, answer: Any) -> None:
        self._send(200, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _send(
        self, status: int, data: bytes, headers: dict[str, str], *, paced: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        for start in range(0, len(data), PACE_BYTES):
            if paced:
                time.sleep(PACE_SECONDS)  # the slow link this server plays
            self.wfile.write(data[start : start + PACE_BYTES])

    def _error(self, status: int, code: str, message: str = "") -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message or code}
        self._send(status, b"{}", {k: v for k, v in headers.items() if v})

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _added(body: bytes) -> dict[str, bytes]:
    """The files of an NDJSON commit (a header, then a line per file, its content in base64)."""
    lines = [json.loads(line) for line in body.splitlines()]
    assert all(line["key"] in ("header", "file") for line in lines), "only inline files here"
    return {
        line["value"]["path"]: base64.b64decode(line["value"]["content"])
        for line in lines
        if line["key"] == "file"
    }


def _upload_mode(repo: Repo, path: str) -> dict[str, Any]:
    """Every file is uploaded inline; ``oid`` lets the client leave out the unchanged."""
    data = repo.files.get(path)
    oid = _blob(data) if data is not None else None
    return {"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid}


def _blob(data: bytes) -> str:
    """The file's git blob id, as the Hub lists it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
