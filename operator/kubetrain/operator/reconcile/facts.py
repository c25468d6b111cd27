"""The cluster facts a pass needs beside the job and its Pods (``Lookups``): whether its
claims exist, and what Kueue says of it (its Workload, queue, position, priority, the
flavors it was admitted on). Reads are shared between jobs and bounded in time: a claim
seen to exist is asked about again after ``CLAIM_SEEN_SECONDS``, Kueue's objects after a
TTL each."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubetrain.api.fetch import fetch_sources
from kubetrain.api.job import TrainingJob
from kubetrain.api.status import Phase, TrainingJobStatus
from kubetrain.operator import kueue
from kubetrain.operator.kube import Cluster
from kubetrain.operator.placement import Placement
from kubetrain.operator.reconcile.cache import Cache, Key
from kubetrain.operator.reconcile.children import controller_uid
from kubetrain.operator.reconcile.decision import Lookups
from kubetrain.operator.render import worker_pod
from kubetrain.operator.settings import Settings

log = logging.getLogger(__name__)
JSON = dict[str, Any]

CLAIM_SEEN_SECONDS = 30.0
"""How long a dataset or cache claim seen to exist is taken to exist without asking again."""
_MEMORY = 10_000
"""Entries a shared read map keeps before it starts over."""


class Facts:
    """Gathers ``Lookups`` for a pass; safe to call from several threads."""

    def __init__(self, cluster: Cluster, cache: Cache, settings: Settings) -> None:
        self.cluster, self.cache, self.settings = cluster, cache, settings
        self._claims: dict[tuple[str, str], float] = {}  # claim -> when it was seen to exist
        self._reads: dict[tuple[str, ...], tuple[float, Any]] = {}  # Kueue objects, by TTL
        self._workloads: dict[Key, tuple[tuple[Any, ...], JSON | None]] = {}  # rendered once
        self._warned_priority: set[str] = set()
        self._guard = threading.Lock()

    def forget(self, key: Key) -> None:
        with self._guard:
            self._workloads.pop(key, None)

    def lookups(self, key: Key, job: TrainingJob, placement: Placement | None) -> Lookups:
        """The facts of this pass: the claims a start needs, and Kueue's."""
        found = Lookups(placement=placement)
        st, spec = job.status, job.spec
        if not st.attempt or st.phase in (Phase.STOPPED, Phase.FAILED, Phase.INITIALIZING):
            namespace = key[0]
            missing = spec.dataset.pvc is not None and not self._claim(
                namespace, spec.dataset.pvc.claim_name
            )
            cache = spec.cache.claim_name if spec.cache is not None else None
            shared = self.settings.cache_claim_name
            if cache is None and shared and fetch_sources(spec) and self._claim(namespace, shared):
                cache = shared
            found = replace(found, cache_claim=cache, dataset_claim_missing=missing)
        return self._kueue(key, job, placement, found)

    def _kueue(
        self, key: Key, job: TrainingJob, placement: Placement | None, found: Lookups
    ) -> Lookups:
        """The job's LocalQueue, its Workload as last seen, the Workload it needs, its
        queue position."""
        named = (job.metadata.labels or {}).get(kueue.QUEUE_LABEL)
        if not self.settings.kueue_enabled:
            return replace(found, kueue_off=bool(named))
        queue = named or self.settings.kueue_default_queue
        if not queue:
            return found
        observed = self.cache.child(key, "Workload", kueue.workload_name(key[1]))
        workload = None
        if observed is not None and controller_uid(observed) == job.metadata.uid:
            workload = kueue.view(observed)
            if workload.preemptor_uid:
                by = next(
                    (
                        j
                        for j in self.cache.jobs()
                        if j["metadata"].get("uid") == workload.preemptor_uid
                    ),
                    None,
                )
                if by is not None:
                    meta = by["metadata"]
                    workload = replace(workload, preemptor=f"{meta['namespace']}/{meta['name']}")
        waiting = workload is not None and not workload.admitted and not workload.deleting
        return replace(
            found,
            queue=queue,
            workload=workload,
            desired_workload=self._desired_workload(key, job, queue, placement),
            cluster_queue=self._cluster_queue(key[0], queue),
            position=self._position(key[0], queue, workload.name) if waiting and workload else None,
        )

    def _desired_workload(
        self, key: Key, job: TrainingJob, queue: str, placement: Placement | None
    ) -> JSON | None:
        """The Workload the job needs now: its workers as they would be created. Rendered
        again only when the spec, the queue or the priority changed."""
        if placement is None:
            return None  # the plan fails the job for it
        priority = self._priority(job)
        labels = tuple(sorted((job.metadata.labels or {}).items()))
        wanted = (job.metadata.uid, job.metadata.generation, labels, queue, priority)
        with self._guard:
            known = self._workloads.get(key)
        if known is not None and known[0] == wanted:
            return known[1]
        worker = worker_pod(
            job, 0, attempt=0, resume_from="latest", placement=placement, settings=self.settings
        )
        desired = kueue.workload(job, worker, queue, priority)
        with self._guard:
            self._workloads[key] = (wanted, desired)
        return desired

    def _read(self, what: tuple[str, ...], ttl: float, fetch: Callable[[], Any]) -> Any:
        """A Kueue object read at most once per ``ttl`` seconds (shared by every job)."""
        now = time.monotonic()
        with self._guard:
            cached = self._reads.get(what)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        value = fetch()
        with self._guard:
            if len(self._reads) > _MEMORY:
                self._reads.clear()
            self._reads[what] = (now, value)
        return value

    def _priority(self, job: TrainingJob) -> tuple[str, int] | None:
        """The WorkloadPriorityClass of the job's spec.priority and its value; None (and a
        warning, once) when the class does not exist."""
        name = self.settings.kueue_priority_classes.get(str(job.spec.priority))
        if not name:
            return None
        found = self._read(
            ("wpc", name),
            300.0,
            lambda: self.cluster.get_kueue_object("workloadpriorityclasses", name),
        )
        if found is None:
            if name not in self._warned_priority:
                self._warned_priority.add(name)
                log.warning(
                    "WorkloadPriorityClass %s (spec.priority %s) does not exist: "
                    "Workloads get Kueue's default priority",
                    name,
                    job.spec.priority,
                )
            return None
        return name, int(found.get("value", 0))

    def _cluster_queue(self, namespace: str, queue: str) -> str | None:
        found = self._read(
            ("lq", namespace, queue),
            60.0,
            lambda: self.cluster.get_kueue_object("localqueues", queue, namespace),
        )
        return str((found.get("spec") or {}).get("clusterQueue") or "") or None if found else None

    def _position(self, namespace: str, queue: str, workload: str) -> int | None:
        """The Workload's place in its LocalQueue (Kueue's visibility API; one read per
        queue every few seconds); None where the API cannot be reached."""

        def fetch() -> list[JSON] | None:
            try:
                return self.cluster.pending_workloads(
                    namespace, queue, self.settings.kueue_visibility_url
                )
            except (ApiException, HTTPError, OSError, ValueError) as err:
                log.debug("Kueue visibility API for %s/%s: %s", namespace, queue, err)
                return None

        pending = self._read(("visibility", namespace, queue), 5.0, fetch)
        for item in pending or []:
            if (item.get("metadata") or {}).get("name") == workload:
                return int(item.get("positionInLocalQueue", 0))
        return None

    def admitted_placement(self, placement: Placement, status: TrainingJobStatus) -> Placement:
        """The workers' placement with the node labels and tolerations of the flavors Kueue
        admitted them on (the job-framework contract); unchanged without Kueue."""
        if status.queue is None or not status.queue.admitted or not status.queue.flavors:
            return placement
        labels: dict[str, str] = {}
        tolerations: list[JSON] = []
        for flavor in dict.fromkeys(status.queue.flavors.values()):
            body = self._read(
                ("flavor", flavor),
                60.0,
                functools.partial(self.cluster.get_kueue_object, "resourceflavors", flavor),
            )
            more_labels, more_tolerations = kueue.admitted_placement(body)
            labels |= more_labels
            tolerations += more_tolerations
        return replace(
            placement,
            admitted_labels=tuple(sorted(labels.items())),
            admitted_tolerations=tuple(tolerations),
        )

    def _claim(self, namespace: str, name: str) -> bool:
        """Whether the claim exists; one seen to exist is not asked about again for
        ``CLAIM_SEEN_SECONDS`` (jobs starting together), then asked again: it may be gone."""
        now = time.monotonic()
        with self._guard:
            seen = self._claims.get((namespace, name))
        if seen is not None and now - seen < CLAIM_SEEN_SECONDS:
            return True
        found = self.cluster.claim_exists(namespace, name)
        with self._guard:
            if len(self._claims) > _MEMORY:
                self._claims.clear()
            if found:
                self._claims[(namespace, name)] = now
            else:
                self._claims.pop((namespace, name), None)
        return found
