"""How every trainer container starts and how every run begins and ends, written once.

``main`` is a trainer's ``python -m`` entry: check the config and data first (fast, no
torch), then either train in this process or, with several GPUs per Pod, start one process
per GPU and wait for them. ``run_once`` wraps one run: a model already published is
reported again instead of training twice, and any error is reported as the run's failure.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer import outputs
from kubetrain.trainer.checkpoints import CheckpointInfo
from kubetrain.trainer.config import RuntimeEnv, load_spec
from kubetrain.trainer.driver import require_driver
from kubetrain.trainer.fences import SupersededError
from kubetrain.trainer.launch import launch
from kubetrain.trainer.runtime import Outcome, TrainerError, configure_logging, run_entry
from kubetrain.trainer.session import TrainingSession

Checked = TypeVar("Checked")

log = logging.getLogger(__name__)


def main(
    module: str,
    check: Callable[[RuntimeEnv, TrainingJobSpec], Checked],
    train: Callable[[RuntimeEnv, TrainingJobSpec, Checked], Outcome],
) -> int:
    """Run the trainer ``module``: a node driver too old for the image's CUDA, then ``check``
    (no torch: bad config or data), fail in a second, before any process is started; ``train``
    (which may import torch) trains with what ``check`` returned. Returns the exit code."""

    def run() -> Outcome:
        env = RuntimeEnv.from_env()
        spec = load_spec()
        require_driver(spec)  # a node driver too old for the image's CUDA: permanent, no torch
        checked = check(env, spec)
        dist = env.distributed
        if dist.needs_launcher:
            return launch([sys.executable, "-m", module], dist)
        if dist.world_size > 1 and not dist.launched:  # one process per Pod, several Pods
            os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", RANK=str(dist.rank))
        return train(env, spec, checked)

    configure_logging(int(os.environ.get("RANK", "0") or 0))
    return run_entry(run)


def failure_reason(err: BaseException) -> str:
    """A failure as the run reports it: a trainer error's own message, else the exception."""
    return str(err) if isinstance(err, TrainerError) else f"{type(err).__name__}: {err}"


def run_once(
    session: TrainingSession,
    train: Callable[[CheckpointInfo | None], Outcome],
    *,
    reason: Callable[[BaseException], str] = failure_reason,
) -> Outcome:
    """Train once: a model already published (and no resume asked for) is reported completed
    again; else ``train`` from the checkpoint the session resumes from (or none). A newer
    attempt on the volume stops it (resumable: not this attempt's failure); any other error
    finishes the session failed, with ``reason(error)``, before it propagates."""
    env = session.env
    done = outputs.published(env.output_dir) if not env.resume_from else None
    if done is not None:
        model, manifest = done
        message = f"already completed: {manifest.get('summary', 'model')} in {model.path}"
        return session.finish("completed", message, model)
    try:
        outcome = train(session.begin())
    except SupersededError as err:
        log.warning("%s", err)
        return session.finish("stopping", str(err)[:1024])
    except BaseException as err:
        session.finish("failed", reason(err)[:1024])
        raise
    return outcome
