"""The operator's watches on the real API server: only labelled children ever arrive."""

from __future__ import annotations

import gc
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from kubetrain.operator.controller import Controller
from kubetrain.operator.kube import Cluster
from kubetrain.operator.settings import Settings
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


BULK = "KUBETRAIN_TEST_BULK"


def env_values_held() -> set[str]:
    """Every value of a ``BULK`` env entry still held as JSON anywhere in this process."""
    gc.collect()
    return {
        str(entry.get("value"))
        for o in gc.get_objects()  # lists: the collector tracks them, not dicts of strings
        if isinstance(o, list)
        for entry in o
        if isinstance(entry, dict) and entry.get("name") == BULK
    }


def test_the_operators_watches_keep_no_pod_spec_beside_the_cache(
    api_client: client.ApiClient, core: client.CoreV1Api, quiet_namespace: str
) -> None:
    ours = {"app.kubernetes.io/managed-by": "kubetrain", "kubetrain.io/job-name": "j"}
    pods = 20
    for i in range(pods):
        body = pod(f"j-worker-{i}-a1", ours)
        body.spec.containers[0].env = [client.V1EnvVar(name=BULK, value=f"{i}:" + "x" * 4096)]
        core.create_namespaced_pod(quiet_namespace, body)
    controller = Controller(Cluster(api_client), Settings())  # a standby: it never acts
    controller.watch_children(api_client, NamespaceFilter([quiet_namespace]))
    controller.start()
    try:
        eventually(controller.synced, what="the first lists")
        cache = controller.cache
        eventually(lambda: len(cache.pods((quiet_namespace, "j"))) == pods,
                   what="every worker in the cache")  # fmt: skip
        held = env_values_held()
    finally:
        controller.stop()
    del controller
    # What this controller held, whatever else in this process (another test's watch) holds:
    # the cache keeps no spec, the watch what it must know of a deletion, so at most the
    # event being read was still held by the watch's loop.
    assert len(held - env_values_held()) <= 1
