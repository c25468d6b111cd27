"""``python -m kubetrain.localcluster up|down|status``: the local cluster from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubetrain.localcluster.controlplane import STATE_FILE, ClusterError, ControlPlane
from kubetrain.localcluster.processes import pid_is


def _up(workdir: Path, timeout: float) -> int:
    if _running(workdir):
        print(f"the local cluster in {workdir} is already running; `make cluster-down` stops it")
        return 0
    ControlPlane.stop_recorded(workdir)  # leftovers of a half-stopped cluster
    cluster = ControlPlane(workdir, tie_to_parent=False)
    try:
        cluster.start(timeout=timeout)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    kubeconfig = cluster.kubeconfig
    print(f"local cluster up: API server {cluster.server}")
    print(f"  kubeconfig: {kubeconfig}")
    print(f"  logs:       {cluster.log_dir}")
    print(f"  try:        bin/kubectl --kubeconfig {kubeconfig} get --raw /readyz")
    print("  stop it:    make cluster-down")
    return 0


def _down(workdir: Path) -> int:
    stopped = ControlPlane.stop_recorded(workdir)
    print(
        "stopped: " + ", ".join(stopped) if stopped else f"no local cluster recorded in {workdir}"
    )
    return 0


def _running(workdir: Path) -> list[str]:
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
    except FileNotFoundError:
        return []
    return [p["name"] for p in state["processes"] if pid_is(p["pid"], p["executable"])]


def _status(workdir: Path) -> int:
    running = _running(workdir)
    print("running: " + ", ".join(running) if running else "not running")
    return 0 if running else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetrain-cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"), help="state directory")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    if args.command == "up":
        return _up(workdir, args.timeout)
    if args.command == "down":
        return _down(workdir)
    return _status(workdir)


if __name__ == "__main__":
    sys.exit(main())
