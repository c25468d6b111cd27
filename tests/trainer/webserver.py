"""An HTTPS file server on 127.0.0.1 for the fetch stage's tests.

It serves files from memory with Content-Length, ETag and Last-Modified, answers chosen
paths with a chosen status, and records every request. Its certificate comes from a fresh
local CA, written to ``ca.crt`` for the client to trust (``SSL_CERT_FILE``).
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubetrain.localcluster import pki

LAST_MODIFIED = "Tue, 01 Dec 2026 10:00:00 GMT"


class FileServer:
    def __init__(self, directory: Path) -> None:
        self.files: dict[str, bytes] = {}
        self.statuses: dict[str, int] = {}
        """Paths answered with this status instead of a file."""
        self.requests: list[tuple[str, str]] = []
        directory.mkdir(parents=True, exist_ok=True)
        ca = pki.new_ca("kubetrain-test-files")
        cert, key = pki.issue(ca, "files", ip_addresses=("127.0.0.1",), server=True).write(
            directory, "server"
        )
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(ca.cert_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.owner = self  # type: ignore[attr-defined]
        self.base = f"https://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        owner: FileServer = self.server.owner  # type: ignore[attr-defined]
        owner.requests.append((self.command, self.path))
        status = owner.statuses.get(self.path)
        data = owner.files.get(self.path)
        if status is not None or data is None:
            self.send_response(status or 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()[:20]}"')
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return None
