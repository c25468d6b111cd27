"""The real node keeps to its own network namespace, and stopping it leaves the host as it
was: routes, addresses, firewall rules, namespaces, mounts, cgroups."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.controlplane import KUBERNETES_SERVICE_IP
from kubetrain.localcluster.realnode import NODE_ADDRESS, RealNode, _cgroup_mounts


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def host_state(workdir: Path) -> dict[str, object]:
    """What a real node could change on the host (each compared whole; mounts where the node
    makes them, not those of other container runtimes on the machine)."""
    mounts = sorted(
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    return {
        "routes": _run("ip", "-j", "route", "show", "table", "all"),
        "addresses": _run("ip", "-j", "-brief", "address"),
        "links": sorted(link["ifname"] for link in json.loads(_run("ip", "-j", "link"))),
        "iptables": [
            line for line in _run("iptables-save").splitlines() if not line.startswith("#")
        ],
        "netns": sorted(p.name for p in Path("/run/netns").glob("*")),
        "mounts": [
            m
            for m in mounts
            if m.startswith(("/run/kubetrain-", "/var/lib/kubetrain-", "/run/netns", str(workdir)))
        ],
        "cgroups": sorted(
            str(p)
            for h in _cgroup_mounts(unified=True)
            for p in h.iterdir()
            if "kubetrain" in p.name
        ),
        "run": sorted(str(p) for d in ("/run", "/var/lib") for p in Path(d).glob("kubetrain-*")),
    }


def _egress(plane: ControlPlane, target: str) -> str:
    """What the API server's egress proxy answers to a CONNECT for ``target``."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(str(plane.egress_socket))
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(200).decode(errors="replace").split("\r\n", 1)[0]


def test_the_node_keeps_to_its_namespace_and_leaves_the_host_as_it_was(tmp_path: Path) -> None:
    before = host_state(tmp_path)
    plane = ControlPlane(tmp_path / "cluster", node_address=NODE_ADDRESS)
    plane.start()
    node = RealNode(plane)
    try:
        node.start()
        # No packet for the node's ranges can follow the host's default route: on the host
        # they are unreachable, inside the namespace they stay there.
        for address in ("10.244.0.9", KUBERNETES_SERVICE_IP, NODE_ADDRESS):
            route = subprocess.run(
                ["ip", "route", "get", address], capture_output=True, text=True, check=False
            )
            assert route.returncode != 0 and "no route to host" in route.stderr.lower(), route
        # Inside, the namespace has no way out: no default route, no device but its own.
        assert "default" not in _run("ip", "netns", "exec", node.layout.netns, "ip", "route")
        links = json.loads(_run("ip", "netns", "exec", node.layout.netns, "ip", "-j", "link"))
        assert {link["ifname"] for link in links} == {"lo"}, links
        # Firewall rules are kube-proxy's, in the namespace; the host's are untouched.
        inside = _run("ip", "netns", "exec", node.layout.netns, "iptables-save")
        assert "KUBE-SERVICES" in inside
        assert "KUBE-" not in _run("iptables-save")
        # The API server dials loopback, and the node's ranges inside its namespace only.
        assert _egress(plane, f"{NODE_ADDRESS}:10250").endswith("200 Connection established")
        for outside in ("192.0.2.1:443", "10.1.2.3:10250", "8.8.8.8:53"):
            assert " 403 " in _egress(plane, outside), outside
    finally:
        node.stop()
        plane.stop()
    assert host_state(tmp_path) == before
