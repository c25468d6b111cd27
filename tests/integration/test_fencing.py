"""Writes are fenced on current leadership, on the real API server: once the renew deadline
has passed, nothing more is sent, whatever the pass was doing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.api.children import LABEL_JOB, MANAGED_BY
from kubetrain.operator.kube import COMPONENT, Cluster, NotLeadingError
from kubetrain.operator.leader import Leadership
from kubetrain.operator.reconcile.cache import Cache
from kubetrain.operator.reconcile.reconciler import Reconciler
from kubetrain.operator.settings import Settings
from tests.clock import Clock
from tests.integration.test_operator import llm_job

pytestmark = pytest.mark.usefixtures("crds", "priority_classes")


def ours(custom: client.CustomObjectsApi, core: client.CoreV1Api, ns: str) -> dict[str, Any]:
    """Everything the operator may have written in ``ns``."""
    job = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "fenced")
    return {
        "status": job.get("status"),
        "pods": [p.metadata.name for p in core.list_namespaced_pod(ns).items],
        "claims": [c.metadata.name for c in core.list_namespaced_persistent_volume_claim(ns).items],
        "services": [s.metadata.name for s in core.list_namespaced_service(ns).items],
        "events": [
            e.reason
            for e in core.list_namespaced_event(ns).items
            if e.source.component == COMPONENT
        ],
    }


def test_a_pass_whose_leadership_lapses_after_its_first_write_sends_no_other(
    api_client: client.ApiClient, quiet_namespace: str
) -> None:
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    created: Any = custom.create_namespaced_custom_object(
        GROUP, VERSION, quiet_namespace, PLURAL, llm_job("fenced")
    )
    clock = Clock()
    leading = Leadership(renew_deadline=10.0, clock=clock)
    leading.renewed()
    asked: list[bool] = []

    def fence() -> bool:
        """Current for the first write; then the process is paused past the deadline."""
        current = leading.is_set()
        asked.append(current)
        clock.now += 11.0
        return current

    cache = Cache()
    key = cache.put_job(created)
    reconciler = Reconciler(Cluster(api_client, fence=fence), cache, Settings())
    with contextlib.suppress(NotLeadingError):  # the controller takes it, when it comes out
        reconciler.reconcile(key)

    assert asked[0] and len(asked) > 1 and not any(asked[1:])  # one write sent, then none
    written = ours(custom, core, quiet_namespace)
    assert written["status"] is not None  # the first write: status before any action
    assert written["pods"] == written["claims"] == written["services"] == []
    assert written["events"] == []


def test_every_write_is_refused_when_not_leading_and_standalone_is_not_fenced(
    api_client: client.ApiClient, quiet_namespace: str
) -> None:
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    job: Any = custom.create_namespaced_custom_object(
        GROUP, VERSION, quiet_namespace, PLURAL, llm_job("fenced")
    )
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, LABEL_JOB: "fenced"}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "fenced-worker-0-a1", "namespace": quiet_namespace,
                        "labels": labels},
           "spec": {"containers": [{"name": "trainer", "image": "x"}]}}  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "fenced-workers", "namespace": quiet_namespace,
                            "labels": labels},
               "spec": {"clusterIP": "None", "selector": labels}}  # fmt: skip
    workload = {"metadata": {"name": "fenced", "namespace": quiet_namespace}}
    stale = Clock()
    leading = Leadership(renew_deadline=10.0, clock=stale)
    leading.renewed()
    stale.now += 10.0
    fenced = Cluster(api_client, fence=leading.is_set)
    writes: list[Callable[[], Any]] = [
        lambda: fenced.create_pod(pod),
        lambda: fenced.apply(service),
        lambda: fenced.delete_pod(quiet_namespace, "fenced-worker-0-a1"),
        lambda: fenced.replace_status(dict(job, status={"phase": "Failed"})),
        lambda: fenced.delete_job(quiet_namespace, "fenced"),
        lambda: fenced.post_event(job, "Normal", "Fenced", "never sent"),
        lambda: fenced.create_workload(workload),
        lambda: fenced.delete_workload(quiet_namespace, "fenced"),
        lambda: fenced.replace_workload_status(workload),
    ]
    for write in writes:
        with pytest.raises(NotLeadingError):
            write()
    assert ours(custom, core, quiet_namespace) == {
        "status": None, "pods": [], "claims": [], "services": [], "events": []
    }  # fmt: skip

    standalone = Cluster(api_client)  # no fence: no election
    assert standalone.create_pod(pod)
    standalone.post_event(job, "Normal", "Standalone", "sent")
    found = ours(custom, core, quiet_namespace)
    assert found["pods"] == ["fenced-worker-0-a1"] and found["events"] == ["Standalone"]
