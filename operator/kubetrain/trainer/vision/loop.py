"""The training loop: epochs of steps, validation at each epoch end, checkpoints, stop.

A step is one optimizer update (after ``gradientAccumulationSteps`` micro-batches). The
stop flag is checked by all ranks together after every step: mid-epoch the loop
checkpoints at once and stops; at the last step of an epoch it first validates, so a
resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer.checkpoints import CheckpointInfo
from kubetrain.trainer.early_stop import should_stop_early
from kubetrain.trainer.metrics import ThroughputMeter
from kubetrain.trainer.runtime import TrainerError
from kubetrain.trainer.session import TrainingSession
from kubetrain.trainer.signals import any_rank
from kubetrain.trainer.vision import batching, state
from kubetrain.trainer.vision.dataset import VisionDataset, loader
from kubetrain.trainer.vision.state import BestModel, Progress
from kubetrain.trainer.vision.tasks import TaskOps

log = logging.getLogger(__name__)

PAUSE_LIMIT = 60.0
LOG_EVERY = 10.0  # seconds between progress lines in the container log

Ending = Literal["completed", "stopped", "early"]


@dataclass(frozen=True)
class Setup:
    """Everything the loop trains with (``building.build_setup`` makes it)."""

    model: nn.Module
    """The model as trained (wrapped in DistributedDataParallel with several ranks)."""
    module: nn.Module
    """The model itself (unwrapped): what is saved, scored and exported."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ops: TaskOps
    train_set: VisionDataset
    val_set: VisionDataset
    workers: int
    rank: int = 0
    world: int = 1


class Loop:
    """Runs (or resumes) the epochs of one training run of one rank."""

    def __init__(self, spec: TrainingJobSpec, session: TrainingSession, setup: Setup) -> None:
        self.spec = spec
        self.session = session
        self.setup = setup
        training = spec.training
        self.accumulation = training.gradient_accumulation_steps
        self.batch_size = training.batch_size
        self.seed = training.seed
        self.epochs = training.epochs
        self.steps_per_epoch = batching.steps_per_epoch(
            len(setup.train_set), self.batch_size, self.accumulation, setup.world
        )
        vision = spec.vision
        assert vision is not None
        loader_ = setup.train_set.loader
        self.progress = Progress(
            architecture=vision.architecture,
            num_classes=loader_.num_classes,
            size=loader_.size,
            steps_per_epoch=self.steps_per_epoch,
        )
        self.best = BestModel()
        self.meter = ThroughputMeter()
        self.max_grad_norm = spec.optimization.max_grad_norm
        self.interval_steps = spec.checkpoint.interval_steps
        self.interval_epochs = spec.checkpoint.interval_epochs
        self.device = setup.ops.device
        self._paused = False
        self._last_logged = 0.0
        self.last_checkpoint = ""

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    # -- resume -------------------------------------------------------------------------------

    def restore(self, checkpoint: CheckpointInfo) -> None:
        """Continue from ``checkpoint``: weights, optimiser, schedule, RNG, progress, best."""
        path = checkpoint.path
        saved = state.load_progress(path)
        saved.check_fits(self.progress, path)
        self.setup.module.load_state_dict(state.load_tensors(path / state.MODEL, "cpu"))
        training = state.load_tensors(path / state.TRAINING, "cpu")
        self.setup.optimizer.load_state_dict(training["optimizer"])
        self.setup.scheduler.load_state_dict(training["scheduler"])
        self.setup.scaler.load_state_dict(training["scaler"])
        rng = path / state.rng_file(self.setup.rank)
        if rng.is_file():
            state.set_rng_state(state.load_tensors(rng))
        if saved.steps_per_epoch != self.steps_per_epoch:
            log.warning(
                "checkpoint %s has %d steps per epoch, this run %d (another batch size or "
                "worker count): resuming at the start of epoch %d",
                checkpoint.id, saved.steps_per_epoch, self.steps_per_epoch, saved.epochs_done + 1,
            )  # fmt: skip
            saved.step = saved.epochs_done * self.steps_per_epoch
            saved.steps_per_epoch = self.steps_per_epoch
            saved.epoch_loss_sum, saved.epoch_loss_steps = 0.0, 0
        self.progress = saved
        self.best.committed(path)
        self.last_checkpoint = checkpoint.id

    # -- the epochs ---------------------------------------------------------------------------

    def run(self) -> Ending:
        session, progress = self.session, self.progress
        session.update(
            total_steps=self.total_steps, step=progress.step, epoch=self._epoch_position()
        )
        if any_rank(session.should_stop(), self.device):
            return "stopped"
        for epoch in range(progress.epochs_done, self.epochs):
            done = progress.step - epoch * self.steps_per_epoch
            if done < self.steps_per_epoch and self._train_epoch(epoch, done) == "stopped":
                return "stopped"
            metrics = self._validate(epoch)
            self._finish_epoch(epoch, metrics)
            last = epoch + 1 == self.epochs
            if any_rank(session.should_stop(), self.device):
                self._checkpoint()
                return "stopped"
            if self._early_stop():
                log.info("early stopping after epoch %d: the loss stopped improving", epoch + 1)
                return "early"
            if not last and ((epoch + 1) % self.interval_epochs == 0 or self._step_due()):
                self._checkpoint()
        return "completed"

    def _train_epoch(self, epoch: int, done: int) -> Ending | None:
        setup, progress = self.setup, self.progress
        batches = batching.epoch_batches(
            len(setup.train_set), self.batch_size, seed=self.seed, epoch=epoch,
            rank=setup.rank, world=setup.world,
        )  # fmt: skip
        groups = batching.steps(len(batches), self.accumulation)
        keys = [[(epoch, i) for i in batch] for batch in batches[groups[done].start :]]
        data = iter(
            loader(
                setup.train_set, keys, workers=setup.workers,
                pin_memory=self.device.type == "cuda", seed=self.seed + epoch,
            )
        )  # fmt: skip
        setup.model.train()
        tick = time.perf_counter()
        for index in range(done, len(groups)):
            loss, images, grad_norm = self._step(data, len(groups[index]))
            progress.step += 1
            progress.epoch_loss_sum += loss
            progress.epoch_loss_steps += 1
            now = time.perf_counter()
            self.meter.add(now - tick, 0, images * setup.world)
            self._report_step(loss, grad_norm)
            self._pause_if_asked()
            last_in_epoch = index == len(groups) - 1
            if any_rank(self.session.should_stop(), self.device):
                self.session.stop.set(self.session.stop.reason or "stop requested on another rank")
                if not last_in_epoch:  # at an epoch end: after its validation, in run()
                    self._checkpoint()
                    return "stopped"
            elif not last_in_epoch and self._step_due():
                self._checkpoint()
            tick = time.perf_counter()
        return None

    def _step(self, data: Any, micro_batches: int) -> tuple[float, int, float | None]:
        """One optimizer update over ``micro_batches`` batches; (loss, images, grad norm)."""
        setup = self.setup
        setup.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        images = 0
        for micro in range(micro_batches):
            batch = setup.ops.to_device(next(data))
            images += setup.ops.images(batch)
            sync = micro == micro_batches - 1 or setup.world == 1
            context = contextlib.nullcontext() if sync else setup.model.no_sync()  # type: ignore[operator]
            with context:
                loss = setup.ops.loss(setup.model, batch) / micro_batches
                scaled: torch.Tensor = setup.scaler.scale(loss)
                torch.autograd.backward(scaled)
            total += loss.detach()
        grad_norm = None
        if self.max_grad_norm > 0:
            setup.scaler.unscale_(setup.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(setup.module.parameters(), self.max_grad_norm)
            grad_norm = float(norm)
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
        setup.scheduler.step()
        if setup.world > 1:
            dist.all_reduce(total)
            total /= setup.world
        value = float(total)
        if not math.isfinite(value):
            raise TrainerError(
                f"the loss is {value} at step {self.progress.step + 1}: training diverged "
                "(try a lower spec.training.learningRate or set spec.optimization.maxGradNorm)"
            )
        return value, images, grad_norm if grad_norm is None or math.isfinite(grad_norm) else None

    # -- validation and epoch ends --------------------------------------------------------

    def _validate(self, epoch: int) -> dict[str, float]:
        """Score this rank's share of the validation set; merge all ranks' tallies."""
        setup = self.setup
        module, ops = setup.module, setup.ops
        started = time.perf_counter()
        indices = batching.shard(len(setup.val_set), setup.rank, setup.world)
        batches = [
            [(epoch, i) for i in indices[s : s + self.batch_size]]
            for s in range(0, len(indices), self.batch_size)
        ]
        tally = ops.tally()
        module.eval()
        with torch.inference_mode():
            for batch in loader(
                setup.val_set, batches, workers=setup.workers,
                pin_memory=self.device.type == "cuda", seed=self.seed,
            ):  # fmt: skip
                ops.score(module, ops.to_device(batch), tally)
        tallies = [tally]
        if setup.world > 1:
            gathered: list[Any] = [None] * setup.world
            dist.all_gather_object(gathered, tally)
            tallies = gathered
        metrics = ops.summarize(tallies)
        setup.model.train()
        log.info(
            "epoch %d/%d validation (%.1fs): %s", epoch + 1, self.epochs,
            time.perf_counter() - started, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
        )  # fmt: skip
        return metrics

    def _finish_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        progress, session = self.progress, self.session
        train_loss = progress.epoch_loss_sum / max(progress.epoch_loss_steps, 1)
        record = {"epoch": float(epoch + 1), "trainLoss": train_loss, **metrics}
        progress.history.append(record)
        progress.epochs_done = epoch + 1
        progress.epoch_loss_sum, progress.epoch_loss_steps = 0.0, 0
        primary = self.setup.ops.primary
        score = (metrics.get(primary, -metrics.get("evalLoss", 0.0)), -metrics.get("evalLoss", 0.0))
        if score > progress.best_score:
            progress.best_score, progress.best_epoch = score, epoch + 1
            if session.is_main:
                self.best.offer(self.setup.module)
        reported = {k: v for k, v in metrics.items() if k != "evalLoss"}
        session.metrics.update(reported | {"trainLoss": train_loss})
        session.metrics["bestEpoch"] = float(progress.best_epoch)
        session.log_record(
            {"step": progress.step, "epoch": epoch + 1, "train_loss": train_loss,
             "eval_loss": metrics.get("evalLoss"), **reported}
        )  # fmt: skip
        session.update(
            step=progress.step, epoch=float(epoch + 1), eval_loss=metrics.get("evalLoss"),
            urgent=True,
        )  # fmt: skip

    def _early_stop(self) -> bool:
        rule = self.spec.training.early_stopping
        if rule is None:
            return False
        key = "evalLoss" if all("evalLoss" in h for h in self.progress.history) else "trainLoss"
        values = [h[key] for h in self.progress.history]
        return should_stop_early(values, rule.patience, rule.min_delta)

    # -- checkpoints, reports -------------------------------------------------------------

    def _step_due(self) -> bool:
        every, step = self.interval_steps, self.progress.step
        return every is not None and step % every == 0 and step < self.total_steps

    def _checkpoint(self) -> None:
        """All ranks write their RNG state, rank 0 the rest; rank 0 seals it."""
        setup, progress, session = self.setup, self.progress, self.session
        staged = session.store.staging / f"checkpoint-{progress.step}"
        staged.mkdir(parents=True, exist_ok=True)
        torch.save(state.rng_state(), staged / state.rng_file(setup.rank))
        if session.is_main:
            training = {
                "optimizer": setup.optimizer.state_dict(),
                "scheduler": setup.scheduler.state_dict(),
                "scaler": setup.scaler.state_dict(),
            }
            state.save(staged, model=setup.module, training=training, progress=progress,
                       best=self.best)  # fmt: skip
        if setup.world > 1:
            dist.barrier()
        if session.is_main:
            info = session.commit_checkpoint(
                staged, step=progress.step, epoch=self._epoch_position(), loss=session.loss
            )
            self.best.committed(info.path)
            self.last_checkpoint = info.id
        if setup.world > 1:
            dist.barrier()

    def _epoch_position(self) -> float:
        return self.progress.step / max(self.steps_per_epoch, 1)

    def _report_step(self, loss: float, grad_norm: float | None) -> None:
        session, progress = self.session, self.progress
        lr = float(self.setup.optimizer.param_groups[0]["lr"])
        throughput = self.meter.samples_per_second()
        metrics = session.metrics
        if throughput is not None:
            metrics["imagesPerSecond"] = throughput
        if (seconds := self.meter.step_seconds) is not None:
            metrics["stepSeconds"] = seconds
        if grad_norm is not None:
            metrics["gradNorm"] = grad_norm
        if self.device.type == "cuda":
            session.gpu_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        epoch = self._epoch_position()
        session.update(
            step=progress.step, epoch=epoch, loss=loss, learning_rate=lr, throughput=throughput
        )
        if session.is_main:
            record: dict[str, Any] = {"step": progress.step, "epoch": round(epoch, 4),
                                      "loss": loss, "learning_rate": lr}  # fmt: skip
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            session.log_record(record)
            now = time.monotonic()
            if now - self._last_logged >= LOG_EVERY:
                self._last_logged = now
                log.info(
                    "step %d/%d epoch %.2f loss=%.4g lr=%.3g images/s=%.1f", progress.step,
                    self.total_steps, epoch, loss, lr, throughput or 0.0,
                )  # fmt: skip

    def _pause_if_asked(self) -> None:
        """Test hook: hold at a given step until SIGTERM arrives, so a stop lands mid-run."""
        target = self.session.env.pause_at_step
        if target is None or self._paused or self.progress.step != target:
            return
        self._paused = True
        self.session.update(urgent=True)
        log.info("paused at step %d until a stop signal arrives", target)
        if not self.session.stop.wait(PAUSE_LIMIT):
            log.warning("no stop signal within %.0fs; going on", PAUSE_LIMIT)
