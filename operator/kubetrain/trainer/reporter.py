"""Progress reports from rank 0 to the Pod's annotation, off the training thread.

Training calls ``submit`` (never blocks: a newer report replaces one not yet sent), a
background thread sends at most one report per interval, and a slow or failing API only
delays or drops intermediate reports. ``close`` delivers the final report, retrying it until
a deadline. Outside a cluster the same reports go to a JSON file or to the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kubetrain.api.report import ANNOTATION, ProgressReport, ReportError, encode

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read (seconds) for one annotation patch


class Sink(Protocol):
    """Where encoded reports go; ``send`` may be slow or raise, the reporter copes."""

    def send(self, text: str) -> None: ...


class FileSink:
    """Writes each report to a JSON file, atomically (for local runs and tests)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


class LogSink:
    """Logs each report (when there is neither a Pod nor a report file)."""

    def send(self, text: str) -> None:
        log.info("progress %s", text)


class NullSink:
    """Drops reports (ranks other than 0)."""

    def send(self, text: str) -> None:
        return None


class PodAnnotationSink:
    """Patches the report into an annotation of the trainer's own Pod."""

    def __init__(self, core: Any, namespace: str, pod: str, annotation: str = ANNOTATION) -> None:
        self.core, self.namespace, self.pod, self.annotation = core, namespace, pod, annotation

    def send(self, text: str) -> None:
        self.core.patch_namespaced_pod(
            self.pod,
            self.namespace,
            {"metadata": {"annotations": {self.annotation: text}}},
            _content_type="application/merge-patch+json",
            _request_timeout=REQUEST_TIMEOUT,
        )

    @classmethod
    def in_cluster(cls, namespace: str, pod: str, annotation: str) -> PodAnnotationSink:
        """Use the Pod's service-account credentials (admitted for its own annotations only)."""
        from kubernetes import client, config  # noqa: PLC0415 - only in a Pod

        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.retries = 0  # the reporter retries itself, without holding a report
        return cls(client.CoreV1Api(client.ApiClient(configuration)), namespace, pod, annotation)


class Reporter:
    """Sends the latest submitted report at most once per ``interval``, from a daemon thread."""

    def __init__(
        self,
        sink: Sink,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff: float = 0.5,
        name: str = "kubetrain-reporter",
    ) -> None:
        self.sink = sink
        self.interval = interval
        self.backoff = backoff
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._urgent = False
        self._closing = False
        self._abandoned = False
        self._done = threading.Event()
        self._next_send = 0.0
        self._failures = 0
        self.sent = 0
        self.coalesced = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, report: ProgressReport, *, urgent: bool = False) -> None:
        """Queue ``report`` (replacing any unsent one); ``urgent`` skips the rate limit."""
        try:
            text = encode(report)
        except (ReportError, ValueError) as err:
            log.warning("dropping a progress report that cannot be encoded: %s", err)
            return
        with self._cond:
            if self._closing:
                return
            if self._pending is not None:
                self.coalesced += 1
            self._pending = text
            self._urgent = self._urgent or urgent
            self._cond.notify()

    def close(self, final: ProgressReport | None = None, timeout: float = 10.0) -> bool:
        """Deliver ``final`` (retrying until ``timeout``) and stop; True when it was delivered."""
        text: str | None = None
        if final is not None:
            try:
                text = encode(final)
            except (ReportError, ValueError) as err:
                log.warning("the final progress report cannot be encoded: %s", err)
        with self._cond:
            self._closing = True
            if text is not None:
                self._pending = text
            self._urgent = True
            self._cond.notify()
        delivered = self._done.wait(timeout)
        with self._cond:
            self._abandoned = True  # a send still hanging is left to die with the process
            self._cond.notify()
        return delivered

    def _next(self) -> str | None:
        """Wait for a report that is due; None when the reporter is finished."""
        with self._cond:
            while not self._abandoned:
                if self._pending is None:
                    if self._closing:
                        self._done.set()
                        return None
                    self._cond.wait()
                    continue
                now = self._clock()
                due = now if self._urgent else self._next_send
                if now >= due:
                    text, self._pending, self._urgent = self._pending, None, False
                    return text
                self._cond.wait(due - now)
            return None

    def _run(self) -> None:
        while (text := self._next()) is not None:
            ok = self._send(text)
            with self._cond:
                if ok:
                    self._failures = 0
                    self._next_send = self._clock() + self.interval
                    continue
                self._failures += 1
                base = max(self.interval, self.backoff)
                backoff = min(base * 2 ** (self._failures - 1), MAX_BACKOFF)
                self._next_send = self._clock() + (min(backoff, 2.0) if self._closing else backoff)
                if self._pending is None:
                    self._pending = text  # retry it, unless something newer came meanwhile

    def _send(self, text: str) -> bool:
        try:
            self.sink.send(text)
        except Exception as err:
            self.failed += 1
            if self.failed == 1 or self.failed % 20 == 0:
                log.warning("progress report not delivered (%d so far): %s", self.failed, err)
            return False
        self.sent += 1
        return True


def sink_from_env(
    *, pod: str | None, namespace: str | None, annotation: str, report_file: Path | None
) -> Sink:
    """The Pod annotation in a cluster, else a report file if asked for, else the log."""
    if report_file is not None:
        return FileSink(report_file)
    if pod and namespace:
        try:
            return PodAnnotationSink.in_cluster(namespace, pod, annotation)
        except Exception as err:
            log.warning(
                "cannot report to Pod %s/%s, logging reports instead: %s", namespace, pod, err
            )
    return LogSink()
