"""Entry point of the vision trainer container: ``python -m kubetrain.trainer.vision``.

Checks the config and data first (fast, no torch), then either trains in this process or,
with several GPUs per Pod, starts one process per GPU and waits for them.
"""

from __future__ import annotations

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer import entry
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.runtime import Outcome, exit_process
from kubetrain.trainer.vision.options import Plan, VisionOptions, preflight

MODULE = "kubetrain.trainer.vision"


def _check(env: RuntimeEnv, spec: TrainingJobSpec) -> tuple[VisionOptions, Plan]:
    options = VisionOptions.from_env()
    return options, preflight(env, spec, options)  # before torch is imported: fails in a second


def _train(env: RuntimeEnv, spec: TrainingJobSpec, checked: tuple[VisionOptions, Plan]) -> Outcome:
    from kubetrain.trainer.vision.train import run  # noqa: PLC0415 - torch, only where training runs

    return run(env, spec, *checked)


def main() -> int:
    return entry.main(MODULE, _check, _train)


if __name__ == "__main__":
    exit_process(main())
