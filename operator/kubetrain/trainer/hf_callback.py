"""The runtime hooked into a transformers ``Trainer``: reports, checkpoints, stop, early stop.

The Trainer writes its usual checkpoint (adapter or model, optimizer, scheduler, RNG state
per rank, trainer state with the data position) into the session's staging directory; on
``on_save`` rank 0 seals and moves it into place. A stop request is agreed by all ranks at
a step boundary and turned into "save now, then stop"; at the last step of an epoch it
waits for the epoch's evaluation, so a resumed run sees exactly what an uninterrupted
one would.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from kubetrain.trainer.early_stop import epoch_values, should_stop_early
from kubetrain.trainer.metrics import ModelShape, ThroughputMeter, mfu
from kubetrain.trainer.session import TrainingSession, current_epoch
from kubetrain.trainer.signals import any_rank

log = logging.getLogger(__name__)

PAUSE_LIMIT = 60.0
LOG_EVERY = 10.0  # seconds between progress lines in the container log


class RuntimeCallback(TrainerCallback):
    """Connects one ``Trainer`` run to a ``TrainingSession``."""

    def __init__(
        self,
        session: TrainingSession,
        *,
        shape: ModelShape | None = None,
        context: float = 0.0,
        peak_flops: float | None = None,
        samples_per_step: int = 0,
    ) -> None:
        self.session = session
        self.shape, self.context, self.peak = shape, context, peak_flops
        self.samples_per_step = samples_per_step
        self.meter = ThroughputMeter()
        self.stopping = False  # stop agreed; the checkpoint is written at this step or epoch end
        self.stopped_mid_epoch = False
        self.early_stopped = False
        self._step_started = 0.0
        self._tokens_before = 0
        self._paused = False
        self._last_logged = 0.0
        spec = session.spec
        self.interval_steps = spec.checkpoint.interval_steps
        self.interval_epochs = spec.checkpoint.interval_epochs
        self.early_stopping = spec.training.early_stopping

    # -- steps --------------------------------------------------------------------------------

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self.session.update(
            total_steps=state.max_steps, step=state.global_step, epoch=state.epoch or 0.0
        )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._step_started = time.perf_counter()
        self._tokens_before = state.num_input_tokens_seen

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        self._measure(state)
        self._pause_if_asked(state)
        epoch_end = float(state.epoch or 0.0).is_integer()
        if any_rank(self.session.should_stop(), args.device):
            self.stopping = True
            self.session.stop.set(self.session.stop.reason or "stop requested on another rank")
            if not epoch_end:  # at an epoch end: after its evaluation, in on_epoch_end
                self.stopped_mid_epoch = True
                control.should_save = True
                control.should_training_stop = True
        elif not epoch_end and self._step_due(state):
            control.should_save = True
        self.session.update(step=state.global_step, epoch=float(state.epoch or 0.0))

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if self.stopped_mid_epoch:  # already saved; no evaluation inside the grace period
            control.should_evaluate = False
            control.should_save = False
            return
        epoch = current_epoch(float(state.epoch or 0.0))
        last = state.global_step >= state.max_steps
        if self.stopping:
            control.should_save = True
            control.should_training_stop = True
        elif not last and (epoch % self.interval_epochs == 0 or self._step_due(state)):
            control.should_save = True
        if not control.should_evaluate and self._early_stop(state, "loss"):
            control.should_training_stop = True
            self.early_stopped = True

    # -- logs, evaluation, checkpoints --------------------------------------------------------

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        logs = logs or {}
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
        if "loss" in numbers:
            self.session.loss = numbers["loss"]
        if "eval_loss" in numbers:
            self.session.eval_loss = numbers["eval_loss"]
        if "learning_rate" in numbers:
            self.session.learning_rate = numbers["learning_rate"]
        if "grad_norm" in numbers:
            self.session.metrics["gradNorm"] = numbers["grad_norm"]
        if self.session.is_main:
            self.session.log_record({"step": state.global_step, **numbers})
            now = time.monotonic()
            if "eval_loss" in numbers or now - self._last_logged >= LOG_EVERY:
                self._last_logged = now
                shown = " ".join(f"{k}={v:.4g}" for k, v in numbers.items())
                log.info("step %d/%d %s", state.global_step, state.max_steps, shown)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self.session.eval_loss = float(metrics["eval_loss"])
        if self._early_stop(state, "eval_loss"):
            control.should_training_stop = True
            self.early_stopped = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's RNG state is on the volume
        if self.session.is_main:
            staged = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
            self.session.commit_checkpoint(
                staged,
                step=state.global_step,
                epoch=float(state.epoch or 0.0),
                loss=self.session.loss,
            )

    # -- helpers ------------------------------------------------------------------------------

    def _measure(self, state: TrainerState) -> None:
        seconds = time.perf_counter() - self._step_started
        tokens = state.num_input_tokens_seen - self._tokens_before
        self.meter.add(seconds, tokens, self.samples_per_step)
        tps = self.meter.tokens_per_second()
        metrics = self.session.metrics
        if tps is not None:
            self.session.throughput = tps
            metrics["tokensPerSecond"] = tps
            if self.shape is not None and self.peak:
                flops = self.shape.flops_per_token(self.context)
                metrics["mfu"] = mfu(tps, flops, self.peak, self.session.env.distributed.world_size)
        if (sps := self.meter.samples_per_second()) is not None:
            metrics["samplesPerSecond"] = sps
        if (step_seconds := self.meter.step_seconds) is not None:
            metrics["stepSeconds"] = step_seconds
        if torch.cuda.is_available():
            self.session.gpu_memory_bytes = int(torch.cuda.max_memory_allocated())

    def _step_due(self, state: TrainerState) -> bool:
        """Whether the step interval asks for a checkpoint here (never at the very last step)."""
        every = self.interval_steps
        if not every:
            return False
        return state.global_step % every == 0 and state.global_step < state.max_steps

    def _pause_if_asked(self, state: TrainerState) -> None:
        """Test hook: hold at a given step until SIGTERM arrives, so a stop lands mid-run."""
        target = self.session.env.pause_at_step
        if target is None or self._paused or state.global_step != target:
            return
        self._paused = True
        self.session.update(step=state.global_step, epoch=float(state.epoch or 0.0), urgent=True)
        log.info("paused at step %d until a stop signal arrives", target)
        if not self.session.stop.wait(PAUSE_LIMIT):
            log.warning("no stop signal within %.0fs; going on", PAUSE_LIMIT)

    def _early_stop(self, state: TrainerState, key: str) -> bool:
        rule = self.early_stopping
        if rule is None:
            return False
        values = epoch_values(state.log_history, key)
        return should_stop_early(values, rule.patience, rule.min_delta)
