"""``python -m kubetrain.localcluster up|down|status``: the local cluster from a shell.

``up`` starts the control plane, then the node agent (an A100 node, an H100 node and a
CPU node whose Pods run as local processes), and with ``--kueue`` Kueue with the queues of
``examples/kueue/queues.yaml``; ``down`` stops the agent, the containers it
runs, then the control plane, each by its recorded PID.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubetrain.localcluster import kueue
from kubetrain.localcluster.controlplane import STATE_FILE, ClusterError, ControlPlane
from kubetrain.localcluster.nodeagent import STORAGE_CLASS, daemon, default_pool
from kubetrain.localcluster.processes import pid_is, stop_extras


def _up(workdir: Path, timeout: float, with_kueue: bool = False) -> int:
    if _running(workdir):
        print(f"the local cluster in {workdir} is already running; `make cluster-down` stops it")
        return 0
    daemon.stop(workdir)  # leftovers of a half-stopped cluster, agent and containers first
    ControlPlane.stop_recorded(workdir)
    cluster = ControlPlane(workdir, tie_to_parent=False)
    try:
        cluster.start(timeout=timeout)
        daemon.start(workdir, cluster.kubeconfig, cluster.log_dir / "nodeagent.log", timeout)
        if with_kueue:
            kueue.start_recorded(cluster, timeout)
    except (ClusterError, daemon.AgentStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        stop_extras(workdir)
        daemon.stop(workdir)
        cluster.stop()
        return 1
    _explain(cluster, workdir)
    return 0


def _explain(cluster: ControlPlane, workdir: Path) -> None:
    kubeconfig = cluster.kubeconfig
    state = daemon.state_dir(workdir)
    nodes = []
    for node in default_pool():
        product = node.labels.get("nvidia.com/gpu.product")
        gpus = node.capacity.get("nvidia.com/gpu")
        nodes.append(f"{node.name} ({gpus}x {product})" if product else f"{node.name} (CPU)")
    print(f"local cluster up: API server {cluster.server}")
    print(f"  kubeconfig: {kubeconfig}")
    print(f"  nodes:      {', '.join(nodes)}")
    print("              Pods bound to them run as local processes: images are ignored,")
    print("              `command` must exist here (`python` is this virtualenv's)")
    print(f"  storage:    StorageClass {STORAGE_CLASS} (default), data in {state / 'volumes'}")
    print(f"  pod logs:   {state / 'logs'}/<namespace>_<pod>_<uid>/<container>/<n>.log")
    print(f"  logs:       {cluster.log_dir} (control plane and node agent)")
    print(
        f"  try:        bin/kubectl --kubeconfig {kubeconfig} get nodes -L nvidia.com/gpu.product"
    )
    if kueue.recorded(workdir):
        print("  kueue:      running, with ClusterQueue training and LocalQueue default/gpus")
        print("              (examples/kueue/queues.yaml); `make demo` runs the operator with")
        print("              its Kueue integration on: try examples/kueue-tiny-lora.yaml")
    print("  stop it:    make cluster-down")


def _down(workdir: Path) -> int:
    stopped = stop_extras(workdir) + daemon.stop(workdir) + ControlPlane.stop_recorded(workdir)
    print(
        "stopped: " + ", ".join(stopped) if stopped else f"no local cluster recorded in {workdir}"
    )
    return 0


def _running(workdir: Path) -> list[str]:
    names = ["nodeagent"] if daemon.running(workdir) else []
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
    except FileNotFoundError:
        return names
    return names + [p["name"] for p in state["processes"] if pid_is(p["pid"], p["executable"])]


def _status(workdir: Path) -> int:
    running = _running(workdir)
    print("running: " + ", ".join(running) if running else "not running")
    return 0 if running else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain-cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state directory")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    parser.add_argument("--kueue", action="store_true", help="also start Kueue (with `up`)")
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    if args.command == "up":
        return _up(workdir, args.timeout, with_kueue=args.kueue)
    if args.command == "down":
        return _down(workdir)
    return _status(workdir)


if __name__ == "__main__":
    sys.exit(main())
