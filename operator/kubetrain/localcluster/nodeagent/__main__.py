"""``python -m kubetrain.localcluster.nodeagent``: run the node agent until SIGTERM.

On SIGTERM or SIGINT the agent stops and its containers keep running (a restarted agent
adopts them); ``--stop-pods`` stops the containers recorded in a state directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from kubetrain.localcluster.nodeagent.agent import DEFAULT_NAME, NodeAgent, NodeAgentError
from kubetrain.localcluster.nodeagent.config import default_pool, load_pool
from kubetrain.localcluster.nodeagent.files import write_json
from kubetrain.localcluster.nodeagent.runtime import stop_recorded
from kubetrain.localcluster.nodeagent.state import READY_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetrain.localcluster.nodeagent")
    parser.add_argument("--kubeconfig", type=Path, help="credentials for the API server")
    parser.add_argument("--state-dir", type=Path, required=True, help="the agent's state")
    parser.add_argument("--nodes", type=Path, help="YAML node pool (default: A100, H100, CPU)")
    parser.add_argument("--name", default=DEFAULT_NAME, help="the agent's name (node label)")
    parser.add_argument(
        "--stop-pods", action="store_true", help="stop the recorded containers and exit"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state_dir: Path = args.state_dir.resolve()
    if args.stop_pods:
        count = stop_recorded(state_dir / "pods")
        print(f"stopped {count} container(s)")
        return 0
    if args.kubeconfig is None:
        parser.error("--kubeconfig is required to run the agent")
    nodes = load_pool(args.nodes) if args.nodes else default_pool()
    agent = NodeAgent(args.kubeconfig, state_dir, nodes, name=args.name)
    stopping = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stopping.set())
    try:
        agent.start()
    except NodeAgentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    ready = state_dir / READY_FILE
    write_json(ready, {"pid": os.getpid(), "nodes": agent.node_names, "since": time.time()})
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        ready.unlink(missing_ok=True)
        agent.stop(stop_pods=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
