"""Entry point of the vision trainer container: ``python -m kubetrain.trainer.vision``.

Checks the config and data first (fast, no torch), then either trains in this process or,
with several GPUs per Pod, starts one process per GPU and waits for them.
"""

from __future__ import annotations

import os
import sys

from kubetrain.trainer.config import RuntimeEnv, load_spec
from kubetrain.trainer.launch import launch
from kubetrain.trainer.runtime import Outcome, configure_logging, run_entry
from kubetrain.trainer.vision.options import VisionOptions, preflight

MODULE = "kubetrain.trainer.vision"


def _main() -> Outcome:
    env = RuntimeEnv.from_env()
    spec = load_spec()
    options = VisionOptions.from_env()
    dist = env.distributed
    if dist.needs_launcher:
        preflight(env, spec, options)  # fail once, clearly, rather than once per rank
        return launch([sys.executable, "-m", MODULE], dist)
    if dist.world_size > 1 and not dist.launched:  # one process per Pod, several Pods
        os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", RANK=str(dist.rank))
    plan = preflight(env, spec, options)  # before torch is imported: fails in a second
    from kubetrain.trainer.vision.train import run  # noqa: PLC0415 - torch, only where training runs

    return run(env, spec, options, plan)


def main() -> int:
    configure_logging(int(os.environ.get("RANK", "0") or 0))
    return run_entry(_main)


if __name__ == "__main__":
    sys.exit(main())
