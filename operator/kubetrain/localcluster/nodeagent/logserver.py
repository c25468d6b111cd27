"""The kubelet's log endpoint, so ``kubectl logs`` works on the local cluster.

The API server forwards ``pods/log`` requests to ``https://<node InternalIP>:<kubelet
port>/containerLogs/<namespace>/<pod>/<container>``. All of an agent's nodes share one
such server on loopback. It accepts only clients with a certificate from the cluster's
CA (the API server presents its kubelet-client certificate). ``tailLines``,
``limitBytes``, ``previous`` and ``follow`` are honoured; ``timestamps`` and
``sinceSeconds`` are not (the agent keeps raw output).
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubetrain.localcluster import pki
from kubetrain.localcluster.nodeagent.state import Layout
from kubetrain.localcluster.ports import LOOPBACK

log = logging.getLogger(__name__)

# (namespace, pod) -> the UID of that Pod on this agent, or None
Resolve = Callable[[str, str], str | None]
FOLLOW_POLL_SECONDS = 0.2


class LogServer:
    """A threaded HTTPS server for container logs, on a free loopback port."""

    def __init__(self, layout: Layout, resolve: Resolve, client_ca: str) -> None:
        self.layout = layout
        self.resolve = resolve
        self.client_ca = client_ca
        self._server: _TLSServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else 0

    def start(self) -> int:
        directory = self.layout.root / "pki"
        directory.mkdir(parents=True, exist_ok=True)
        ca = pki.new_ca("kubetrain-nodeagent-serving")
        cert, key = pki.issue(
            ca, "kubetrain-nodeagent", ip_addresses=(LOOPBACK,), server=True
        ).write(directory, "kubelet-serving")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.client_ca)
        server = _TLSServer((LOOPBACK, 0), _handler(self.layout, self.resolve))
        server.context = context
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="nodeagent logs", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _TLSServer(http.server.ThreadingHTTPServer):
    """Does each TLS handshake in the request's own thread, not in the accept loop."""

    daemon_threads = True
    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            secured = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            log.debug("TLS handshake with %s failed: %s", client_address, err)
            return
        super().finish_request(secured, client_address)


def tail_bytes(data: bytes, lines: int | None, limit: int | None) -> bytes:
    """The last ``lines`` lines of ``data``, then at most ``limit`` bytes of that."""
    if lines is not None:
        data = b"".join(data.splitlines(keepends=True)[-lines:]) if lines > 0 else b""
    if limit is not None:
        data = data[:limit]
    return data


def _handler(layout: Layout, resolve: Resolve) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "kubetrain-nodeagent"

        def log_message(self, format: str, *args: object) -> None:
            log.debug(format, *args)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            segments = parts.path.strip("/").split("/")
            if len(segments) != 4 or segments[0] != "containerLogs":
                self._fail(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
                return
            namespace, pod, container = segments[1:]
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            uid = resolve(namespace, pod)
            attempts = layout.attempts(uid, container) if uid else []
            previous = query.get("previous") == "true"
            if len(attempts) < (2 if previous else 1) or uid is None:
                which = "previous terminated" if previous else "running or terminated"
                self._fail(400, f'{which} container "{container}" in pod "{pod}" not found')
                return
            number = attempts[-2] if previous else attempts[-1]
            path = layout.log_dir(namespace, pod, uid) / container / f"{number}.log"
            tail = int(query["tailLines"]) if "tailLines" in query else None
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(tail_bytes(data, tail, limit))
            if query.get("follow") == "true" and not previous:
                self._follow(path, layout.attempt_dir(uid, container, number), len(data))

        def _fail(self, code: int, message: str) -> None:
            """An error as plain text: the API server hands the body to the client."""
            body = message.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _follow(self, path: Path, attempt_dir: Path, offset: int) -> None:
            """Stream what the container writes until it ends or the client goes away."""
            while True:
                finished = (attempt_dir / "exit.json").exists()
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                if chunk:
                    offset += len(chunk)
                    try:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    except OSError:
                        return
                elif finished:
                    return
                time.sleep(FOLLOW_POLL_SECONDS)

    return Handler
