"""Progress reports from rank 0 to the operator's report channel or the Pod's annotation,
off the training thread.

Training calls ``submit`` (never blocks: a newer report replaces one not yet sent), a
background thread sends at most one report per interval, and a slow or failing API only
delays or drops intermediate reports. ``close`` delivers the final report, retrying it until
a deadline. Outside a cluster the same reports go to a JSON file or to the log.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kubetrain.api.report import ANNOTATION, ProgressReport, ReportError, encode

if TYPE_CHECKING:
    from kubetrain.trainer.config import RuntimeEnv

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
REQUEST_TIMEOUT = (5.0, 15.0)  # connect, read (seconds) for one annotation patch
CLOSE_JOIN_TIMEOUT = 1.0
"""After ``close``: how long the sending thread gets to end before it is left behind."""


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


class ChannelError(RuntimeError):
    """The report channel did not take the report (its HTTP status, or no answer)."""

    def __init__(self, message: str, status: int | None = None, retry_after: float = 0.0):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after

    @property
    def refused(self) -> bool:
        """The channel is up and refused this report for its own sake (400 malformed, 413
        too large) or its pace (429): the annotation would be no better, and a write to
        etcd to get round a rate limit is the write the channel exists to spare."""
        return self.status in (400, 413, 429)


@dataclass(frozen=True)
class Channel:
    """The operator's report channel, as the operator configured the Pod."""

    url: str
    ca_pem: str
    token_file: Path
    fallback_interval: float

    @classmethod
    def from_env(cls, env: RuntimeEnv) -> Channel | None:
        if not env.report_url or env.report_token_file is None:
            return None
        return cls(env.report_url, env.report_ca, env.report_token_file, env.report_interval)


class PushSink:
    """POSTs each report to the operator over HTTPS, with the Pod's bound report token.

    The token file is read for every report: the kubelet rotates it in place.
    """

    def __init__(self, channel: Channel) -> None:
        import urllib3  # noqa: PLC0415 - only in a Pod

        self.channel = channel
        context = ssl.create_default_context(cadata=channel.ca_pem or None)
        self._pool = urllib3.PoolManager(ssl_context=context, retries=False, maxsize=1)
        self._timeout = urllib3.Timeout(connect=REQUEST_TIMEOUT[0], read=REQUEST_TIMEOUT[1])

    def send(self, text: str) -> None:
        token = self.channel.token_file.read_text().strip()
        try:
            answer = self._pool.request(
                "POST",
                self.channel.url,
                body=text.encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except Exception as err:
            raise ChannelError(f"no answer from {self.channel.url}: {err}") from None
        if answer.status >= 300:
            detail = answer.data[:200].decode(errors="replace")
            try:
                wait = float(answer.headers.get("Retry-After") or 0.0)
            except ValueError:
                wait = 0.0
            raise ChannelError(
                f"{self.channel.url} answered {answer.status} {detail}".rstrip(),
                answer.status,
                retry_after=wait,
            )


_DURABLE_STATES = frozenset({"completed", "failed", "stopping"})


def _durable(text: str) -> bool:
    """A last word (done, failed, stopped): it must outlive an operator restart."""
    try:
        return json.loads(text).get("state") in _DURABLE_STATES
    except (ValueError, AttributeError):
        return False


class ChannelSink:
    """The report channel first; the Pod's annotation when the channel is down.

    A report that ends the trainer's run (completed, failed, stopping) goes to the
    annotation as well, so it outlives an operator restart. On the fallback, reports keep to
    the annotation interval; the channel is tried again after ``retry_after`` seconds. A
    channel that answers but refuses a report (malformed, too large, too fast) is up: the
    report does not go round it to the annotation.
    """

    def __init__(
        self,
        push: Sink,
        annotation: Sink,
        fallback_interval: float,
        *,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.push, self.annotation = push, annotation
        self.fallback_interval, self.retry_after, self._clock = (
            fallback_interval,
            retry_after,
            clock,
        )
        self._down_until = 0.0
        self._paced_until = 0.0  # a 429's Retry-After: the channel is up, only pacing us
        self._last_annotation = -float("inf")
        self.pushed = self.annotated = self.skipped = self.refused = 0

    def send(self, text: str) -> None:
        durable = _durable(text)
        now = self._clock()
        if now >= self._down_until:
            try:
                self.push.send(text)
            except ChannelError as err:
                if err.refused:
                    self._refused(text, err, now, durable=durable)
                    return
                self._down(err, now)
            except Exception as err:
                self._down(err, now)
            else:
                self.pushed += 1
                if durable:
                    self._annotate(text, now)
                return
        paced = now < self._paced_until  # rate-limited, not down: no annotation either
        if durable or (not paced and now - self._last_annotation >= self.fallback_interval):
            self._annotate(text, now)
        else:
            self.skipped += 1  # a newer report follows within the annotation interval

    def _down(self, err: Exception, now: float) -> None:
        log.warning(
            "report channel unavailable (%s); using the Pod annotation for %.0fs",
            err, self.retry_after,
        )  # fmt: skip
        self._down_until = now + self.retry_after

    def _refused(self, text: str, err: ChannelError, now: float, *, durable: bool) -> None:
        """A report the channel refused (it is up): not patched onto the Pod instead. A
        rate-limited one waits out Retry-After (a newer report follows); a malformed one is
        dropped (the operator posted a Warning with the reason). A last word still goes to
        the annotation, where it must be for an operator that restarts."""
        self.refused += 1
        if err.status == 429:
            self._down_until = now + max(err.retry_after, 1.0)
            self._paced_until = self._down_until
        else:
            log.warning("the report channel refused a report: %s", err)
        if durable:
            self._annotate(text, now)

    def _annotate(self, text: str, now: float) -> None:
        self.annotation.send(text)
        self._last_annotation = now
        self.annotated += 1


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
        self._thread.join(CLOSE_JOIN_TIMEOUT)  # gone at once unless a send hangs
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
            if not self._abandoned and (self.failed == 1 or self.failed % 20 == 0):
                # (after close the process may be ending: a thread writes nothing then)
                log.warning("progress report not delivered (%d so far): %s", self.failed, err)
            return False
        self.sent += 1
        return True


def sink_from_env(
    *,
    pod: str | None,
    namespace: str | None,
    annotation: str,
    report_file: Path | None,
    channel: Channel | None = None,
) -> Sink:
    """In a cluster the report channel (when the operator serves one) with the Pod
    annotation behind it, else a report file if asked for, else the log. Without the
    Pod's API credentials the channel goes alone."""
    if report_file is not None:
        return FileSink(report_file)
    if not (pod and namespace):
        return LogSink()
    try:
        push = PushSink(channel) if channel is not None else None
    except Exception as err:
        log.warning("cannot use the report channel %s: %s", channel.url if channel else "", err)
        push = None
    try:
        pod_sink = PodAnnotationSink.in_cluster(namespace, pod, annotation)
    except Exception as err:
        instead = "the report channel only" if push is not None else "logging reports instead"
        log.warning("cannot report to Pod %s/%s, %s: %s", namespace, pod, instead, err)
        return push or LogSink()
    if push is None or channel is None:
        return pod_sink
    return ChannelSink(push, pod_sink, channel.fallback_interval)
