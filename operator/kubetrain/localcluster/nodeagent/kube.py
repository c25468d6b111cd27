"""A small JSON client for the API server: plain dicts in and out, and watch streams.

The node agent speaks to the API server the way a kubelet does, with raw objects, so it
does not depend on the generated models of whichever kubernetes client is installed.
The kubeconfig is read by the kubernetes client's loader; requests go through urllib3.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from kubernetes import config
from kubernetes.client import Configuration

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    """The API server answered with an error status (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, body: Obj | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class WatchStream:
    """One open watch: iterate over its events; ``close`` from any thread ends it."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Obj]:
        buffer = b""
        try:
            for chunk in self._response.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            if not self._closed.is_set():
                raise
        finally:
            self._response.release_conn()

    def close(self) -> None:
        """End the watch from any thread; closing one that already ended is a no-op."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._response.shutdown()
        except (AttributeError, OSError, RuntimeError):  # RuntimeError: already released
            self._response.close()


class Kube:
    """Talks to one API server with the credentials of a kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        configuration = Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
        self.server: str = configuration.host.rstrip("/")
        self.ca_file = str(configuration.ssl_ca_cert or "")  # the cluster CA, as a file
        self._headers = {"Accept": "application/json", "User-Agent": "kubetrain-nodeagent"}
        settings: dict[str, Any] = dict(configuration.auth_settings())
        for setting in settings.values():  # a bearer token, if the kubeconfig has one
            if isinstance(setting, dict) and setting.get("in") == "header" and setting.get("value"):
                self._headers[str(setting["key"]).title()] = str(setting["value"])
        self._pool = urllib3.PoolManager(
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if configuration.verify_ssl else "CERT_NONE",
            ca_certs=configuration.ssl_ca_cert,
            cert_file=configuration.cert_file,
            key_file=configuration.key_file,
        )

    @property
    def host_port(self) -> tuple[str, int]:
        """The API server's loopback address and port (what Pods get as the service env)."""
        parts = urlsplit(self.server)
        host, port = parts.hostname or "", parts.port or 443
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the node agent only works with a loopback API server, not {host}")
        return host, port

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: Mapping[str, str | int] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Obj:
        """One request; returns the decoded JSON answer or raises ApiError."""
        headers = dict(self._headers)
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type
            payload = json.dumps(body).encode()
        try:
            response = self._pool.request(
                method,
                self._url(path, query),
                body=payload,
                headers=headers,
                timeout=urllib3.Timeout(connect=5.0, read=timeout),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as err:
            raise ApiError(0, f"{method} {path}: {err}") from err
        data = response.data
        try:
            decoded: Obj = json.loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode(errors="replace")}
        if response.status >= 400:
            raise ApiError(response.status, str(decoded.get("message", data[:200])), decoded)
        return decoded

    def get(self, path: str, **query: str | int) -> Obj:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Obj, content_type: str = MERGE_PATCH) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 120) -> WatchStream:
        """Open a watch on a collection from ``resource_version`` (with bookmarks)."""
        query: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        try:
            response = self._pool.request(
                "GET",
                self._url(path, query),
                headers=self._headers,
                timeout=urllib3.Timeout(connect=5.0, read=timeout_seconds + 30),
                retries=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as err:
            raise ApiError(0, f"watch {path}: {err}") from err
        if response.status >= 400:
            data = response.read()
            response.release_conn()
            raise ApiError(response.status, data.decode(errors="replace")[:200])
        return WatchStream(response)

    def _url(self, path: str, query: Mapping[str, str | int] | None) -> str:
        url = self.server + path
        return f"{url}?{urlencode(dict(query))}" if query else url

    def close(self) -> None:
        self._pool.clear()
