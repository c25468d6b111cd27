"""Leader election on a coordination.k8s.io Lease: among operator replicas, one acts.

Every replica watches and caches; only the holder of the Lease reconciles. Time is never
compared across machines: a standby takes the Lease only after it has seen the Lease
record unchanged for the whole lease duration on its own monotonic clock (as client-go
does), and a leader stops acting once it has not renewed for the renew deadline, which
is shorter than the lease duration. A leader that was paused (SIGSTOP, a long GC, a
frozen VM) therefore finds its leadership expired the moment it runs again, before it
can act; writes stay guarded by resourceVersion preconditions besides.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

log = logging.getLogger(__name__)

RELEASE_TIMEOUT = (1.0, 2.0)
"""Seconds to connect and to answer for the release on shutdown: it must fit the grace."""

UNEXPECTED_LIMIT = 5
"""Rounds in a row that may fail with an error of the operator's own (not the API server's)
before the elector gives up: retried with a doubling backoff up to the lease duration, then
the thread ends, the replica stops acting and its liveness probe fails."""


def _now() -> datetime:
    return datetime.now(UTC)


class Leadership:
    """Whether this replica may act now: held, and renewed within the renew deadline.

    Reads like a ``threading.Event`` (``is_set``, ``wait``) so workers can block on it.
    """

    def __init__(self, renew_deadline: float, clock: Callable[[], float]) -> None:
        self.renew_deadline, self._clock = renew_deadline, clock
        self._changed = threading.Condition()
        self._held = False
        self._renewed_at = float("-inf")

    def renewed(self) -> None:
        with self._changed:
            self._renewed_at = self._clock()
            self._held = True
            self._changed.notify_all()

    def lost(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    def held(self) -> bool:
        """The Lease is ours as far as the last renewal knows (stale or not)."""
        return self._held

    def is_set(self) -> bool:
        return self._held and self._clock() - self._renewed_at < self.renew_deadline

    def wait(self, timeout: float) -> bool:
        """Block until this replica may act, for at most ``timeout`` seconds; whether it may.

        Held but stale is not current: only a renewal makes it so, and a renewal wakes the
        waiters, so a stale Lease blocks the workers instead of letting them spin."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True


class LeaderElector:
    """Acquires and renews one Lease from a background thread."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = 15,
        on_elected: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        # client-go's proportions (15 s lease, 10 s renew deadline, 2 s retry period).
        self.renew_deadline = lease_seconds * 2 / 3
        self.retry_period = max(lease_seconds / 7.5, 0.2)
        # A renewal that hangs must give up before the renew deadline runs out under it.
        self._timeout = (min(5.0, self.renew_deadline / 2), max(self.renew_deadline / 2, 1.0))
        self.on_elected, self.on_lost = on_elected, on_lost
        self._clock = clock
        self.leading = Leadership(self.renew_deadline, clock)
        self._observed: tuple[Any, ...] | None = None  # the Lease record last seen
        self._observed_at = 0.0  # when it last changed, on our clock
        self._written: tuple[str, dict[str, Any]] | None = None  # our last write: version, spec
        self._lock = threading.Lock()  # a renewal and the release never interleave
        self._stop = threading.Event()
        self.error: BaseException | None = None  # what ended the thread, when it ended itself
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Release the Lease (when held) and end the thread, within about ``timeout`` plus
        one release request (at most RELEASE_TIMEOUT)."""
        self.release()
        self._thread.join(timeout)

    def release(self) -> None:
        """Stop acting and renewing, and give the Lease up at once so that a standby takes
        it on its next look instead of waiting out the lease (a clean shutdown's first step)."""
        self._stop.set()
        self.leading.lost()  # workers stop taking jobs before the Lease is anyone else's
        with self._lock:  # waits for a renewal under way (bounded by its request timeout)
            if self._written is not None:
                self._release()
                self._written = None

    def alive(self) -> bool:
        """Not ended by itself (not started yet, electing, or stopped on purpose): False
        once the thread has ended on its own, which fails the liveness probe so that the
        container is restarted."""
        started = self._thread.ident is not None
        return self._stop.is_set() or self._thread.is_alive() or not started

    def _run(self) -> None:
        unexpected = 0  # rounds in a row that failed with an error of our own
        try:
            while not self._stop.is_set():
                wait = self.retry_period
                try:
                    self._round()
                    unexpected = 0
                except Exception as err:
                    unexpected += 1
                    if unexpected >= UNEXPECTED_LIMIT:
                        self.error = err
                        log.exception("leader election failed %d times in a row: it ends, and "
                                      "the liveness probe fails", unexpected)  # fmt: skip
                        return
                    wait = min(self.retry_period * 2**unexpected, float(self.lease_seconds))
                    log.exception("leader election failed unexpectedly (%d in a row); trying "
                                  "again in %.1fs", unexpected, wait)  # fmt: skip
                    self._lapse()
                self._stop.wait(wait)
        finally:
            if not self._stop.is_set():  # ended by itself: act no more, hand the Lease over
                self._abandon()

    def _round(self) -> None:
        """One look at the Lease: take or renew it, or stand by."""
        with self._lock:
            if self._stop.is_set():
                return
            try:
                held = self._try()
            except ApiException as err:
                log.warning("leader election: %s %s", err.status, err.reason)
                held = False
            except (HTTPError, OSError) as err:
                log.warning("leader election: no answer from the API server: %s", err)
                held = False
            elected = held and not self.leading.held()
            if held:
                self.leading.renewed()
        if not held:
            self._lapse()
        elif elected:
            log.info("became the leader (%s/%s) as %s", self.namespace, self.name, self.identity)
            try:
                self.on_elected()
            except Exception:
                self.leading.lost()  # elected again at the next renewal, which retries it
                raise

    def _lapse(self) -> None:
        """One failed renewal is not the end: only the renew deadline is."""
        if self.leading.held() and not self.leading.is_set():
            log.warning("lost the lease %s/%s: standing by", self.namespace, self.name)
            self.leading.lost()
            try:
                self.on_lost()
            except Exception:  # standing by is done; what on_lost does is best effort
                log.exception("after losing the lease %s/%s", self.namespace, self.name)

    def _abandon(self) -> None:
        """The thread ends by itself: stop acting and release the Lease, best effort."""
        was_leading = self.leading.held()
        self.leading.lost()
        try:
            with self._lock:
                if self._written is not None:
                    self._release()
                    self._written = None
            if was_leading:
                self.on_lost()
        except Exception:
            log.exception("could not stand down cleanly")

    def _try(self) -> bool:
        """Create, renew or take over the Lease; True when we hold it now."""
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": _now().isoformat(timespec="microseconds"),
        }
        try:
            lease: Any = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        except ApiException as err:
            if err.status != 404:
                raise
            new: Any = {
                "metadata": {"name": self.name},
                "spec": {**spec, "acquireTime": spec["renewTime"]},
            }
            try:
                created: Any = self.api.create_namespaced_lease(
                    self.namespace, new, _request_timeout=self._timeout
                )
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            self._written = (created.metadata.resource_version, new["spec"])
            return True
        holder = lease.spec.holder_identity
        record = (holder, lease.spec.renew_time, lease.metadata.resource_version)
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = lease.spec.lease_duration_seconds or self.lease_seconds
        if holder not in (self.identity, None, "") and now - self._observed_at < duration:
            return False  # someone else's, renewed within a lease duration as we saw it
        if holder != self.identity:
            spec["acquireTime"] = spec["renewTime"]
        version = lease.metadata.resource_version  # the update fails if anyone got there first
        body: Any = {"metadata": {"name": self.name, "resourceVersion": version}, "spec": spec}
        try:
            written: Any = self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self._timeout
            )
        except ApiException as err:
            if err.status == 409:  # another replica renewed or took it first
                return False
            raise
        self._written = (written.metadata.resource_version, spec)
        if holder in (None, ""):
            log.info("took the lease %s/%s: it was free (released)", self.namespace, self.name)
        elif holder != self.identity:
            log.info("took over the lease %s/%s: %s's lease expired unrenewed",
                     self.namespace, self.name, holder)  # fmt: skip
        return True

    def _release(self) -> None:
        """Clear the holder, guarded by the version of our last renewal: a Lease that changed
        since is not ours to release (409). One request, bounded by RELEASE_TIMEOUT."""
        assert self._written is not None
        version, spec = self._written
        released = {**spec, "holderIdentity": None, "leaseDurationSeconds": 1,
                    "renewTime": _now().isoformat(timespec="microseconds")}  # fmt: skip
        body: Any = {"metadata": {"name": self.name, "resourceVersion": version}, "spec": released}
        try:
            self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=RELEASE_TIMEOUT
            )
            log.info("released the lease %s/%s", self.namespace, self.name)
        except ApiException as err:
            log.warning("could not release the lease: %s %s", err.status, err.reason)
        except (HTTPError, OSError) as err:
            log.warning("could not release the lease: %s", err)
