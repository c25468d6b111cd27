"""One training run's contact with the outside: resume point, reports, checkpoints, stop, end.

Framework-neutral glue between a training loop and the runtime: the LoRA trainer drives it
from a transformers callback, a hand-written loop can call it directly. Only rank 0
fences the volume, reports, commits checkpoints and writes the metrics log; every rank sees
the stop flag. ``finish`` returns the run's ``Outcome``; on completion rank 0 writes its
termination message before it tries to deliver the final report, so the operator can tell
the run completed even when no report arrives.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kubetrain.api import TrainingJobSpec
from kubetrain.api.report import (
    MAX_CHECKPOINTS,
    TRAIN_LOG,
    ProgressReport,
    ReportedModel,
    TrainerState,
    tree_digest,
)
from kubetrain.api.termination import Termination, encode_termination
from kubetrain.trainer.checkpoints import CheckpointInfo, CheckpointStore
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.reporter import Channel, ChannelSink, NullSink, Reporter, Sink, sink_from_env
from kubetrain.trainer.runtime import EXIT_COMPLETED, Outcome, write_termination_message
from kubetrain.trainer.signals import StopFlag

if TYPE_CHECKING:
    from kubetrain.trainer.trackers import Trackers

log = logging.getLogger(__name__)

METRICS_LOG = TRAIN_LOG
FINAL_REPORT_TIMEOUT = 15.0


class TrainingSession:
    """The runtime side of one run of one process."""

    def __init__(
        self,
        env: RuntimeEnv,
        spec: TrainingJobSpec,
        *,
        sink: Sink | None = None,
        stop: StopFlag | None = None,
    ) -> None:
        self.env = env
        self.spec = spec
        self.is_main = env.distributed.is_main
        self.store = CheckpointStore(
            env.checkpoint_dir,
            spec.checkpoint.keep_last,
            attempt=env.attempt,
            job=env.job_uid or env.job_name,
        )
        self.stop = stop or StopFlag()
        interval = env.report_interval
        if sink is None:
            sink = (
                sink_from_env(
                    pod=env.pod_name,
                    namespace=env.pod_namespace,
                    annotation=env.annotation,
                    report_file=env.report_file,
                    channel=Channel.from_env(env),
                )
                if self.is_main
                else NullSink()
            )
            if isinstance(sink, ChannelSink):
                interval = env.channel_interval
        self.reporter = Reporter(sink, interval)
        self.checkpoints: list[CheckpointInfo] = []
        self.latest: CheckpointInfo | None = None
        """The last checkpoint on the timeline being trained: the one resumed from, then each
        one committed (never an abandoned timeline's, whatever its step)."""
        self.started = time.monotonic()
        self.total_epochs = spec.training.epochs
        self.total_steps = 0
        self.step = 0
        self.epoch = 0.0
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.learning_rate: float | None = None
        self.throughput: float | None = None
        self.gpu_memory_bytes: int | None = None
        self.metrics: dict[str, float] = {}
        self._log: IO[str] | None = None
        self.trackers: Trackers | None = None

    # -- start ------------------------------------------------------------------------------

    def begin(self) -> CheckpointInfo | None:
        """Install the stop signals, fence and tidy the volume, and pick the checkpoint to
        resume from. ``SupersededError`` when a newer attempt has started on the volume."""
        self.stop.install()
        self.env.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            fence = self.store.fence(self.env.pod_name or "")
            log.info("fenced %s for %s", self.env.checkpoint_dir, fence.describe())
            self.store.clear_staging()
            self._log = (self.env.checkpoint_dir / METRICS_LOG).open("a", buffering=1)
            if self.spec.training.report_to:
                from kubetrain.trainer.trackers import Trackers  # noqa: PLC0415 - if asked

                self.trackers = Trackers(
                    [str(t) for t in self.spec.training.report_to],
                    self.env.checkpoint_dir,
                    self.env.job_name,
                    self.env.pod_namespace or "",
                )
        self.checkpoints = self.store.complete()
        resume = self.store.resolve(self.env.resume_from)
        self.latest = resume
        if resume is not None:
            self.step, self.epoch, self.loss = resume.step, float(resume.epoch), resume.loss
            log.info("resuming from checkpoint %s (step %d)", resume.id, resume.step)
        self.publish("starting", message=f"resuming from {resume.id}" if resume else "starting")
        return resume

    # -- during training --------------------------------------------------------------------

    def update(
        self, *, state: TrainerState = "running", urgent: bool = False, **fields: Any
    ) -> None:
        """Record new progress (any of the session's public fields) and report it."""
        for name, value in fields.items():
            if not hasattr(self, name):
                raise AttributeError(name)
            setattr(self, name, value)
        self.publish(state, urgent=urgent)

    def log_record(self, record: dict[str, Any]) -> None:
        """Append one line of metrics (per step or evaluation) to the run's log on the volume."""
        if self._log is not None:
            self._log.write(json.dumps(record, separators=(",", ":")) + "\n")
        if self.trackers is not None:
            self.trackers.log(record)

    def commit_checkpoint(
        self, staged: Path, *, step: int, epoch: float, loss: float | None
    ) -> CheckpointInfo:
        """Seal a staged checkpoint (rank 0), drop the oldest beyond keep-last, and report it;
        ``SupersededError`` when a newer attempt has started on the volume."""
        info = self.store.commit(
            staged,
            step=step,
            epoch=current_epoch(epoch),
            loss=loss,
            resume_request=self.env.resume_from,
        )
        removed: set[str] = set(self.store.prune())
        self.checkpoints = [c for c in self.checkpoints if c.id not in removed and c.id != info.id]
        self.checkpoints.append(info)
        self.latest = info
        log.info(
            "checkpoint %s written (%d bytes)%s",
            info.id,
            info.size_bytes,
            f"; removed {', '.join(sorted(removed))}" if removed else "",
        )
        self.publish("running", urgent=True)
        return info

    def should_stop(self) -> bool:
        return self.stop.is_set()

    # -- end --------------------------------------------------------------------------------

    def finish(
        self, state: TrainerState, message: str, model: ReportedModel | None = None
    ) -> Outcome:
        """End the run: send the final report (retried for a while, never longer) and release
        the run's resources; returns the outcome to exit with. On completion rank 0 first
        publishes the model to spec.output, if the job has one, and writes the termination
        message that says so."""
        outcome = self._outcome(state, message)
        if self.is_main:
            if state == "completed" and model is not None and self.env.output_uri:
                model = self._upload(model)
            elif state == "completed" and model is not None and not model.digest:
                model = _sealed(model)
            if state == "completed":
                outcome = Outcome(EXIT_COMPLETED, self._termination(message, model))
                write_termination_message(outcome.message)  # first: the report may never arrive
            try:
                report: ProgressReport | None = self.build_report(
                    state, message=message, model=model
                )
            except ValueError as err:
                log.warning("the final progress report cannot be built: %s", err)
                report = None
            if not self.reporter.close(report, FINAL_REPORT_TIMEOUT):
                log.warning("the final progress report was not delivered")
        else:
            self.reporter.close(None, 0.1)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
        self.stop.restore()
        return outcome

    def _outcome(self, state: TrainerState, message: str) -> Outcome:
        if state == "completed":
            return Outcome.completed(message)
        if state == "failed":
            return Outcome.failed(message)
        return Outcome.stopped(message)

    def _termination(self, message: str, model: ReportedModel | None) -> str:
        """The completed run's termination message (``Termination``, one line of JSON)."""
        total = self.total_steps
        try:
            termination = Termination(
                message=message[:1024],
                step=min(self.step, total) if total else self.step,
                total_steps=total,
                epoch=min(current_epoch(self.epoch), self.total_epochs),
                total_epochs=self.total_epochs,
                model=model,
                latest_checkpoint=self.latest.id if self.latest else None,
            )
            return encode_termination(termination)
        except ValueError as err:  # an out-of-range figure: the words alone
            log.warning("the termination message cannot be built: %s", err)
            return message

    def _upload(self, model: ReportedModel) -> ReportedModel:
        """The model, published to spec.output.uri; a failure is reported, not raised (the
        model stays on the volume and the job still completes)."""
        from kubetrain.trainer.fetch.publish import upload  # noqa: PLC0415 - fsspec, if needed

        self.publish("running", message=f"uploading the model to {self.env.output_uri}")
        try:
            done = upload(Path(model.path), self.env.output_uri, self.env.output_credentials_dir)
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"[:1024]
            log.error("uploading the model to %s failed: %s", self.env.output_uri, reason)
            return model.model_copy(update={"upload_error": reason})
        return model.model_copy(
            update={"uri": done.uri, "size_bytes": done.size_bytes, "digest": done.digest}
        )

    # -- reports ----------------------------------------------------------------------------

    def publish(self, state: TrainerState, *, message: str = "", urgent: bool = False) -> None:
        """Queue a report of the current progress (rank 0); one that fails to build is dropped."""
        if not self.is_main:
            return
        try:
            report = self.build_report(state, message=message)
        except ValueError as err:  # pydantic's ValidationError: an out-of-range figure
            log.warning("dropping a progress report: %s", err)
            return
        self.reporter.submit(report, urgent=urgent)

    def build_report(
        self, state: TrainerState, *, message: str = "", model: ReportedModel | None = None
    ) -> ProgressReport:
        metrics = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        metrics["elapsedSeconds"] = round(time.monotonic() - self.started, 3)
        total = self.total_steps
        return ProgressReport(
            time=datetime.now(UTC),
            state=state,
            epoch=min(current_epoch(self.epoch), self.total_epochs),
            total_epochs=self.total_epochs,
            step=min(self.step, total) if total else self.step,
            total_steps=total,
            loss=_finite(self.loss),
            eval_loss=_finite(self.eval_loss),
            learning_rate=_finite(self.learning_rate),
            throughput=_finite(self.throughput),
            throughput_unit="tokens/s",
            gpu_memory_bytes=self.gpu_memory_bytes,
            metrics=dict(list(metrics.items())[:32]),
            checkpoints=[c.to_report() for c in self.checkpoints[-MAX_CHECKPOINTS:]],
            latest_checkpoint=self.latest.id if self.latest else None,
            model=model,
            message=message[:1024],
        )


def current_epoch(epoch: float) -> int:
    """The 1-based epoch a fractional position is in (1.0 is the end of epoch 1, 1.5 in epoch 2)."""
    return max(math.ceil(epoch - 1e-9), 0)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _sealed(model: ReportedModel) -> ReportedModel:
    """The model on the volume with its digest and size (``tree_digest``), so that a download
    off the volume (``kubectl train download``) can check what it got."""
    try:
        if not Path(model.path).is_dir():
            raise FileNotFoundError(model.path)
        digest, size, _ = tree_digest(Path(model.path))
    except OSError as err:
        log.warning("the model at %s could not be digested: %s", model.path, err)
        return model
    return model.model_copy(update={"digest": digest, "size_bytes": size})
