"""Service-account credentials: tokens from the TokenRequest API, bound to their Pod.

A kubelet never hands a Pod the long-lived token Secret: it asks the API server for a
short-lived token for the Pod's ServiceAccount, bound to the Pod (it stops working once
the Pod is gone), and renews it at 80% of its lifetime. The admission plugin puts such a
token (with the CA and namespace) in every Pod as the ``kube-api-access-*`` projected
volume at /var/run/secrets/kubernetes.io/serviceaccount; the agent fills it in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kubetrain.localcluster.nodeagent.kube import Kube, Obj

REFRESH_FRACTION = 0.8
DEFAULT_LIFETIME = 3600


@dataclass
class _Token:
    token: bytes
    refresh_at: float


class TokenSource:
    """Bound service-account tokens, requested once and renewed before they expire."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._tokens: dict[tuple[str, str, str], _Token] = {}

    def token(self, pod: Obj, audience: str = "", lifetime: int = DEFAULT_LIFETIME) -> bytes:
        """A token for ``pod``'s ServiceAccount, bound to ``pod``."""
        meta = pod["metadata"]
        key = (str(meta["uid"]), audience, str(lifetime))
        cached = self._tokens.get(key)
        now = time.time()
        if cached is not None and now < cached.refresh_at:
            return cached.token
        account = pod["spec"].get("serviceAccountName") or "default"
        request: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],  # empty: the API server's own
                "expirationSeconds": lifetime,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        answer = self.kube.create(path, request)
        token = str(answer["status"]["token"]).encode()
        self._tokens[key] = _Token(token, now + REFRESH_FRACTION * lifetime)
        return token

    def forget(self, uid: str) -> None:
        for key in [k for k in self._tokens if k[0] == uid]:
            del self._tokens[key]
