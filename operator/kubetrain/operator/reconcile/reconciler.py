"""Carries out plans: creates children, writes status (throttled), posts Events."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from kubetrain.api.fetch import fetch_sources
from kubetrain.api.job import TrainingJob
from kubetrain.api.status import ConditionStatus, Phase, TrainingJobStatus
from kubetrain.operator import kueue, metrics
from kubetrain.operator.kube import Cluster, GoneError, NotLeadingError, StaleError
from kubetrain.operator.metrics import JobSample
from kubetrain.operator.reconcile.cache import Cache, Key
from kubetrain.operator.reconcile.plan import Lookups, Plan, plan
from kubetrain.operator.reconcile.refusals import Refusal, RefusedError, api_message, doing
from kubetrain.operator.render import (
    Placement,
    checkpoint_claim,
    fetch_pod,
    headless_service,
    trainer_identity,
    worker_pod,
)
from kubetrain.operator.reports import Inbox, annotation_written_at, newer_pushed
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import PodView, observe_pod, set_condition

log = logging.getLogger(__name__)
JSON = dict[str, Any]

CLAIM_SEEN_SECONDS = 30.0
"""How long a dataset or cache claim seen to exist is taken to exist without asking again."""

_SIGNIFICANT = (
    "phase",
    "conditions",
    "attempt",
    "restarts",
    "failures",
    "checkpoints",
    "latest_checkpoint",
    "model",
    "start_time",
    "completion_time",
    "observed_generation",
    "resource_allocation",
)
"""Status fields whose change is written at once; other changes wait for the throttle."""


class TokenBucket:
    """``rate`` tokens a second, up to ``rate`` banked: the operator-wide write budget."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self._clock = rate, clock
        self._tokens, self._at = rate, clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate


_CLOCK_DRIVEN = {
    "resourceUsage": None,
    "estimatedCompletionTime": None,
    "progress": ("elapsedSeconds", "remainingSeconds"),
    "estimatedCost": ("totalUSD",),
}
"""Status fields that move with the clock alone, between reports."""


def _clock_only(status: JSON) -> JSON:
    """``status`` without its clock-driven fields: equal before and after means only the
    clock moved."""
    rest = dict(status)
    for name, inner in _CLOCK_DRIVEN.items():
        if inner is None or name not in rest:
            rest.pop(name, None)
        else:
            rest[name] = {k: v for k, v in rest[name].items() if k not in inner}
    return rest


_NEVER = datetime.min.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _dump(status: TrainingJobStatus) -> JSON:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def validation_message(err: ValidationError) -> str:
    """``spec.training.learningRate: Input should be ...`` for the first problem found."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    return f"{where}: {first['msg']}" if where else first["msg"]


class Reconciler:
    """Reconciles one job at a time per key; safe to call from several threads."""

    def __init__(
        self,
        cluster: Cluster,
        cache: Cache,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        inbox: Inbox | None = None,
    ) -> None:
        self.cluster, self.cache, self.settings, self.clock = cluster, cache, settings, clock
        self.inbox = Inbox() if inbox is None else inbox
        self._last_write: dict[Key, float] = {}
        self._bad_reports: dict[Key, dict[str, str]] = {}  # job -> Pod uid -> report digest
        self._errors: dict[Key, int] = {}  # failed reconciles in a row (backoff)
        self._budget = TokenBucket(settings.status_writes_per_second)
        self._create_failures: dict[Key, int] = {}  # refused Pod creations in a row
        self._answered: dict[Key, int] = {}  # transient refusals in a row
        self._refusals: dict[Key, Refusal] = {}  # a refusal the next plan fails the job with
        self._claims: dict[tuple[str, str], float] = {}  # claim -> when it was seen to exist
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()
        self._kueue_reads: dict[tuple[str, ...], tuple[float, Any]] = {}  # TTL cache
        self._warned_priority: set[str] = set()

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: Key) -> None:
        """Drop per-job memory once the job is gone."""
        with self._guard:
            self._locks.pop(key, None)
        self._last_write.pop(key, None)
        self._create_failures.pop(key, None)
        self._bad_reports.pop(key, None)
        self._errors.pop(key, None)
        self._answered.pop(key, None)
        self._refusals.pop(key, None)

    def _gone(self, key: Key) -> None:
        """The job is gone from the API server: whatever the watch says later."""
        self.cache.drop_job(key)
        self.forget(key)
        metrics.forget_job(key)

    def _backoff(self, key: Key, first: float, cap: float = 120.0) -> float:
        """Seconds before retrying a job whose reconcile failed: doubling, capped (2 min)."""
        failures = self._errors[key] = self._errors.get(key, 0) + 1
        return min(cap, first * (1 << min(failures - 1, 10)))

    def reconcile(self, key: Key) -> float | None:
        """Bring one job closer to its spec; returns seconds until it wants another look."""
        started = time.monotonic()
        generation = None  # of the spec this pass acts on
        try:
            with self._lock(key):
                body = self.cache.job(key)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    return None
                generation = body["metadata"].get("generation")
                again = self._reconcile(body)
            self._errors.pop(key, None)
            self._answered.pop(key, None)  # "in a row": a pass that went through ends the row
            return again
        except NotLeadingError:  # leadership lapsed mid-pass: the controller puts the job back
            raise
        except GoneError:
            self._gone(key)
            return None
        except StaleError:
            self._refresh(key)
            return self._backoff(key, 0.5)
        except RefusedError as err:
            metrics.ERRORS.labels("api").inc()
            return self._refused(key, err, generation)
        except ApiException as err:
            metrics.ERRORS.labels("api").inc()
            retry = self._backoff(key, 1.0)
            log.warning(
                "reconcile %s/%s: API error %s: %s; retrying in %.1fs",
                *key, err.status, api_message(err), retry,
            )  # fmt: skip
            return retry
        except (HTTPError, OSError) as err:  # e.g. a timed-out call, a dropped connection
            metrics.ERRORS.labels("api").inc()
            retry = self._backoff(key, 1.0)
            log.warning(
                "reconcile %s/%s: no answer from the API server: %s; retrying in %.1fs",
                *key, err, retry,
            )  # fmt: skip
            return retry
        except Exception:  # a defect of the operator's: logged whole, backed off per job
            metrics.ERRORS.labels("internal").inc()
            retry = self._backoff(key, 5.0, cap=300.0)
            log.exception("reconcile %s/%s failed; retrying in %.1fs", *key, retry)
            return retry
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    def _refused(self, key: Key, err: RefusedError, generation: int | None) -> float:
        """A refused action: a permanent refusal fails the job at the next pass (the plan
        writes it); a transient one is retried, at most ``transientErrorLimit`` times in a
        row, then fails the job likewise."""
        limit = self.settings.transient_error_limit
        if err.transient and err.reason == "FailedCreatePod":  # counted by its condition
            return self._creation_refused(key, err.describe(), generation)
        if err.transient:
            tries = self._answered[key] = self._answered.get(key, 0) + 1
            if tries < limit:
                retry = self._backoff(key, 1.0)
                log.warning("%s/%s: %s; retrying in %.1fs", *key, err.describe(), retry)
                return retry
            message = f"{err.describe()} (refused {tries} times in a row)"
        else:
            message = err.describe()
        self._answered.pop(key, None)
        self._create_failures.pop(key, None)
        log.warning("%s/%s failed: %s", *key, message)
        self._refusals[key] = Refusal(err.reason, message, generation)
        return 0.0

    def _refresh(self, key: Key) -> None:
        """After a conflict, read the job again rather than wait for the watch to catch up.

        A watch that lags (or silently stalls) would otherwise keep every status write of
        this job conflicting; the cache keeps whichever body is newer. A job that is gone
        is forgotten at once.
        """
        try:
            body = self.cluster.get_job(*key)
        except ApiException as err:
            log.warning("re-read %s/%s: API error %s: %s", *key, err.status, api_message(err))
            return
        if body is None:
            self._gone(key)
        else:
            self.cache.put_job(body)

    def _reconcile(self, body: JSON) -> float | None:
        key: Key = (body["metadata"]["namespace"], body["metadata"]["name"])
        now = self.clock()
        try:
            job = TrainingJob.model_validate(body)
        except ValidationError as err:
            return self._invalid(body, validation_message(err), now)
        # Level-based: right after an operator restart too, not only once a status is written.
        metrics.observe_phase(key, str(job.status.phase or ""))
        # Children are this job's by controller owner: a Pod left by an earlier job of the
        # same name (being garbage-collected) is never counted or adopted.
        pods = [
            self._with_pushed(observe_pod(p), p)
            for p in self.cache.pods(key)
            if controller_uid(p) == job.metadata.uid
        ]
        lookups = replace(
            self._lookups(job), refusal=self._refusals.pop(key, None), **self._kueue(key, job)
        )
        decided = plan(job, pods, now=now, settings=self.settings, lookups=lookups)
        metrics.JOB_SERIES.observe(key, job_sample(job, decided.status, self.settings))
        # Actions follow a recorded status (the attempt number above all), so a status
        # that comes with actions is written at once, throttle or not.
        acts = bool(decided.create or decided.delete or decided.events)
        wait = self._write_status(key, body, job.status, decided, force=acts)
        # Events tell of the transition the status now records. They go out after the
        # child changes, which wait for nothing else (creation latency), and whatever those
        # changes do: a failed Pod creation retries, but loses no Event.
        try:
            for name in dict.fromkeys(decided.delete):
                self.cluster.delete_pod(key[0], name)
            if decided.workload is not None:
                retry = self._workload(key, decided.workload, lookups.desired_workload)
                if retry is not None:
                    return retry
            if decided.placement is not None and (
                decided.create or decided.fetch is not None or decided.status.phase in _ACTIVE
            ):
                waiting = self._apply_children(key, job)
                if waiting is not None:
                    return waiting
            if decided.fetch is not None and decided.placement is not None:
                refused = self._create_fetch_pod(key, body, job, decided)
                if refused is not None:
                    return refused
            if decided.create:
                refused = self._create_pods(key, body, job, decided)
                if refused is not None:
                    return refused
        finally:
            if self.cluster.may_write():  # a replica that no longer leads posts nothing
                for event in decided.events:
                    self.cluster.post_event(body, event.type, event.reason, event.message)
        self._report_problems(key, body, decided)
        if decided.delete_job:
            self.cluster.delete_job(*key)
            return None
        return self._next_look(decided, wait, running=any(p.phase == "Running" for p in pods))

    def _with_pushed(self, pod: PodView, body: JSON) -> PodView:
        """The Pod with the newer of its pushed and its annotated report, by when the
        operator received the push and the API server the annotation (never by the
        trainer's clock)."""
        pushed, received_at = self.inbox.get(pod.uid), self.inbox.received_at(pod.uid)
        if pushed is None or received_at is None or pushed == pod.report:
            return pod
        if pod.report and not newer_pushed(received_at, annotation_written_at(body)):
            return pod  # e.g. written by the fallback while this replica was away
        return replace(pod, report=pushed)

    def progress_due_in(self, key: Key) -> float:
        """Seconds until a progress-only status write of the job is allowed again."""
        since = time.monotonic() - self._last_write.get(key, 0.0)
        return max(0.0, self.settings.status_interval_seconds - since)

    def _next_look(self, decided: Plan, wait: float | None, *, running: bool) -> float | None:
        if wait is not None:
            return wait
        if decided.requeue_after is not None:
            return decided.requeue_after
        phase = decided.status.phase
        if phase in (
            Phase.RUNNING, Phase.STOPPING, Phase.QUEUED, Phase.PENDING, Phase.INITIALIZING
        ):  # fmt: skip
            return self.settings.resync_seconds
        if running:  # e.g. workers still checkpointing after a failure: usage still accrues
            return self.settings.resync_seconds
        return None

    def _write_status(
        self, key: Key, body: JSON, old: TrainingJobStatus, decided: Plan, force: bool = False
    ) -> float | None:
        """Write the planned status if it changed; seconds to wait when throttled."""
        new = decided.status
        dumped = _dump(new)
        if dumped == _dump(old):
            return None
        significant = force or any(getattr(new, f) != getattr(old, f) for f in _SIGNIFICANT)
        if not significant:
            since = time.monotonic() - self._last_write.get(key, 0.0)
            interval = (
                self.settings.usage_interval_seconds
                if _clock_only(dumped) == _clock_only(_dump(old))
                else self.settings.status_interval_seconds
            )
            if since < interval:
                return interval - since
            if (wait := self._budget.take()) > 0:
                return wait
        updated = dict(body, status=_dump(new))
        written = self.cluster.replace_status(updated)
        self.cache.put_job(written)
        self._last_write[key] = time.monotonic()
        metrics.STATUS_WRITES.inc()
        metrics.observe_phase(key, str(new.phase) if new.phase else "")
        _count_changes(old, new)
        return None

    def _invalid(self, body: JSON, message: str, now: datetime) -> float | None:
        """A body the models reject (e.g. stored before a CRD upgrade): Failed, not retried."""
        raw_status = body.get("status") or {}
        try:
            status = TrainingJobStatus.model_validate(raw_status)
        except ValidationError:
            status = TrainingJobStatus()
        generation = body["metadata"].get("generation")
        failed = status.condition("Failed")
        if failed and failed.reason == "InvalidSpec" and failed.observed_generation == generation:
            return None
        status.phase = Phase.FAILED
        status.observed_generation = generation
        status.conditions = set_condition(
            status.conditions,
            "Failed",
            ConditionStatus.TRUE,
            "InvalidSpec",
            message,
            generation=generation,
            now=now,
        )
        written = self.cluster.replace_status(dict(body, status=_dump(status)))
        self.cache.put_job(written)
        metrics.observe_phase((body["metadata"]["namespace"], body["metadata"]["name"]), "Failed")
        self.cluster.post_event(body, "Warning", "InvalidSpec", message)
        return None

    def _report_problems(self, key: Key, body: JSON, decided: Plan) -> None:
        """One Warning per bad report; remembered only for the Pods that still report badly."""
        seen = self._bad_reports.pop(key, {})
        kept: dict[str, str] = {}
        for pod, problem in decided.bad_reports:
            digest = kept[pod.uid] = hashlib.sha256((pod.report or "").encode()).hexdigest()
            if seen.get(pod.uid) == digest:
                continue
            metrics.REPORTS.labels("rejected").inc()
            self.cluster.post_event(
                body,
                "Warning",
                "InvalidProgressReport",
                f"ignored the progress report of Pod {pod.name}: {problem}",
            )
        if kept:
            self._bad_reports[key] = kept

    def _apply_children(self, key: Key, job: TrainingJob) -> float | None:
        """Bring the job's claim and headless Service, and its namespace's trainer identity,
        to their desired state: each is compared with what the watch last saw, and applied
        (server-side, one field manager) only when it is missing or differs. When a child
        of that name still belongs to an earlier job of the same name, the job says so
        (``PodCreationFailed``) and waits: the seconds until the next try."""
        owned = [checkpoint_claim(job), headless_service(job, self.settings)]
        for desired in (w for w in owned if w is not None):
            kind, name = desired["kind"], desired["metadata"]["name"]
            observed = self.cache.child(key, kind, name)
            if observed is not None:
                if controller_uid(observed) != job.metadata.uid:
                    return self._creation_refused(key, _taken(kind, name), job.metadata.generation)
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

    def _create_pods(self, key: Key, body: JSON, job: TrainingJob, decided: Plan) -> float | None:
        """Create the attempt's missing worker Pods.

        When the API server refuses a Pod (admission: a missing PriorityClass, a quota),
        the job says so in its ``PodCreationFailed`` condition and the creation is retried
        with backoff: the seconds to wait.
        """
        assert decided.placement is not None
        placement = self._admitted_placement(key, decided.placement, decided.status)
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
            name = pod["metadata"]["name"]
            with doing(f"could not create Pod {name}", "FailedCreatePod"):
                created = self.cluster.create_pod(pod)
            if not created and not self._owns_pod(key, job, name):
                return self._creation_refused(key, _taken("Pod", name), job.metadata.generation)
        if self._create_failures.pop(key, None) is not None:
            self._creation_condition(key, ConditionStatus.FALSE, "PodsCreated", "")
        return None

    def _lookups(self, job: TrainingJob) -> Lookups:
        """The cluster facts a start needs (reads, at most once per job and claim)."""
        st, spec = job.status, job.spec
        if st.attempt and st.phase not in (Phase.STOPPED, Phase.FAILED, Phase.INITIALIZING):
            return Lookups()
        namespace = job.metadata.namespace or ""
        missing = spec.dataset.pvc is not None and not self._claim(
            namespace, spec.dataset.pvc.claim_name
        )
        cache = spec.cache.claim_name if spec.cache is not None else None
        shared = self.settings.cache_claim_name
        if cache is None and shared and fetch_sources(spec) and self._claim(namespace, shared):
            cache = shared
        return Lookups(cache_claim=cache, dataset_claim_missing=missing)

    # -- Kueue ---------------------------------------------------------------------------

    def _kueue(self, key: Key, job: TrainingJob) -> dict[str, Any]:
        """The Kueue facts of this pass (``Lookups`` fields): the job's LocalQueue, its
        Workload as last seen, the Workload it needs, its queue position."""
        named = (job.metadata.labels or {}).get(kueue.QUEUE_LABEL)
        if not self.settings.kueue_enabled:
            return {"kueue_off": bool(named)}
        queue = named or self.settings.kueue_default_queue
        if not queue:
            return {}
        observed = self.cache.child(key, "Workload", kueue.workload_name(key[1]))
        found = None
        if observed is not None and controller_uid(observed) == job.metadata.uid:
            found = kueue.view(observed)
            if found.preemptor_uid:
                by = next(
                    (
                        j
                        for j in self.cache.jobs()
                        if j["metadata"].get("uid") == found.preemptor_uid
                    ),
                    None,
                )
                if by is not None:
                    meta = by["metadata"]
                    found = replace(found, preemptor=f"{meta['namespace']}/{meta['name']}")
        waiting = found is not None and not found.admitted and not found.deleting
        return {
            "queue": queue,
            "workload": found,
            "desired_workload": self._desired_workload(job, queue),
            "cluster_queue": self._cluster_queue(key[0], queue),
            "position": self._position(key[0], queue, found.name) if waiting and found else None,
        }

    def _desired_workload(self, job: TrainingJob, queue: str) -> JSON | None:
        """The Workload the job needs now: its workers as they would be created."""
        catalogue = self.settings.catalogue
        gpu_type = catalogue.gpu_type_for(job.spec)
        entry = catalogue.get(gpu_type)
        if entry is None:
            return None  # the plan fails the job for it
        placement = Placement.resolve(job.spec, gpu_type, entry)
        worker = worker_pod(
            job, 0, attempt=0, resume_from="latest", placement=placement, settings=self.settings
        )
        return kueue.workload(job, worker, queue, self._priority(job))

    def _read(self, what: tuple[str, ...], ttl: float, fetch: Callable[[], Any]) -> Any:
        """A Kueue object read at most once per ``ttl`` seconds (shared by every job)."""
        now = time.monotonic()
        with self._guard:
            cached = self._kueue_reads.get(what)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        value = fetch()
        with self._guard:
            if len(self._kueue_reads) > 10_000:
                self._kueue_reads.clear()
            self._kueue_reads[what] = (now, value)
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

    def _workload(self, key: Key, action: Any, desired: JSON | None) -> float | None:
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
            changed = kueue.released(observed, action.reason, action.message, self.clock())
        else:
            succeeded = action.reason == "Succeeded"
            changed = kueue.finished(observed, succeeded, action.message, self.clock())
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

    def _admitted_placement(
        self, key: Key, placement: Placement, status: TrainingJobStatus
    ) -> Placement:
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
            if len(self._claims) > 10_000:
                self._claims.clear()
            if found:
                self._claims[(namespace, name)] = now
            else:
                self._claims.pop((namespace, name), None)
        return found

    def _create_fetch_pod(
        self, key: Key, body: JSON, job: TrainingJob, decided: Plan
    ) -> float | None:
        assert decided.placement is not None and decided.fetch is not None
        init = decided.status.initialization
        pod = fetch_pod(
            job,
            decided.fetch,
            placement=decided.placement,
            settings=self.settings,
            cache_claim=init.claim_name if init is not None else None,
        )
        name = pod["metadata"]["name"]
        with doing(f"could not create Pod {name}", "FailedCreatePod"):
            created = self.cluster.create_pod(pod)
        if not created and not self._owns_pod(key, job, name):
            return self._creation_refused(key, _taken("Pod", name), job.metadata.generation)
        return None

    def _owns_pod(self, key: Key, job: TrainingJob, name: str) -> bool:
        """Whether the existing Pod ``name`` is this job's (an earlier pass made it)."""
        found = next((p for p in self.cache.pods(key) if p["metadata"]["name"] == name), None)
        return found is None or controller_uid(found) == job.metadata.uid

    def _creation_refused(self, key: Key, message: str, generation: int | None) -> float:
        """A worker Pod that cannot be created yet: ``PodCreationFailed`` says why, and the
        creation is retried from 5 s doubling to 5 min, ``transientErrorLimit`` times."""
        failures = self._create_failures[key] = self._create_failures.get(key, 0) + 1
        if failures >= self.settings.transient_error_limit:
            self._create_failures.pop(key, None)
            self._refusals[key] = Refusal(
                "FailedCreatePod", f"{message} (refused {failures} times in a row)", generation
            )
            return 0.0
        retry = min(300.0, 5.0 * (1 << min(failures - 1, 6)))  # 5 s doubling to 5 min
        log.warning("%s/%s: %s; retrying in %.0fs", *key, message, retry)
        self._creation_condition(key, ConditionStatus.TRUE, "FailedCreatePod", message)
        return retry

    def _creation_condition(
        self, key: Key, status: ConditionStatus, reason: str, message: str
    ) -> None:
        """Record a change of ``PodCreationFailed`` (status and an Event); nothing if unchanged."""
        body = self.cache.job(key)
        if body is None:
            return
        current = TrainingJobStatus.model_validate(body.get("status") or {})
        old = current.condition("PodCreationFailed")
        if old is None and status is ConditionStatus.FALSE:
            return
        if old is not None and (old.status, old.message) == (status, message):
            return
        generation = body["metadata"].get("generation")
        current.conditions = set_condition(
            current.conditions,
            "PodCreationFailed",
            status,
            reason,
            message or "every worker Pod of the attempt was created",
            generation=generation,
            now=self.clock(),
        )
        self.cache.put_job(self.cluster.replace_status(dict(body, status=_dump(current))))
        self._last_write[key] = time.monotonic()
        metrics.STATUS_WRITES.inc()
        if status is ConditionStatus.TRUE:
            self.cluster.post_event(body, "Warning", "FailedCreatePod", message)


def _taken(kind: str, name: str) -> str:
    return (
        f"could not create {kind} {name}: one of that name exists and belongs to another "
        "owner (an earlier TrainingJob of the same name, being removed?); waiting for it to go"
    )


_ACTIVE = (Phase.PENDING, Phase.INITIALIZING, Phase.QUEUED, Phase.RUNNING, Phase.STOPPING)
"""Phases in which a job's children must be in their desired state."""


def job_sample(job: TrainingJob, status: TrainingJobStatus, settings: Settings) -> JobSample:
    """The job's per-job series, from the status the reconciler just planned."""
    values: dict[str, float] = {
        "restarts": status.restarts,
        "failures": status.failures,
        "attempt": status.attempt,
    }
    progress, figures, usage = status.progress, status.metrics, status.resource_usage
    if progress is not None:
        counts: tuple[tuple[str, int | None], ...] = (
            ("epoch", progress.current_epoch),
            ("step", progress.current_step),
            ("total_steps", progress.total_steps),
        )
        values |= {name: float(value) for name, value in counts if value is not None}
        if progress.percentage is not None:
            values["progress_ratio"] = progress.percentage / 100
    if figures is not None:
        reals: tuple[tuple[str, float | int | None], ...] = (
            ("loss", figures.current_loss),
            ("best_loss", figures.best_loss),
            ("validation_loss", figures.validation_loss),
            ("learning_rate", figures.learning_rate),
            ("throughput", figures.throughput),
            ("gpu_memory_bytes", figures.gpu_memory_bytes),
        )
        values |= {name: float(value) for name, value in reals if value is not None}
    if usage is not None:
        values["gpu_hours"], values["cost_usd"] = usage.gpu_hours or 0.0, usage.cost_usd or 0.0
    latest = next((c for c in status.checkpoints if c.id == status.latest_checkpoint), None)
    if latest is not None and latest.step is not None:
        values["latest_checkpoint_step"] = float(latest.step)
    held = status.resource_allocation
    running = status.phase in (Phase.RUNNING, Phase.STOPPING)
    gpus = (held.workers or 0) * (held.gpus_per_worker or 0) if held and running else 0
    gpus = gpus if job.spec.uses_gpus() else 0
    values["gpus"] = float(gpus)
    return JobSample(
        namespace=job.metadata.namespace or "",
        job=job.metadata.name or "",
        model_type=job.spec.model_type.value,
        gpu_type=settings.catalogue.gpu_type_for(job.spec),
        phase=str(status.phase) if status.phase else "",
        values=values,
        throughput_unit=(figures.throughput_unit or "") if figures else "",
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


def _count_changes(old: TrainingJobStatus, new: TrainingJobStatus) -> None:
    """Feed the operator-wide counters with what this status write adds."""
    before = (old.resource_usage.gpu_hours or 0.0) if old.resource_usage else 0.0
    after = (new.resource_usage.gpu_hours or 0.0) if new.resource_usage else 0.0
    if after > before:
        metrics.GPU_HOURS.inc(after - before)
    if new.restarts > old.restarts:
        metrics.RESTARTS.inc(new.restarts - old.restarts)
    seen = old.progress.last_update_time if old.progress else None
    if new.progress is not None and new.progress.last_update_time != seen:
        metrics.REPORTS.labels("accepted").inc()
