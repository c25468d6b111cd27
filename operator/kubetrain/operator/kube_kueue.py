"""The operator's calls about Kueue's objects: its jobs' Workloads (written under the same
leadership fence as every other write), and the queues, flavors and priority classes it
reads. A part of ``kube.Cluster``."""

from __future__ import annotations

import json
from typing import Any, Protocol, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.operator.kueue import KUEUE_GROUP, KUEUE_VERSION, VISIBILITY_GROUP, WORKLOADS

JSON = dict[str, Any]


class _Calls(Protocol):
    """What these calls need of the ``Cluster`` they are part of."""

    custom: client.CustomObjectsApi
    timeout: tuple[float, float]

    def _write(self, verb: str, what: str) -> None: ...

    def _count(self, verb: str) -> None: ...

    def _replace_status(self, group: str, version: str, plural: str, body: JSON) -> JSON: ...


class KueueCalls:
    """Workloads, LocalQueues, ResourceFlavors, WorkloadPriorityClasses, pending Workloads."""

    def serves_workloads(self: _Calls) -> bool:
        """Whether the API server serves Kueue's Workloads (kueue.x-k8s.io/v1beta2)."""
        try:
            self.custom.list_cluster_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, WORKLOADS, limit=1, _request_timeout=self.timeout
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def create_workload(self: _Calls, manifest: JSON) -> JSON | None:
        """Create a job's Workload; None when one of that name exists already."""
        meta = manifest["metadata"]
        self._write("create", f"Workload {meta['namespace']}/{meta['name']}")
        try:
            return cast(
                JSON,
                self.custom.create_namespaced_custom_object(
                    KUEUE_GROUP,
                    KUEUE_VERSION,
                    meta["namespace"],
                    WORKLOADS,
                    manifest,
                    _request_timeout=self.timeout,
                ),
            )
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    def delete_workload(self: _Calls, namespace: str, name: str) -> None:
        """Delete a Workload (its quota goes back at once); a missing one is fine."""
        self._write("delete", f"Workload {namespace}/{name}")
        try:
            self.custom.delete_namespaced_custom_object(
                KUEUE_GROUP,
                KUEUE_VERSION,
                namespace,
                WORKLOADS,
                name,
                _request_timeout=self.timeout,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def replace_workload_status(self: _Calls, body: JSON) -> JSON:
        """Write a Workload's status guarded by its resourceVersion (StaleError, GoneError)."""
        return self._replace_status(KUEUE_GROUP, KUEUE_VERSION, WORKLOADS, body)

    def get_workload(self: _Calls, namespace: str, name: str) -> JSON | None:
        """The job's Workload as stored now; None when it does not exist."""
        return _get(self, WORKLOADS, name, namespace)

    def get_kueue_object(
        self: _Calls, plural: str, name: str, namespace: str | None = None
    ) -> JSON | None:
        """A ResourceFlavor, WorkloadPriorityClass (cluster-scoped) or LocalQueue; None
        when it does not exist."""
        return _get(self, plural, name, namespace)

    def pending_workloads(self: _Calls, namespace: str, queue: str, host: str = "") -> list[JSON]:
        """The LocalQueue's pending Workloads in Kueue's order (its visibility API), through
        the API server's aggregation or, with ``host``, from the visibility server itself."""
        api = self.custom.api_client
        path = (
            f"/apis/{VISIBILITY_GROUP}/{KUEUE_VERSION}/namespaces/{namespace}/localqueues/"
            f"{queue}/pendingworkloads"
        )
        self._count("get")
        method, url, headers, _, _ = api.param_serialize(
            "GET",
            path,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _host=host or None,
        )
        response = api.call_api(method, url, header_params=headers, _request_timeout=self.timeout)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=response.reason)
        return list(json.loads(response.data).get("items") or [])


def _get(calls: _Calls, plural: str, name: str, namespace: str | None) -> JSON | None:
    """A Kueue object (namespaced where ``namespace`` is given); None when it does not exist."""
    calls._count("get")
    try:
        if namespace is None:
            found = calls.custom.get_cluster_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, plural, name, _request_timeout=calls.timeout
            )
        else:
            found = calls.custom.get_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, plural, name, _request_timeout=calls.timeout
            )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return cast(JSON, found)
