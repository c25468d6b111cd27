"""The vision trainer: builds the run from the plan, trains it through ``Loop``, publishes.

One process per GPU (DDP under torchrun or the runtime's launcher; gloo on CPU). Resume
restores weights, optimiser, schedule, gradient scaler, RNG state and the data position
from the checkpoint, so the run continues as if never interrupted.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer.checkpoints import CheckpointInfo
from kubetrain.trainer.config import Distributed, RuntimeEnv
from kubetrain.trainer.entry import run_once
from kubetrain.trainer.runtime import Outcome
from kubetrain.trainer.vision.building import build_setup
from kubetrain.trainer.vision.loop import Loop
from kubetrain.trainer.vision.options import Plan, VisionOptions, preflight
from kubetrain.trainer.vision.publish import publish_model
from kubetrain.trainer.vision.reporting import VisionSession

log = logging.getLogger(__name__)


def run(
    env: RuntimeEnv,
    spec: TrainingJobSpec,
    options: VisionOptions | None = None,
    plan: Plan | None = None,
) -> Outcome:
    """Train (or resume) the job's vision model; returns how the run ended."""
    options = options or VisionOptions.from_env()
    checked = plan or preflight(env, spec, options)
    session = VisionSession(env, spec)

    def train(resume: CheckpointInfo | None) -> Outcome:
        device = start_distributed(env.distributed)
        try:
            return _train(spec, options, session, plan=checked, device=device, resume=resume)
        finally:
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()

    return run_once(session, train, reason=lambda err: f"{type(err).__name__}: {err}")


def start_distributed(info: Distributed) -> torch.device:
    """Join the job's process group (several ranks) and pick this rank's device."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(info.local_rank)
        torch.backends.cudnn.benchmark = True
    if info.world_size > 1:
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", rank=info.rank, world_size=info.world_size
        )
    return torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")


def _train(
    spec: TrainingJobSpec,
    options: VisionOptions,
    session: VisionSession,
    *,
    plan: Plan,
    device: torch.device,
    resume: Any,
) -> Outcome:
    info = session.env.distributed
    setup = build_setup(spec, options, plan, device, info)
    loop = Loop(spec, session, setup)
    if resume is not None:
        loop.restore(resume)
    log.info(
        "training %s (%s, %d classes, %dx%d) on %d images, validating on %d: %d steps on %s",
        plan.arch.name, plan.task.value, plan.num_classes, *plan.size, len(plan.train),
        len(plan.val), loop.total_steps, device,
    )  # fmt: skip
    started = time.monotonic()
    ending = loop.run()
    elapsed = time.monotonic() - started
    progress = loop.progress
    if ending == "stopped":
        if loop.last_checkpoint and progress.step > 0:
            message = (
                f"stopped at step {progress.step} after checkpoint {loop.last_checkpoint}; "
                "resumable"
            )
        else:
            message = "stopped before training began; resumable"
        return session.finish("stopping", message)
    summary = _summary(loop, setup.ops.primary, elapsed, early=ending == "early")
    model_ref = None
    note = ""
    if session.is_main:
        best = loop.best.load()
        if best is not None:
            setup.module.load_state_dict(best)
        model_ref, note = publish_model(
            setup.module,
            spec,
            plan,
            progress=progress,
            session=session,
            val_set=setup.val_set,
            options=options,
            summary=summary,
        )
    if info.world_size > 1:
        dist.barrier()
    session.update(step=progress.step, epoch=float(progress.epochs_done))
    message = summary + (f"; model in {model_ref.path}" if model_ref else "")
    message += f"; {note}" if note else ""
    return session.finish("completed", message, model_ref)


def _summary(loop: Loop, primary: str, elapsed: float, *, early: bool) -> str:
    progress = loop.progress
    parts = [
        f"completed {progress.step} steps ({progress.epochs_done} epochs"
        + (", stopped early" if early else "")
        + f") in {elapsed:.0f}s"
    ]
    best = next((h for h in progress.history if int(h["epoch"]) == progress.best_epoch), None)
    if best is not None:
        shown = [f"{primary} {best[primary]:.4f}"] if primary in best else []
        if "evalLoss" in best:
            shown.append(f"eval loss {best['evalLoss']:.4f}")
        parts.append(f"best epoch {progress.best_epoch}: {', '.join(shown)}")
    if loop.session.throughput:
        parts.append(f"{loop.session.throughput:.0f} images/s")
    return "; ".join(parts)
