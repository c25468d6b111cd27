"""A Hugging Face Hub on 127.0.0.1 for the fetch stage's tests: the few routes huggingface_hub
uses to download a snapshot (revision info, the file tree, ``resolve`` HEAD and GET).

Repositories live in memory; a repository may require a token, or be gated. Downloads of
chosen files can be paced, and every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PACE_BYTES = 64 * 1024
PACE_SECONDS = 0.1
_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)$")
_RESOLVE = re.compile(r"^/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None
    """Requests must carry ``Bearer <token>``."""
    gated: bool = False

    @property
    def commit(self) -> str:
        listing = sorted(
            (name, hashlib.sha256(data).hexdigest()) for name, data in self.files.items()
        )
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        """By (``models`` or ``datasets``, ``org/name``)."""
        self.paced: set[str] = set()
        """File names whose downloads are paced."""
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def downloads(self) -> int:
        return sum(1 for method, path in self.requests if method == "GET" and "/resolve/" in path)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        hub: HubServer = self.server.owner  # type: ignore[attr-defined]
        hub.requests.append((self.command, self.path))
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
        if revision not in ("main", repo.commit):
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

    def _error(self, status: int, code: str) -> None:
        self._send(status, b"{}", {"X-Error-Code": code, "X-Error-Message": code})

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _blob(data: bytes) -> str:
    """The file's git blob id, as the Hub lists it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
