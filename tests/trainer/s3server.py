"""A loopback S3 server for the fetch stage's tests: moto's own WSGI app under werkzeug.

A middleware records every request, so a test can tell listings from downloads; it can pace
the download of chosen objects (64 KiB at a time) to give a test time to act mid-transfer,
and damage others (their first byte flipped) as a faulty link would.
After ``require_auth`` the server checks every request's signature, as S3 does, against the
access keys created through its IAM API.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

PACE_BYTES = 64 * 1024
PACE_SECONDS = 0.02
REGION = "us-east-1"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any) -> None:
        return None


class S3Server:
    """moto on 127.0.0.1 in a thread of this process (moto's state is per process)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        """(method, path) of every request, in order; the path is ``/bucket/key``."""
        self.paced: set[str] = set()
        """``/bucket/key`` paths whose downloads are paced."""
        self.damaged: set[str] = set()
        """``/bucket/key`` paths whose downloads arrive with their first byte flipped."""
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._lock = threading.Lock()
        self._server = make_server(
            "127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler
        )
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.key, self.secret = "seed", "seed"
        # moto's backends are global to the process: a server starts from an empty state,
        # whatever an earlier one in this process left (buckets, IAM users, auth).
        self._moto_api("reset", b"")
        self._moto_api("reset-auth", b"inf")

    def stop(self) -> None:
        self._moto_api("reset-auth", b"inf")
        self._server.shutdown()
        self._thread.join(10)

    def client(self, **options: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=REGION,
            **options,
        )

    def require_auth(self) -> None:
        """Create an IAM user allowed all of S3, use its key, and make the server check keys."""
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=REGION,
        )
        iam.create_user(UserName="fetcher")
        iam.put_user_policy(UserName="fetcher", PolicyName="s3", PolicyDocument=json.dumps(POLICY))
        key = iam.create_access_key(UserName="fetcher")["AccessKey"]
        self.key, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self._moto_api("reset-auth", b"0")

    def downloads(self, path: str = "") -> int:
        """Object GETs so far (of ``path`` only, if given); listings are GETs of a bucket."""
        with self._lock:
            return sum(
                1
                for method, p in self.requests
                if method == "GET" and p.count("/") >= 2 and (not path or p == path)
            )

    def _moto_api(self, action: str, body: bytes) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/{action}",
            data=body,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request, timeout=10).close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        with self._lock:
            self.requests.append((method, path))
        body = self._moto(environ, start_response)
        if method == "GET" and path in self.damaged:
            data = b"".join(body)
            return [bytes([data[0] ^ 0xFF]) + data[1:]]
        return self._paced(body, path) if method == "GET" and path in self.paced else body

    def _paced(self, body: Iterable[bytes], path: str) -> Iterator[bytes]:
        for block in body:
            for start in range(0, len(block), PACE_BYTES):
                if path in self.paced:
                    time.sleep(PACE_SECONDS)  # the slow link this server plays
                yield block[start : start + PACE_BYTES]
