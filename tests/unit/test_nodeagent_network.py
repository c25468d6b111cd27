"""Pod addresses and the /etc/hosts that stands in for cluster DNS."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

from kubetrain.localcluster.nodeagent.logserver import tail_bytes
from kubetrain.localcluster.nodeagent.network import (
    allocate_ip,
    hosts_file,
    pod_network,
    write_in_place,
)


def test_addresses_are_loopback_distinct_and_handed_out_round_robin() -> None:
    assert allocate_ip([]) == "127.1.0.1"
    assert allocate_ip(["127.1.0.1", "127.1.0.2"]) == "127.1.0.3"
    assert allocate_ip(["127.1.0.1"], after="127.1.0.1") == "127.1.0.2"
    assert allocate_ip([], after="127.1.0.254") == "127.1.1.1"  # .255 and .0 skipped
    assert allocate_ip([], after="127.1.255.254") == "127.1.0.1"  # wraps around


def test_each_agent_has_its_own_loopback_range() -> None:
    first, second = pod_network("/state/a"), pod_network("/state/b")
    assert first == pod_network("/state/a") and first != second
    for network in (first, second):
        assert network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        assert ipaddress.IPv4Address("127.0.0.1") not in network
    assert allocate_ip([], network=first).startswith(str(first.network_address)[:-1])


def worker(index: int, ready: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"job-worker-{index}", "namespace": "ns", "labels": {"job": "job"}},
        "spec": {"hostname": f"job-worker-{index}", "subdomain": "job", **spec},
        "status": {
            "phase": "Running",
            "podIP": f"127.1.0.{index + 1}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def headless(name: str = "job", namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": "None", "selector": {"job": "job"}, **spec},
    }


def test_peers_resolve_by_hostname_and_subdomain_through_a_headless_service() -> None:
    pods = [worker(0), worker(1), worker(2, ready=False)]
    text = hosts_file(pods[1], "127.1.0.2", pods, [headless()])
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "127.1.0.2\tjob-worker-1.job.ns.svc.cluster.local\tjob-worker-1" in lines
    names = "job-worker-0.job.ns.svc.cluster.local job-worker-0.job.ns.svc job-worker-0.job.ns"
    assert f"127.1.0.1\t{names} job-worker-0.job" in lines
    assert "127.1.0.1\tjob.ns.svc.cluster.local job.ns.svc job.ns job" in lines
    assert "job-worker-2" not in text  # not Ready: not published


def test_without_a_matching_headless_service_there_is_no_name() -> None:
    pods = [worker(0), worker(1)]
    other_namespace = headless(namespace="elsewhere")
    with_cluster_ip = headless()
    with_cluster_ip["spec"]["clusterIP"] = "10.0.0.12"
    text = hosts_file(pods[1], "127.1.0.2", pods, [other_namespace, with_cluster_ip])
    assert "job-worker-0" not in text
    starting = [worker(0, ready=False), worker(1)]
    published = hosts_file(starting[1], "127.1.0.2", starting, [headless()])
    assert "job-worker-0.job.ns.svc.cluster.local" not in published
    services = [headless(publishNotReadyAddresses=True)]
    published = hosts_file(starting[1], "127.1.0.2", starting, services)
    assert "job-worker-0.job.ns.svc.cluster.local" in published


def test_host_aliases_are_listed() -> None:
    pod = worker(0, hostAliases=[{"ip": "127.0.0.9", "hostnames": ["hub.local", "hub"]}])
    assert "127.0.0.9\thub.local\thub" in hosts_file(pod, "127.1.0.1", [], []).splitlines()


def test_hosts_are_rewritten_in_place_so_bind_mounts_see_the_change(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    assert write_in_place(str(path), "a long first version\n")
    inode = os.stat(path).st_ino
    assert not write_in_place(str(path), "a long first version\n")
    assert write_in_place(str(path), "short\n")
    assert path.read_text() == "short\n" and os.stat(path).st_ino == inode


def test_log_tails_take_lines_then_bytes() -> None:
    data = b"one\ntwo\nthree\n"
    assert tail_bytes(data, None, None) == data
    assert tail_bytes(data, 2, None) == b"two\nthree\n"
    assert tail_bytes(data, 0, None) == b""
    assert tail_bytes(data, 2, 5) == b"two\nt"
