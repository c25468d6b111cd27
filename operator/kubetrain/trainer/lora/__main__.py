"""Entry point of the LoRA trainer container: ``python -m kubetrain.trainer.lora``.

Checks the config and data first (fast, no torch), then either trains in this process or,
with several GPUs per Pod, starts one process per GPU and waits for them.
"""

from __future__ import annotations

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer import entry
from kubetrain.trainer.config import RuntimeEnv
from kubetrain.trainer.lora.data import Records
from kubetrain.trainer.lora.options import LoraOptions, preflight
from kubetrain.trainer.runtime import Outcome, exit_process

MODULE = "kubetrain.trainer.lora"


def _check(env: RuntimeEnv, spec: TrainingJobSpec) -> tuple[LoraOptions, Records]:
    options = LoraOptions.from_env()
    return options, preflight(env, spec)  # bad data fails here, in a second, once per Pod


def _train(env: RuntimeEnv, spec: TrainingJobSpec, checked: tuple[LoraOptions, Records]) -> Outcome:
    from kubetrain.trainer.lora.train import run  # noqa: PLC0415 - torch, only where training runs

    return run(env, spec, *checked)


def main() -> int:
    return entry.main(MODULE, _check, _train)


if __name__ == "__main__":
    exit_process(main())
