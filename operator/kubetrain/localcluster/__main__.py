"""``python -m kubetrain.localcluster up|down|status``: the local cluster from a shell.

``up`` starts the control plane, then the node agent (an A100 node, an H100 node and a
CPU node whose Pods run as local processes), with ``--real-node`` a real node beside them
(kubelet, containerd, kube-proxy and CoreDNS in a network namespace of its own, the images
of ``make images`` loaded), and with ``--kueue`` Kueue with the queues of
``examples/kueue/queues.yaml``; ``down`` stops the real node, the agent, the containers it
runs, then the control plane, each by its recorded PID, and leaves the host as it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kubetrain.localcluster import kueue, realnode
from kubetrain.localcluster.controlplane import STATE_FILE, ClusterError, ControlPlane
from kubetrain.localcluster.nodeagent import STORAGE_CLASS, daemon, default_pool
from kubetrain.localcluster.processes import pid_is, stop_extras


def _up(workdir: Path, timeout: float, with_kueue: bool = False, real: bool = False) -> int:
    if _running(workdir):
        print(f"the local cluster in {workdir} is already running; `make cluster-down` stops it")
        return 0
    realnode.RealNode.stop_recorded(workdir)  # leftovers of a half-stopped cluster first
    daemon.stop(workdir)
    ControlPlane.stop_recorded(workdir)
    address = realnode.NODE_ADDRESS if real else None
    cluster = ControlPlane(workdir, tie_to_parent=False, node_address=address)
    node = None
    try:
        cluster.start(timeout=timeout)
        daemon.start(workdir, cluster.kubeconfig, cluster.log_dir / "nodeagent.log", timeout)
        if real:
            node = realnode.RealNode(cluster, tie_to_parent=False)
            node.start(timeout=max(timeout, 180))
            _load_images(node)
        if with_kueue:
            kueue.start_recorded(cluster, timeout)
    except (ClusterError, daemon.AgentStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        stop_extras(workdir)
        realnode.RealNode.stop_recorded(workdir)
        daemon.stop(workdir)
        cluster.stop()
        return 1
    _explain(cluster, workdir, node)
    return 0


def _load_images(node: realnode.RealNode) -> None:
    archives = realnode.default_archives()
    if not archives:
        print("  (no images recorded in build/images.json: `make images` builds them)")
    for name, archive in archives.items():
        if not archive.exists():
            print(f"  {name}: {archive} is gone (`make images` rebuilds it)")
            continue
        started = time.monotonic()
        loaded = node.load_image(archive)
        print(
            f"  loaded {', '.join(loaded)} into the real node ({time.monotonic() - started:.0f}s)"
        )


def _explain(cluster: ControlPlane, workdir: Path, real: realnode.RealNode | None) -> None:
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
    if real is not None:
        print(
            f"  real node:  {realnode.NODE_NAME} ({real.gpus}x nvidia.com/gpu advertised, no "
            f"devices): kubelet, containerd (runc), kube-proxy, CoreDNS in network namespace "
            f"{real.layout.netns}; Pods {realnode.POD_CIDR}, address {realnode.NODE_ADDRESS}"
        )
        print(f"              images: {', '.join(real.images())}")
        print(
            f"              place a Pod there with nodeSelector "
            f"{realnode.NODE_LABEL}: real (its images must be loaded: imagePullPolicy Never "
            "or IfNotPresent)"
        )
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
    stopped = (
        stop_extras(workdir)
        + realnode.RealNode.stop_recorded(workdir)
        + daemon.stop(workdir)
        + ControlPlane.stop_recorded(workdir)
    )
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
    parser.add_argument(
        "--real-node", action="store_true", help="also start a real node (with `up`; root)"
    )
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    if args.command == "up":
        return _up(workdir, args.timeout, with_kueue=args.kueue, real=args.real_node)
    if args.command == "down":
        return _down(workdir)
    return _status(workdir)


if __name__ == "__main__":
    sys.exit(main())
