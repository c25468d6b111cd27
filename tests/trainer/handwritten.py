"""A hand-written training loop on the trainer runtime, without torch: what a custom Python
trainer does. The runtime's tests run it as a process, as a Pod would (``python -m
tests.trainer.handwritten``): 12 steps in 2 epochs, a checkpoint every 4 steps, then a model.

Test hooks: ``HANDWRITTEN_HOLD_AT_STEP`` and ``HANDWRITTEN_HOLD_UNTIL`` hold the loop after
that step until that file exists (at most a minute), so a test can act at a known point.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer import entry, outputs
from kubetrain.trainer.checkpoints import CheckpointInfo
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.runtime import Outcome, exit_process
from kubetrain.trainer.session import TrainingSession

MODULE = "tests.trainer.handwritten"
TOTAL_STEPS = 12
STEPS_PER_EPOCH = 6
CHECKPOINT_EVERY = 4
HOLD_LIMIT = 60.0


def job(keep_last: int = 2) -> dict[str, object]:
    """The spec this trainer is run with (``KUBETRAIN_CONFIG``)."""
    return {
        "modelType": "llm",
        "dataset": {"pvc": {"claimName": "data"}, "format": "jsonl"},
        "llm": {"baseModel": "handwritten"},
        "resources": {"gpuType": "cpu"},
        "training": {"epochs": TOTAL_STEPS // STEPS_PER_EPOCH},
        "checkpoint": {"keepLast": keep_last},
    }


def _hold(step: int) -> None:
    if os.environ.get("HANDWRITTEN_HOLD_AT_STEP") != str(step):
        return
    until = Path(os.environ["HANDWRITTEN_HOLD_UNTIL"])
    deadline = time.monotonic() + HOLD_LIMIT
    while not until.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _train(env: RuntimeEnv, spec: TrainingJobSpec, _checked: None) -> Outcome:
    session = TrainingSession(env, spec)
    session.total_steps = TOTAL_STEPS

    def loop(resume: CheckpointInfo | None) -> Outcome:
        first = resume.step + 1 if resume else 1
        for step in range(first, TOTAL_STEPS + 1):
            epoch, loss = step / STEPS_PER_EPOCH, 1.0 / step
            session.update(step=step, epoch=epoch, loss=loss, urgent=True)
            if step % CHECKPOINT_EVERY == 0 and step < TOTAL_STEPS:
                staged = session.store.staging / f"checkpoint-{step}"
                staged.mkdir(parents=True)
                (staged / "weights.json").write_text(json.dumps({"step": step, "pid": os.getpid()}))
                session.commit_checkpoint(staged, step=step, epoch=epoch, loss=loss)
            _hold(step)
        staged = outputs.staging_dir(env.output_dir)
        (staged / "weights.json").write_text(json.dumps({"step": TOTAL_STEPS}))
        model = outputs.publish(staged, env.output_dir, format="json", summary={})
        return session.finish("completed", f"completed {TOTAL_STEPS} steps", model)

    return entry.run_once(session, loop)


if __name__ == "__main__":
    exit_process(entry.main(MODULE, lambda env, spec: None, _train))
