"""The operator's watches on the real API server: only labelled children ever arrive."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from kubetrain.operator.watching import NamespaceFilter, Watcher
from tests.polling import eventually


def pod(name: str, labels: dict[str, str]) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="x", image="x")]),
    )


def test_the_api_server_filters_by_label_and_deletions_arrive(
    core: client.CoreV1Api, quiet_namespace: str
) -> None:
    seen: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def handle(event: Mapping[str, Any]) -> None:
        obj = event["object"]
        with lock:
            seen.append((str(event["type"]), obj["kind"], obj["metadata"]["name"]))

    ours = {"app.kubernetes.io/managed-by": "kubetrain", "kubetrain.io/job-name": "j"}
    core.create_namespaced_pod(quiet_namespace, pod("before", ours))
    for i in range(20):
        core.create_namespaced_pod(quiet_namespace, pod(f"unrelated-{i}", {"app": "other"}))
    watcher = Watcher(
        core.list_pod_for_all_namespaces,
        "Pod",
        "app.kubernetes.io/managed-by=kubetrain,kubetrain.io/job-name",
        handle,
        NamespaceFilter([quiet_namespace]),
    )
    watcher.start()
    try:
        eventually(lambda: ("ADDED", "Pod", "before") in seen, what="the listed Pod")
        core.create_namespaced_pod(quiet_namespace, pod("after", ours))
        core.create_namespaced_pod(quiet_namespace, pod("unrelated-late", {"app": "other"}))
        eventually(lambda: ("ADDED", "Pod", "after") in seen, what="the watched Pod")
        core.delete_namespaced_pod("before", quiet_namespace, grace_period_seconds=0)
        eventually(lambda: ("DELETED", "Pod", "before") in seen, what="the deletion")
    finally:
        watcher.stop()
    assert not [name for _, _, name in seen if name.startswith("unrelated")]
