"""Entry point of the multimodal trainer: ``python -m kubetrain.trainer.multimodal``.

Checks the config and data first (fast, no torch), then either trains in this process or,
with several GPUs per Pod, starts one process per GPU and waits for them.
"""

from __future__ import annotations

import os
import sys

from kubetrain.trainer.config import RuntimeEnv, load_spec
from kubetrain.trainer.launch import launch
from kubetrain.trainer.multimodal.options import MultimodalOptions, preflight
from kubetrain.trainer.runtime import Outcome, configure_logging, run_entry

MODULE = "kubetrain.trainer.multimodal"


def _main() -> Outcome:
    env = RuntimeEnv.from_env()
    spec = load_spec()
    options = MultimodalOptions.from_env()
    records = preflight(env, spec)  # bad data fails here, in a second, once per Pod
    dist = env.distributed
    if dist.needs_launcher:
        return launch([sys.executable, "-m", MODULE], dist)
    if dist.world_size > 1 and not dist.launched:  # one process per Pod, several Pods
        os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", RANK=str(dist.rank))
    from kubetrain.trainer.multimodal.train import run  # noqa: PLC0415 - torch, only where training runs

    return run(env, spec, options, records)


def main() -> int:
    configure_logging(int(os.environ.get("RANK", "0") or 0))
    return run_entry(_main)


if __name__ == "__main__":
    sys.exit(main())
