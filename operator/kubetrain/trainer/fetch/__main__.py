"""Entry point of the fetch stage: ``python -m kubetrain.trainer.fetch``.

Puts every source of the plan in ``KUBETRAIN_FETCH`` into the cache, reporting progress like a
trainer, and ends with a report that says where each source is. The downloads run on a daemon
thread so that SIGTERM is answered at once, even while a read or a wait for a lock blocks.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from kubetrain.api.fetch import ENV_PLAN, FetchPlan, FetchSource, SourceKind
from kubetrain.api.report import FetchedSource, ProgressReport, permanent_message
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.fetch import hub, objects
from kubetrain.trainer.fetch.progress import Progress
from kubetrain.trainer.fetch.source import Credentials, bad_uri
from kubetrain.trainer.reporter import Channel, ChannelSink, Reporter, sink_from_env
from kubetrain.trainer.runtime import (
    Outcome,
    TrainerError,
    configure_logging,
    exit_process,
    run_entry,
)
from kubetrain.trainer.signals import StopFlag

log = logging.getLogger("kubetrain.trainer.fetch")

POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 3.0
"""How long a stopped download may take to remove its partial directory before we exit."""
FINAL_REPORT_TIMEOUT = 15.0


def load_plan(environ: Mapping[str, str] = os.environ) -> FetchPlan:
    text = environ.get(ENV_PLAN)
    if not text:
        raise TrainerError(f"{ENV_PLAN} is not set (the fetch plan as JSON)")
    try:
        return FetchPlan.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "plan"
        raise TrainerError(f"invalid {ENV_PLAN} {where}: {first['msg']}") from None


def fetch_source(source: FetchSource, cache_dir: Path, progress: Progress) -> FetchedSource:
    scheme = source.uri.partition("://")[0] if "://" in source.uri else ""
    credentials = Credentials.of(source)
    if scheme in objects.SCHEMES:
        return objects.fetch(source, credentials, cache_dir, progress)
    if scheme == "hf" or (not scheme and source.kind is not SourceKind.DATASET):
        return hub.fetch(source, credentials, cache_dir, progress)
    if scheme == "random":
        raise bad_uri(source, "random:// models are made by the trainer, not fetched")
    raise bad_uri(source, "use s3://, gs://, https:// or hf:// (or a Hub model id, org/name)")


class _Fetcher(threading.Thread):
    def __init__(self, plan: FetchPlan, progress: Progress) -> None:
        super().__init__(name="kubetrain-fetch", daemon=True)
        self.plan, self.progress = plan, progress
        self.fetched: list[FetchedSource] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for source in self.plan.sources:
                done = fetch_source(source, Path(self.plan.cache_dir), self.progress)
                log.info(
                    "%s: %s at %s: %d file(s), %d bytes, revision %s",
                    done.name, "already cached" if done.reused else "fetched", done.path,
                    done.files, done.size_bytes, done.revision,
                )  # fmt: skip
                self.fetched.append(done)
        except BaseException as err:
            self.error = err


def _main() -> Outcome:
    env = RuntimeEnv.from_env()
    plan = load_plan()
    stop = StopFlag()
    stop.install()
    sink = sink_from_env(
        pod=env.pod_name,
        namespace=env.pod_namespace,
        annotation=env.annotation,
        report_file=env.report_file,
        channel=Channel.from_env(env),
    )
    interval = env.channel_interval if isinstance(sink, ChannelSink) else env.report_interval
    reporter = Reporter(sink, interval)
    progress = Progress(stop)
    fetcher = _Fetcher(plan, progress)
    fetcher.start()
    while fetcher.is_alive() and not stop.wait(POLL_SECONDS):
        reporter.submit(progress.report())
    fetcher.join(STOP_GRACE_SECONDS if stop.is_set() else None)
    error = fetcher.error
    if error is None and not fetcher.is_alive():
        reused = sum(f.reused for f in fetcher.fetched)
        message = f"fetched {len(fetcher.fetched)} sources ({reused} already in the cache)"
        _close(reporter, progress.report("completed", message, fetcher.fetched))
        return Outcome.completed(message)
    if error is None or stop.is_set():  # None: still blocked (a read, a lock) after the grace
        message = (
            f"stopped by {stop.reason} during the fetch; the cache keeps complete entries only"
        )
        _close(reporter, progress.report("stopping", message))
        return Outcome.stopped(message)
    if isinstance(error, TrainerError):
        _close(reporter, progress.report("failed", permanent_message(error.reason, str(error))))
    else:
        _close(reporter, progress.report("failed", f"{type(error).__name__}: {error}"))
    raise error


def _close(reporter: Reporter, final: ProgressReport) -> None:
    if not reporter.close(final, FINAL_REPORT_TIMEOUT):
        log.warning("the final progress report was not delivered")


def main() -> int:
    configure_logging()
    return run_entry(_main)


if __name__ == "__main__":
    # Exit at once: the interpreter would wait for library threads still downloading
    # (huggingface_hub's pool) past the kubelet's grace period, or abort on a thread blocked
    # on the network.
    exit_process(main())
