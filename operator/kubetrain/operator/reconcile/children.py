"""The job's children, brought to what the plan decided: its claim, headless Service and
namespace's trainer identity (applied when they differ), its worker and fetch Pods
(created), and its Kueue Workload (created, deleted, released, finished, made ready).

Children are found by their controller owner: one of the job's names held by another owner
(an earlier job of the same name, being removed) is reported, never adopted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetrain.api.job import TrainingJob
from kubetrain.operator import kueue
from kubetrain.operator.kube import Cluster, GoneError, StaleError
from kubetrain.operator.placement import Placement
from kubetrain.operator.reconcile.cache import Cache, Key
from kubetrain.operator.reconcile.decision import Plan, WorkloadAction
from kubetrain.operator.reconcile.refusals import doing
from kubetrain.operator.render import (
    checkpoint_claim,
    fetch_pod,
    headless_service,
    trainer_identity,
    worker_pod,
)
from kubetrain.operator.settings import Settings

JSON = dict[str, Any]


class Children:
    """Applies and creates a job's children (every call may raise ``RefusedError``)."""

    def __init__(self, cluster: Cluster, cache: Cache, settings: Settings) -> None:
        self.cluster, self.cache, self.settings = cluster, cache, settings

    def apply(self, key: Key, job: TrainingJob) -> str | None:
        """Bring the job's claim and headless Service, and its namespace's trainer identity,
        to their desired state: each is compared with what the watch last saw, and applied
        (server-side, one field manager) only when it is missing or differs. None, or why a
        child cannot be had yet (its name belongs to another owner)."""
        owned = [checkpoint_claim(job), headless_service(job, self.settings)]
        for desired in (w for w in owned if w is not None):
            kind, name = desired["kind"], desired["metadata"]["name"]
            observed = self.cache.child(key, kind, name)
            if observed is not None:
                if controller_uid(observed) != job.metadata.uid:
                    return taken(kind, name)
                if kind == "PersistentVolumeClaim" or holds(observed, desired):
                    continue  # a claim's spec is immutable: existing is enough
            with doing(f"could not apply {kind} {name}", "FailedApply"):
                self.cache.put_child(key, self.cluster.apply(desired))
        for desired in trainer_identity(key[0]):
            kind, name = desired["kind"], desired["metadata"]["name"]
            observed = self.cache.shared(key[0], kind, name)
            if observed is None or not holds(observed, desired):
                with doing(f"could not apply {kind} {name}", "FailedApply"):
                    self.cache.put_shared(self.cluster.apply(desired))
        return None

    def create_workers(
        self, key: Key, job: TrainingJob, decided: Plan, placement: Placement
    ) -> str | None:
        """Create the attempt's missing worker Pods; None, or why one cannot be had yet."""
        for index in decided.create:
            pod = worker_pod(
                job,
                index,
                attempt=decided.status.attempt,
                resume_from=decided.resume_from,
                placement=placement,
                settings=self.settings,
                fetched=decided.status.initialization,
            )
            if (refused := self._create(key, job, pod)) is not None:
                return refused
        return None

    def create_fetcher(self, key: Key, job: TrainingJob, decided: Plan) -> str | None:
        """Create the fetch Pod of the plan's fetch attempt; None, or why it cannot be had."""
        assert decided.placement is not None and decided.fetch is not None
        init = decided.status.initialization
        pod = fetch_pod(
            job,
            decided.fetch,
            placement=decided.placement,
            settings=self.settings,
            cache_claim=init.claim_name if init is not None else None,
        )
        return self._create(key, job, pod)

    def _create(self, key: Key, job: TrainingJob, pod: JSON) -> str | None:
        name = pod["metadata"]["name"]
        with doing(f"could not create Pod {name}", "FailedCreatePod"):
            created = self.cluster.create_pod(pod)
        if created:
            return None
        found = next((p for p in self.cache.pods(key) if p["metadata"]["name"] == name), None)
        if found is None or controller_uid(found) == job.metadata.uid:
            return None  # an earlier pass made it
        return taken("Pod", name)

    def workload(
        self, key: Key, action: WorkloadAction, desired: JSON | None, now: datetime
    ) -> float | None:
        """Carry out the plan's Workload action; seconds to wait when it must be retried."""
        name = kueue.workload_name(key[1])
        if action.kind == "create":
            if desired is None:
                return None
            with doing(f"could not create Workload {name}", "FailedCreateWorkload"):
                stored = self.cluster.create_workload(desired)
            if stored is not None:
                self.cache.put_child(key, dict(stored, kind="Workload"))
            return None
        if action.kind == "delete":
            self.cluster.delete_workload(key[0], name)
            return None
        observed = self.cache.child(key, "Workload", name)
        if observed is None:
            return None
        if action.kind == "release":
            changed = kueue.released(observed, action.reason, action.message, now)
        elif action.kind == "ready":
            changed = kueue.pods_ready(observed, action.ready, now)
        else:
            succeeded = action.reason == "Succeeded"
            changed = kueue.finished(observed, succeeded, action.message, now)
        try:
            stored = self.cluster.replace_workload_status(changed)
        except StaleError:  # Kueue wrote it meanwhile: read it again, decide again
            fresh = self.cluster.get_workload(key[0], name)
            if fresh is not None:
                self.cache.put_child(key, dict(fresh, kind="Workload"))
            return 0.2
        except GoneError:
            self.cache.drop_child(key, "Workload", name)
            return None
        self.cache.put_child(key, dict(stored, kind="Workload"))
        return None


def taken(kind: str, name: str) -> str:
    return (
        f"could not create {kind} {name}: one of that name exists and belongs to another "
        "owner (an earlier TrainingJob of the same name, being removed?); waiting for it to go"
    )


def controller_uid(obj: JSON) -> str | None:
    """The uid of the object's controller owner, if it has one."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)


def holds(observed: Any, desired: Any) -> bool:
    """Whether ``observed`` has every field of ``desired`` (server defaults may add more).

    Metadata is compared by labels only: the rest is the API server's.
    """
    if isinstance(desired, dict) and "metadata" in desired and "kind" in desired:
        labels = desired["metadata"].get("labels") or {}
        rest = {k: v for k, v in desired.items() if k not in ("metadata", "apiVersion", "kind")}
        seen = (observed.get("metadata") or {}).get("labels") or {}
        return holds(seen, labels) and holds(observed, rest)
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            holds(observed.get(k), v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(observed) == len(desired)
            and all(holds(o, d) for o, d in zip(observed, desired, strict=True))
        )
    return bool(observed == desired)
