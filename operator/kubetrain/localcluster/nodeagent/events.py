"""Events about Pods (Started, Killing, BackOff, FailedMount...), as a kubelet records them."""

from __future__ import annotations

import logging
import threading
import time

from kubetrain.localcluster.nodeagent.kube import ApiError, Kube, Obj
from kubetrain.localcluster.nodeagent.timeutil import rfc3339

log = logging.getLogger(__name__)

COMPONENT = "kubetrain-nodeagent"
REPEAT_SECONDS = 300.0  # the same event for the same Pod is recorded at most this often


class Events:
    """Records core/v1 Events for Pods; repeats are suppressed, failures only logged."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self._recent: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()  # the Pod and the volume loops both record events

    def emit(
        self,
        pod: Obj,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        container: str | None = None,
        kind: str = "Pod",
    ) -> None:
        """Record an event about ``pod`` (or another namespaced core object of ``kind``)."""
        meta = pod["metadata"]
        key = (str(meta["uid"]), reason, message)
        now = time.time()
        with self._lock:
            if now - self._recent.get(key, 0.0) < REPEAT_SECONDS:
                return
            self._recent[key] = now
        involved: Obj = {
            "apiVersion": "v1",
            "kind": kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        node = str(pod.get("spec", {}).get("nodeName", ""))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT, "host": node},
            "reportingComponent": COMPONENT,
            "reportingInstance": node,
            "firstTimestamp": rfc3339(now),
            "lastTimestamp": rfc3339(now),
            "count": 1,
        }
        try:
            self.kube.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except ApiError as err:
            log.debug(
                "event %s for %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], err
            )

    def forget(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._recent if k[0] == uid]:
                del self._recent[key]
