"""The operator's moving parts: watch cache, work queue, reconciler and worker threads."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes import client

from kubetrain.api.children import LABEL_JOB, MANAGED_BY
from kubetrain.operator import metrics
from kubetrain.operator.kube import Cluster, NotLeadingError
from kubetrain.operator.kueue import KUEUE_GROUP, KUEUE_VERSION, WORKLOADS
from kubetrain.operator.reconcile.cache import Cache, Key, resource_version
from kubetrain.operator.reconcile.queue import WorkQueue
from kubetrain.operator.reconcile.reconciler import Reconciler
from kubetrain.operator.render import LABEL_TRAINER_IDENTITY
from kubetrain.operator.reports import Inbox, PodIdentity, Pushed
from kubetrain.operator.settings import Settings
from kubetrain.operator.watching import NamespaceFilter, Watcher

log = logging.getLogger(__name__)


class Gate(Protocol):
    """Whether this replica may act (a ``threading.Event``, or the leader's Leadership)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class Controller:
    """Feeds watch events into the cache and queue; workers reconcile queued jobs."""

    def __init__(self, cluster: Cluster, settings: Settings, workers: int = 4) -> None:
        self.cache = Cache()
        self.inbox = Inbox(checkpoint_seconds=settings.status_interval_seconds)
        self.queue: WorkQueue[Key] = WorkQueue()
        self.reconciler = Reconciler(cluster, self.cache, settings, inbox=self.inbox)
        self.active: Gate = threading.Event()  # set while this replica leads (always, standalone)
        self._stopped = threading.Event()
        self._watchers: list[Watcher] = []
        self._workers = [
            threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def watch_children(self, api: client.ApiClient, namespaces: NamespaceFilter) -> None:
        """Start the watches of every job's children, selected by label on the server."""
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        owned = f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_JOB}"
        shared = f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_TRAINER_IDENTITY}"
        watches: list[tuple[Any, str, str, Any]] = [
            (core.list_pod_for_all_namespaces, "Pod", owned, self.child_event),
            (core.list_persistent_volume_claim_for_all_namespaces, "PersistentVolumeClaim",
             owned, self.child_event),
            (core.list_service_for_all_namespaces, "Service", owned, self.child_event),
            (core.list_service_account_for_all_namespaces, "ServiceAccount", shared,
             self.identity_event),
            (rbac.list_role_for_all_namespaces, "Role", shared, self.identity_event),
            (rbac.list_role_binding_for_all_namespaces, "RoleBinding", shared,
             self.identity_event),
        ]  # fmt: skip
        if self.reconciler.settings.kueue_enabled:  # each queued job's Workload
            workloads = client.CustomObjectsApi(api).list_cluster_custom_object
            watches.append((functools.partial(workloads, KUEUE_GROUP, KUEUE_VERSION, WORKLOADS),
                            "Workload", owned, self.child_event))  # fmt: skip
        for list_all, kind, selector, handle in watches:
            watcher = Watcher(list_all, kind, selector, functools.partial(_by_kind, handle, kind),
                              namespaces)  # fmt: skip
            watcher.start()
            self._watchers.append(watcher)

    def stop(self, deadline: float | None = None) -> None:
        """Stop watching and working; waits for reconciles under way until ``deadline``
        (``time.monotonic()``; default 10 s from now) at the latest, not per worker."""
        end = time.monotonic() + 10.0 if deadline is None else deadline
        self._stopped.set()
        self.queue.close()
        for watcher in self._watchers:  # daemon threads: each is given a moment, no more
            watcher.stop(timeout=min(0.5, max(end - time.monotonic(), 0.0)))
        for worker in self._workers:
            worker.join(timeout=max(end - time.monotonic(), 0.0))
        busy = sum(w.is_alive() for w in self._workers)
        if busy:
            log.warning("%d reconcile(s) still under way at shutdown: left to end with the "
                        "process (each resumes from the cluster's state)", busy)  # fmt: skip

    def job_event(self, event: Mapping[str, Any]) -> None:
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        key: Key = (meta.get("namespace", ""), meta.get("name", ""))
        if event.get("type") == "DELETED":
            self.cache.drop_job(key, resource_version(body))
            self._forget(key)
            return
        if self.cache.knows_job(body):
            return  # the echo of the operator's own status write: nothing new to act on
        self.cache.put_job(body)
        self.queue.add(key)

    def _forget(self, key: Key) -> None:
        """Nothing of a deleted job stays: its per-job memory, looks and series."""
        self.reconciler.forget(key)
        self.queue.forget(key)
        metrics.forget_job(key)

    def child_event(self, event: Mapping[str, Any], kind: str) -> None:
        """A worker Pod, checkpoint claim, headless Service or Workload of a job changed."""
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        job = (meta.get("labels") or {}).get(LABEL_JOB)
        if not job:
            return
        key: Key = (meta.get("namespace", ""), job)
        name, deleted = meta.get("name", ""), event.get("type") == "DELETED"
        if kind == "Pod":
            if deleted:
                self.cache.drop_pod(key, name, resource_version(body))
                self.inbox.drop(meta.get("uid", ""))
            else:
                self.cache.put_pod(key, body)
        elif deleted:
            self.cache.drop_child(key, kind, name, resource_version(body))
        else:
            self.cache.put_child(key, dict(body, kind=kind))
        self.queue.add(key)

    def identity_event(self, event: Mapping[str, Any], kind: str) -> None:
        """The namespace's trainer ServiceAccount, Role or RoleBinding changed: every job
        there depends on it."""
        body = event.get("object") or {}
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        if event.get("type") == "DELETED":
            self.cache.drop_shared(namespace, kind, name, resource_version(body))
        else:
            self.cache.put_shared(dict(body, kind=kind))
        for job in self.cache.jobs():
            if job["metadata"]["namespace"] == namespace:
                self.queue.add((namespace, job["metadata"]["name"]))

    def accept_report(self, pod: PodIdentity, pushed: Pushed) -> int:
        """A report pushed by the trainer of ``pod`` (vouched for by its token, decoded at
        the channel's door): 202 when kept, 404 when the Pod is not a worker this operator
        knows."""
        found = self.cache.pod(pod.namespace, pod.name)
        if found is None or found[1]["metadata"].get("uid") != pod.uid:
            return 404
        key, _ = found
        if self.inbox.put(pod.uid, pushed):
            self.queue.add(key)  # a checkpoint, epoch or state change: mirrored at once
        else:
            self.queue.add(key, self.reconciler.progress_due_in(key))
        return 202

    def report_refused(self, pod: PodIdentity, reason: str) -> None:
        """A report the channel refused at its door: a Warning on the job of ``pod``, as for
        a bad annotated report (the channel tells each distinct reason once per Pod)."""
        found = self.cache.pod(pod.namespace, pod.name)
        if found is None or found[1]["metadata"].get("uid") != pod.uid:
            return
        job = self.cache.job(found[0])
        if job is None:
            return
        metrics.REPORTS.labels("rejected").inc()
        self.reconciler.cluster.post_event(
            job,
            "Warning",
            "InvalidProgressReport",
            f"ignored the progress report of Pod {pod.name}: {reason}",
        )

    def resync(self) -> None:
        """Queue every known job: on becoming the leader, take stock of everything."""
        for body in self.cache.jobs():
            meta = body["metadata"]
            self.queue.add((meta["namespace"], meta["name"]))

    def synced(self) -> bool:
        """Every child watch has handed on its first list: a pass sees all of a job's Pods
        (a job looked at before would seem to have none, e.g. Stopped while they stop)."""
        return all(w.synced.is_set() for w in self._watchers)

    def _work(self) -> None:
        while not self._stopped.is_set() and not self.synced():
            self._stopped.wait(0.1)
        while not self._stopped.is_set():
            if not self.active.wait(timeout=1.0):
                continue  # a standby keeps its cache warm but does not act
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            if not self.active.is_set():  # leadership ran out while this worker waited
                self.queue.done(key)
                self.queue.add(key)
                continue
            again = self._pass(key)
            if self.cache.job(key) is None:  # deleted (or never known): keep nothing of it
                self._forget(key)
                # A job created again under that name meanwhile lost its look to _forget.
                again = None if self.cache.job(key) is None else 0.0
            self.queue.done(key)
            if again is not None:
                self.queue.add(key, again)

    def _pass(self, key: Key) -> float | None:
        """One reconcile of ``key``; seconds until it wants another look, or None."""
        try:
            return self.reconciler.reconcile(key)
        except NotLeadingError as err:
            # Leadership lapsed mid-pass and a write was refused: not an error. The job
            # waits in the queue for the leader's next pass, here or on another replica.
            log.info("%s/%s: pass stopped: %s", *key, err)
            return 0.0
        except Exception:
            log.exception("reconcile %s/%s failed", *key)
            metrics.ERRORS.labels("unexpected").inc()
            return 10.0


def _by_kind(handle: Any, kind: str, event: Mapping[str, Any]) -> None:
    handle(event, kind)
