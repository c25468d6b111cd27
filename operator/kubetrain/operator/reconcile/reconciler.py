"""Carries out plans: gathers a pass's facts, asks the plan, writes the status it built
(``writer``), brings the children to it (``children``) and posts its Events.

One pass of one job at a time (a lock per job); any number of jobs in parallel. A pass ends
in the seconds until the job wants another look. Errors end: a refusal the API server gives
for the request's own sake fails the job at its next pass; a passing one is retried at most
``transientErrorLimit`` times in a row; an unexpected exception backs off per job.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from kubetrain.api.job import TrainingJob
from kubetrain.api.status import Phase, TrainingJobStatus
from kubetrain.operator import metrics
from kubetrain.operator.kube import Cluster, GoneError, NotLeadingError, StaleError
from kubetrain.operator.placement import placement_for
from kubetrain.operator.reconcile.cache import Cache, Key
from kubetrain.operator.reconcile.children import Children, controller_uid
from kubetrain.operator.reconcile.decision import CreationRefused, Plan
from kubetrain.operator.reconcile.facts import Facts
from kubetrain.operator.reconcile.plan import invalid, plan
from kubetrain.operator.reconcile.refusals import Refusal, RefusedError, api_message
from kubetrain.operator.reconcile.samples import job_sample
from kubetrain.operator.reconcile.writer import StatusWriter
from kubetrain.operator.reports import Inbox, annotation_written_at, newer_pushed
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import PodView, observe_pod

log = logging.getLogger(__name__)
JSON = dict[str, Any]

_ACTIVE = (Phase.PENDING, Phase.INITIALIZING, Phase.QUEUED, Phase.RUNNING, Phase.STOPPING)
"""Phases in which a job's children must be in their desired state."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


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
        self.writer = StatusWriter(cluster, cache, settings)
        self.children = Children(cluster, cache, settings)
        self.facts = Facts(cluster, cache, settings)
        self._bad_reports: dict[Key, dict[str, str]] = {}  # job -> Pod uid -> report digest
        self._errors: dict[Key, int] = {}  # failed reconciles in a row (backoff)
        self._create_failures: dict[Key, int] = {}  # refused Pod creations in a row
        self._creation: dict[Key, CreationRefused] = {}  # the last refused creation
        self._answered: dict[Key, int] = {}  # transient refusals in a row
        self._refusals: dict[Key, Refusal] = {}  # a refusal the next plan fails the job with
        self._locks: dict[Key, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, key: Key) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self, key: Key) -> None:
        """Drop per-job memory once the job is gone."""
        with self._guard:
            self._locks.pop(key, None)
        self.writer.forget(key)
        self.facts.forget(key)
        self._create_failures.pop(key, None)
        self._creation.pop(key, None)
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

    def progress_due_in(self, key: Key) -> float:
        """Seconds until a progress-only status write of the job is allowed again."""
        return self.writer.due_in(key)

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
                again = self._reconcile(key, body)
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
        self._creation.pop(key, None)
        log.warning("%s/%s failed: %s", *key, message)
        self._refusals[key] = Refusal(err.reason, message, generation)
        return 0.0

    def _creation_refused(self, key: Key, message: str, generation: int | None) -> float:
        """A Pod that cannot be created yet: the next pass's plan says why in
        ``PodCreationFailed`` and holds the creation until its retry (5 s doubling to
        5 min), ``transientErrorLimit`` times in a row; then the job fails."""
        failures = self._create_failures[key] = self._create_failures.get(key, 0) + 1
        if failures >= self.settings.transient_error_limit:
            self._create_failures.pop(key, None)
            self._creation.pop(key, None)
            self._refusals[key] = Refusal(
                "FailedCreatePod", f"{message} (refused {failures} times in a row)", generation
            )
            return 0.0
        retry = min(300.0, 5.0 * (1 << min(failures - 1, 6)))
        log.warning("%s/%s: %s; retrying in %.0fs", *key, message, retry)
        self._creation[key] = CreationRefused(message, self.clock() + timedelta(seconds=retry))
        return 0.0  # the next pass records it (and waits for the retry)

    def _created(self, key: Key) -> None:
        self._create_failures.pop(key, None)
        self._creation.pop(key, None)

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

    def _reconcile(self, key: Key, body: JSON) -> float | None:
        now = self.clock()
        try:
            job = TrainingJob.model_validate(body)
        except ValidationError as err:
            return self._invalid(key, body, validation_message(err), now)
        # Level-based: right after an operator restart too, not only once a status is written.
        metrics.observe_phase(key, str(job.status.phase or ""))
        # Children are this job's by controller owner: a Pod left by an earlier job of the
        # same name (being garbage-collected) is never counted or adopted.
        pods = [
            self._with_pushed(observe_pod(p), p)
            for p in self.cache.pods(key)
            if controller_uid(p) == job.metadata.uid
        ]
        placement = placement_for(job.spec, self.settings)  # once a pass
        lookups = replace(
            self.facts.lookups(key, job, placement),
            refusal=self._refusals.pop(key, None),
            creation_refused=self._creation.get(key),
        )
        decided = plan(job, pods, now=now, settings=self.settings, lookups=lookups)
        gpu_type = (
            placement.gpu_type if placement else self.settings.catalogue.gpu_type_for(job.spec)
        )
        metrics.JOB_SERIES.observe(key, job_sample(job, decided.status, gpu_type))
        if decided.status.phase not in _ACTIVE:
            self._created(key)  # nothing more to create for this run
        # Actions follow a recorded status (the attempt number above all), so a status
        # that comes with actions is written at once, throttle or not.
        acts = bool(decided.create or decided.delete or decided.events)
        wait = self.writer.write(key, body, job.status, decided.status, force=acts)
        # Events tell of the transition the status now records. They go out after the
        # child changes, which wait for nothing else (creation latency), and whatever those
        # changes do: a failed Pod creation retries, but loses no Event.
        try:
            again = self._act(key, job, decided, lookups.desired_workload)
            if again is not None:
                return again
        finally:
            if self.cluster.may_write():  # a replica that no longer leads posts nothing
                for event in decided.events:
                    self.cluster.post_event(body, event.type, event.reason, event.message)
        self._report_problems(key, body, decided)
        if decided.delete_job:
            self.cluster.delete_job(*key)
            return None
        return self._next_look(decided, wait, running=any(p.phase == "Running" for p in pods))

    def _act(
        self, key: Key, job: TrainingJob, decided: Plan, desired_workload: JSON | None
    ) -> float | None:
        """The plan's child changes; the seconds until the next look when one must wait."""
        for name in dict.fromkeys(decided.delete):
            self.cluster.delete_pod(key[0], name)
        if decided.workload is not None:
            retry = self.children.workload(key, decided.workload, desired_workload, self.clock())
            if retry is not None:
                return retry
        placement, generation = decided.placement, job.metadata.generation
        if placement is None:
            return None
        if decided.create or decided.fetch is not None or decided.status.phase in _ACTIVE:
            taken = self.children.apply(key, job)
            if taken is not None:
                return self._creation_refused(key, taken, generation)
        if decided.fetch is not None:
            taken = self.children.create_fetcher(key, job, decided)
            if taken is not None:
                return self._creation_refused(key, taken, generation)
            self._created(key)
        if decided.create:
            admitted = self.facts.admitted_placement(placement, decided.status)
            taken = self.children.create_workers(key, job, decided, admitted)
            if taken is not None:
                return self._creation_refused(key, taken, generation)
            self._created(key)
        return None

    def _with_pushed(self, pod: PodView, body: JSON) -> PodView:
        """The Pod with the newer of its pushed and its annotated report, by when the
        operator received the push and the API server the annotation (never by the
        trainer's clock). A pushed report comes decoded from the channel's door."""
        pushed, received_at = self.inbox.get(pod.uid), self.inbox.received_at(pod.uid)
        if pushed is None or received_at is None or pushed == pod.report:
            return pod
        if pod.report and not newer_pushed(received_at, annotation_written_at(body)):
            return pod  # e.g. written by the fallback while this replica was away
        return replace(pod, report=pushed, decoded=pushed.report, problem=None)

    def _next_look(self, decided: Plan, wait: float | None, *, running: bool) -> float | None:
        if wait is not None:
            return wait
        if decided.requeue_after is not None:
            return decided.requeue_after
        if decided.status.phase in _ACTIVE:
            return self.settings.resync_seconds
        if running:  # e.g. workers still checkpointing after a failure: usage still accrues
            return self.settings.resync_seconds
        return None

    def _invalid(self, key: Key, body: JSON, message: str, now: datetime) -> float | None:
        """A body the models reject (e.g. stored before a CRD upgrade): Failed, not retried;
        its plan is made and written like any other."""
        try:
            status = TrainingJobStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = TrainingJobStatus()
        decided = invalid(status, body["metadata"].get("generation"), message, now)
        if not decided.events:
            return None  # failed for it already
        self.writer.write(key, body, status, decided.status, force=True)
        for event in decided.events:
            self.cluster.post_event(body, event.type, event.reason, event.message)
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
