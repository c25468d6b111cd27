"""Pod addresses and names: loopback Pod IPs and the /etc/hosts each container sees.

There is no Pod network and no cluster DNS. Every Pod gets its own loopback address
(127.N.x.y, N fixed per agent: all of 127.0.0.0/8 reaches this host), and each
container's /etc/hosts (bind-mounted in its mount namespace) lists what cluster DNS
would answer for its namespace: ``<hostname>.<subdomain>`` (and the longer forms) for
Pods selected by a headless Service named like their subdomain, and the headless
Service names themselves.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable, Mapping

from kubetrain.localcluster.nodeagent.kube import Obj

POD_NETWORK = ipaddress.IPv4Network("127.1.0.0/16")
CLUSTER_DOMAIN = "cluster.local"


def pod_network(seed: str) -> ipaddress.IPv4Network:
    """``127.N.0.0/16`` for one agent, N (1-254) derived from ``seed`` (its state directory),
    so that agents of different clusters on one machine rarely hand out the same address."""
    number = 1 + int(hashlib.sha256(seed.encode()).hexdigest(), 16) % 254
    return ipaddress.IPv4Network(f"127.{number}.0.0/16")


def allocate_ip(
    used: Iterable[str], after: str | None = None, network: ipaddress.IPv4Network = POD_NETWORK
) -> str:
    """The next free Pod address after ``after`` (round robin, skipping .0 and .255)."""
    taken = set(used)
    base, size = int(network.network_address), network.num_addresses
    start = 1
    if after is not None and ipaddress.IPv4Address(after) in network:
        start = int(ipaddress.IPv4Address(after)) - base + 1
    for step in range(size):
        offset = (start + step) % size
        if offset & 0xFF in (0, 255):
            continue
        candidate = str(ipaddress.IPv4Address(base + offset))
        if candidate not in taken:
            return candidate
    raise RuntimeError(f"no free Pod address left in {network}")


def pod_hostname(pod: Obj) -> str:
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def _selects(service: Obj, pod: Obj) -> bool:
    selector: Mapping[str, str] = service.get("spec", {}).get("selector") or {}
    labels: Mapping[str, str] = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _published(service: Obj, pod: Obj) -> bool:
    """Whether cluster DNS would list ``pod`` for ``service``: an address, not finished,
    and Ready unless the Service publishes not-ready addresses."""
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    if pod["metadata"].get("deletionTimestamp"):
        return False
    if service["spec"].get("publishNotReadyAddresses"):
        return True
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _names(*labels: str) -> list[str]:
    """A DNS name in all the forms a Pod in the same namespace could use."""
    full = ".".join(labels)
    return [f"{full}.svc.{CLUSTER_DOMAIN}", f"{full}.svc", full, ".".join(labels[:-1])]


def hosts_file(pod: Obj, ip: str, pods: Iterable[Obj], services: Iterable[Obj]) -> str:
    """The /etc/hosts for ``pod`` given the Pods and Services of its namespace."""
    namespace = pod["metadata"]["namespace"]
    hostname = pod_hostname(pod)
    lines = [
        "# Kubernetes-managed hosts file (kubetrain node agent: no cluster DNS here).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    subdomain = pod["spec"].get("subdomain")
    if subdomain:
        lines.append(f"{ip}\t{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}\t{hostname}")
    else:
        lines.append(f"{ip}\t{hostname}")
    for alias in pod["spec"].get("hostAliases") or []:
        lines.append(f"{alias['ip']}\t" + "\t".join(alias.get("hostnames") or []))
    peers = [p for p in pods if p["metadata"]["namespace"] == namespace]
    headless = [
        s
        for s in services
        if s["metadata"]["namespace"] == namespace and s.get("spec", {}).get("clusterIP") == "None"
    ]
    for service in sorted(headless, key=lambda s: str(s["metadata"]["name"])):
        name = str(service["metadata"]["name"])
        selected = sorted(
            (p for p in peers if _selects(service, p) and _published(service, p)),
            key=lambda p: str(p["metadata"]["name"]),
        )
        for peer in selected:
            peer_ip = peer["status"]["podIP"]
            if peer["spec"].get("hostname") and peer["spec"].get("subdomain") == name:
                forms = _names(str(peer["spec"]["hostname"]), name, namespace)
                lines.append(f"{peer_ip}\t" + " ".join(forms))
            lines.append(f"{peer_ip}\t" + " ".join(_names(name, namespace)))
    return "\n".join(lines) + "\n"


def write_in_place(path: str, content: str) -> bool:
    """Rewrite a bind-mounted file without replacing its inode; True if it changed."""
    data = content.encode()
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True
