"""The reconciler in-process against the real API server, its cache fed by hand.

No watch runs here, so the cache holds exactly what the test puts in it: a way to show
what the reconciler does when its view of a job is older than the API server's.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.operator.kube import Cluster
from kubetrain.operator.reconcile.cache import Cache, resource_version
from kubetrain.operator.reconcile.reconciler import Reconciler
from kubetrain.operator.settings import Settings
from tests.integration.test_operator import llm_job

pytestmark = pytest.mark.usefixtures("crds", "priority_classes")


def test_a_conflicting_status_write_rereads_the_job_instead_of_waiting_for_the_watch(
    api_client: client.ApiClient, quiet_namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, quiet_namespace, PLURAL, llm_job("stale")
    )
    # Someone changes the job before the operator's watch delivers either version.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, quiet_namespace, PLURAL, "stale", {"metadata": {"labels": {"team": "a"}}}
    )
    cache = Cache()
    key = cache.put_job(created)
    reconciler = Reconciler(Cluster(api_client), cache, Settings())

    assert reconciler.reconcile(key) == 0.5  # the status write conflicted: try again soon
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, quiet_namespace, PLURAL, "stale")
    assert "status" not in stored
    cached = cache.job(key)
    assert cached is not None and resource_version(cached) == resource_version(stored)

    reconciler.reconcile(key)  # with the body it re-read, the write goes through
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, quiet_namespace, PLURAL, "stale")
    assert stored["status"]["phase"] == "Pending"
    assert stored["status"]["observedGeneration"] == stored["metadata"]["generation"]


def test_a_job_gone_from_the_api_server_is_forgotten_not_retried(
    api_client: client.ApiClient, quiet_namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, quiet_namespace, PLURAL, llm_job("gone")
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, quiet_namespace, PLURAL, "gone")
    cache = Cache()
    key = cache.put_job(created)  # the watch has not delivered the deletion (or never will)
    reconciler = Reconciler(Cluster(api_client), cache, Settings())

    assert reconciler.reconcile(key) is None  # the status write found no job: no retry
    assert cache.job(key) is None
    assert reconciler.reconcile(key) is None
