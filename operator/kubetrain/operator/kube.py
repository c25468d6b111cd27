"""The one small layer through which the operator talks to the cluster."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.operator import metrics
from kubetrain.operator.kube_kueue import KueueCalls

log = logging.getLogger(__name__)
JSON = dict[str, Any]

COMPONENT = "kubetrain-operator"
FIELD_MANAGER = COMPONENT
"""The one field manager of every server-side apply the operator sends."""


def _discard(response: Any) -> None:
    """Read an unwanted response body raw (no model deserialisation) and free the connection.

    The body must be read before the connection goes back to the pool, or the next
    request on it would read this body as its status line.
    """
    response.read()
    response.release_conn()


TIMEOUT = (5.0, 30.0)
"""Seconds to connect and to wait for a response: a hung call must not hold a job's
reconcile (and its worker) forever."""


class StaleError(Exception):
    """The object changed since it was read; read again and retry."""


class GoneError(Exception):
    """The object no longer exists."""


class NotLeadingError(Exception):
    """A write refused before it was sent: this replica is not the leader within its renew
    deadline. Not the job's error: the pass ends where it is, and the leader (this replica
    once it renews, or another) takes the job up from the cluster's state."""


class Cluster(KueueCalls):
    """Typed access to exactly the objects the operator manages.

    ``fence`` says whether this replica may write now (the leader's ``Leadership.is_set``);
    every write about jobs and their children asks it first and raises ``NotLeadingError``
    when it may not. None, as standalone, writes always."""

    timeout = TIMEOUT

    def __init__(
        self, api_client: client.ApiClient, fence: Callable[[], bool] | None = None
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.fence = fence

    @staticmethod
    def _count(verb: str) -> None:
        metrics.API_REQUESTS.labels(verb).inc()

    def may_write(self) -> bool:
        """Whether the fence lets this replica write now."""
        return self.fence is None or self.fence()

    def _write(self, verb: str, what: str) -> None:
        """Count a write about to be sent, once the fence lets it through."""
        if not self.may_write():
            raise NotLeadingError(f"not the leader: {verb} {what} not sent")
        self._count(verb)

    def create_pod(self, manifest: JSON) -> bool:
        """Create a worker Pod; False when one of that name exists (creation is idempotent).

        The other children are server-side applied (``apply``); a Pod is only ever created.
        """
        meta = manifest["metadata"]
        self._write("create", f"Pod {meta['namespace']}/{meta['name']}")
        try:
            # The response is not needed: skip deserialising it into client models.
            _discard(
                self.core.create_namespaced_pod(
                    manifest["metadata"]["namespace"],
                    cast(Any, manifest),  # a plain manifest; the client sends it as JSON
                    _preload_content=False,
                    _request_timeout=TIMEOUT,
                )
            )
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def apply(self, manifest: JSON) -> JSON:
        """Server-side apply ``manifest`` (create or update the fields the operator owns).

        Returns the object as stored, so the caller's cache is current before the watch
        delivers it.
        """
        kind, meta = manifest["kind"], manifest["metadata"]
        patch: Any = {
            "PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
            "ServiceAccount": self.core.patch_namespaced_service_account,
            "Service": self.core.patch_namespaced_service,
            "Role": self.rbac.patch_namespaced_role,
            "RoleBinding": self.rbac.patch_namespaced_role_binding,
        }[kind]
        self._write("apply", f"{kind} {meta['namespace']}/{meta['name']}")
        response = patch(
            meta["name"],
            meta["namespace"],
            manifest,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
            _request_timeout=TIMEOUT,
        )
        try:
            stored = cast(JSON, json.loads(response.data))
        finally:
            response.release_conn()
        return dict(stored, kind=kind)

    def has_admission_policy(self, name: str) -> bool:
        """Whether the ValidatingAdmissionPolicy ``name`` and its binding are installed."""
        admission = client.AdmissionregistrationV1Api(self.core.api_client)
        try:
            admission.read_validating_admission_policy(name, _request_timeout=TIMEOUT)
            admission.read_validating_admission_policy_binding(name, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a Pod gracefully (its own grace period); a missing Pod is fine."""
        self._write("delete", f"Pod {namespace}/{name}")
        try:
            _discard(
                self.core.delete_namespaced_pod(
                    name, namespace, _preload_content=False, _request_timeout=TIMEOUT
                )
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def claim_exists(self, namespace: str, name: str) -> bool:
        """Whether PersistentVolumeClaim ``namespace/name`` exists (a read, no write)."""
        self._count("get")
        try:
            _discard(
                self.core.read_namespaced_persistent_volume_claim(
                    name, namespace, _preload_content=False, _request_timeout=TIMEOUT
                )
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def label_own_pod(
        self, label: str, value: str | None, timeout: tuple[float, float] = TIMEOUT
    ) -> None:
        """Set (or remove, ``value`` None) a label on this replica's own Pod ($POD_NAME in
        $POD_NAMESPACE); nothing outside a Pod. Best effort: a failure is logged. Not fenced:
        a replica that loses the Lease must still take the label off its own Pod."""
        name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not name or not namespace:
            return
        self._count("patch")
        try:
            _discard(
                self.core.patch_namespaced_pod(
                    name,
                    namespace,
                    {"metadata": {"labels": {label: value}}},
                    _preload_content=False,
                    _request_timeout=timeout,
                )
            )
        except (ApiException, HTTPError, OSError) as err:
            log.warning("cannot label this replica's Pod %s/%s: %s", namespace, name, err)

    def unlabel_other_pods(self, label: str, selector: str) -> list[str]:
        """Remove ``label`` from every Pod in $POD_NAMESPACE that matches ``selector`` and
        carries it, except this replica's own ($POD_NAME); the names unlabelled. Best
        effort: a failure is logged (the next election tries again)."""
        name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not name or not namespace:
            return []
        query = ",".join(s for s in (selector, label) if s)
        done: list[str] = []
        try:
            self._count("list")
            pods: list[Any] = self.core.list_namespaced_pod(
                namespace, label_selector=query, _request_timeout=TIMEOUT
            ).items
            for pod in pods:
                if pod.metadata.name == name:
                    continue
                self._write("patch", f"Pod {namespace}/{pod.metadata.name}")
                _discard(
                    self.core.patch_namespaced_pod(
                        pod.metadata.name,
                        namespace,
                        {"metadata": {"labels": {label: None}}},
                        _preload_content=False,
                        _request_timeout=TIMEOUT,
                    )
                )
                done.append(pod.metadata.name)
        except (ApiException, HTTPError, OSError, NotLeadingError) as err:
            log.warning("cannot clear %s from the other replicas' Pods: %s", label, err)
        return done

    def replace_status(self, job: JSON) -> JSON:
        """Write ``job['status']`` guarded by its resourceVersion.

        StaleError when the job changed since, GoneError when it no longer exists.
        """
        return self._replace_status(GROUP, VERSION, PLURAL, job)

    def _replace_status(self, group: str, version: str, plural: str, body: JSON) -> JSON:
        """PUT ``body``'s status subresource: StaleError on a conflict, GoneError when the
        object no longer exists."""
        meta = body["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        self._write("update", f"{plural} {where} status")
        try:
            return cast(
                JSON,
                self.custom.replace_namespaced_custom_object_status(
                    group, version, meta["namespace"], plural, meta["name"], body,
                    _request_timeout=TIMEOUT,
                ),
            )  # fmt: skip
        except ApiException as err:
            if err.status == 404:
                raise GoneError(f"{plural} {where}") from None
            if err.status == 409:
                raise StaleError(f"{plural} {where}: {err.reason}") from None
            raise

    def get_job(self, namespace: str, name: str) -> JSON | None:
        """The job as stored now, or None once it is gone."""
        self._count("get")
        try:
            return cast(
                JSON,
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT
                ),
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete_job(self, namespace: str, name: str) -> None:
        self._write("delete", f"{PLURAL} {namespace}/{name}")
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def post_event(self, job: JSON, type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event about the job (best effort: never fails the reconcile)."""
        meta = job["metadata"]
        now = datetime.now(UTC)
        event: JSON = {
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": job.get("apiVersion", f"{GROUP}/{VERSION}"),
                "kind": job.get("kind", "TrainingJob"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        self._write("create", f"Event {reason} on {meta['namespace']}/{meta['name']}")
        try:
            response: Any = self.core.create_namespaced_event(
                meta["namespace"],
                cast(Any, event),
                _preload_content=False,
                _request_timeout=TIMEOUT,
            )
            _discard(response)
        except ApiException as err:
            log.warning(
                "could not post event %s on %s: %s %s", reason, meta["name"], err.status, err.body
            )
        except (HTTPError, OSError) as err:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], err)
