"""Leader election on a coordination.k8s.io Lease: among operator replicas, one acts.

Every replica watches and caches; only the holder of the Lease reconciles. A holder that
stops renewing loses the Lease after ``lease_seconds``, and a standby takes over with a
warm cache. Writes stay guarded by resourceVersion preconditions, so even a replica that
has not yet noticed it lost the Lease cannot overwrite newer state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


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
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        # A renewal that hangs must give up before the Lease could expire under it.
        self._timeout = (5.0, max(lease_seconds / 3, 1.0))
        self.on_elected = on_elected
        self.leading = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.leading.is_set():
            self._release()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                held = self._try()
            except ApiException as err:
                log.warning("leader election: %s %s", err.status, err.reason)
                held = False
            except (HTTPError, OSError) as err:
                log.warning("leader election: no answer from the API server: %s", err)
                held = False
            if held and not self.leading.is_set():
                log.info("became the leader (%s/%s)", self.namespace, self.name)
                self.leading.set()
                self.on_elected()
            elif not held and self.leading.is_set():
                log.warning("lost the lease %s/%s: standing by", self.namespace, self.name)
                self.leading.clear()
            self._stop.wait(self.lease_seconds / 3)

    def _try(self) -> bool:
        """Create, renew or take over the Lease; True while we hold it."""
        now = _now()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": now.isoformat(timespec="microseconds"),
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
                self.api.create_namespaced_lease(
                    self.namespace, new, _request_timeout=self._timeout
                )
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True
        holder = lease.spec.holder_identity
        renewed = lease.spec.renew_time or lease.spec.acquire_time
        duration = lease.spec.lease_duration_seconds or self.lease_seconds
        expired = renewed is None or renewed + timedelta(seconds=duration) < now
        if holder not in (self.identity, None, "") and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = spec["renewTime"]
        version = lease.metadata.resource_version  # the update fails if anyone got there first
        body: Any = {"metadata": {"name": self.name, "resourceVersion": version}, "spec": spec}
        try:
            self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self._timeout
            )
        except ApiException as err:
            if err.status == 409:  # another replica renewed or took it first
                return False
            raise
        return True

    def _release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby need not wait for expiry."""
        try:
            lease: Any = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                self.api.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=self._timeout
                )
        except ApiException as err:
            log.warning("could not release the lease: %s", err.reason)
        except (HTTPError, OSError) as err:
            log.warning("could not release the lease: %s", err)
