"""A real node beside the local control plane: the kubelet and kube-proxy of the control
plane's release, containerd 2.x running Pods through runc, CNI's ``ptp`` plugin, and CoreDNS.

Everything the node does on the network happens inside a network namespace the node
creates (``kubetrain-<id>``): its address, the Pods' veths and routes, kube-proxy's
iptables rules and CoreDNS's listener. The host keeps no route, address or firewall rule
for the Pod, Service or node ranges; ``bridge listen`` carries the node's connections to
the API server on the host's loopback, and the API server reaches the kubelet and Pods only
through ``bridge egress``, which dials inside this namespace. ``stop`` deletes the
namespace (and with it every rule and route), unmounts what the node mounted, removes its
cgroups, and stops its processes by their PIDs.

The machines this project runs on have cgroup v1 (hybrid) and no systemd as PID 1: the
kubelet runs with ``failCgroupV1: false`` and the cgroupfs driver, under a cgroup root of
its own. GPU capacity is advertised by patching the Node's status (Kubernetes' documented
way to advertise an extended resource), not by a device plugin: there are no devices to
hand to containers, and a trainer that finds none trains on the CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetrain.localcluster import pki, sandbox
from kubetrain.localcluster.controlplane import (
    SERVICE_CIDR,
    ClusterError,
    ControlPlane,
    find_binary,
    repo_root,
    wait_ready,
)
from kubetrain.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from kubetrain.localcluster.processes import Process, pid_is, stop_pid, wait_until

NODE_NAME = "kubetrain-real"
NODE_ADDRESS = "10.200.0.1"
"""The node's address, on the loopback device of its namespace: the kubelet, CoreDNS and the
API server's in-namespace listener (the ``kubernetes`` Service's endpoint) bind it."""
POD_CIDR = "10.244.0.0/24"
NODE_LABEL = "kubetrain.io/local-node"
KUBELET_PORT = 10250
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
RUNC = "/usr/sbin/runc"
STATE = "realnode.json"
COMPONENTS = ("bridge", "containerd", "coredns", "kubelet", "kube-proxy")


class NodeError(ClusterError):
    """The real node could not be started."""


@dataclass(frozen=True)
class Layout:
    """Where one real node keeps its state; ``id`` ties the host-wide names to the cluster."""

    root: Path
    id: str

    @classmethod
    def of(cls, workdir: Path) -> Layout:
        digest = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:10]
        return cls(workdir.resolve() / "realnode", digest)

    @property
    def netns(self) -> str:
        return f"kubetrain-{self.id}"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def run(self) -> Path:
        """Sockets (short paths: a Unix socket path has 107 bytes at most)."""
        return Path(f"/run/kubetrain-{self.id}")

    @property
    def var(self) -> Path:
        """The kubelet's root (its sockets' paths must be short too; on disk, not tmpfs, as
        it holds the Pods' emptyDir volumes)."""
        return Path(f"/var/lib/kubetrain-{self.id}")

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def cgroup_root(self) -> str:
        return f"/kubetrain-{self.id}"


def _cgroup_mounts(*, unified: bool = False) -> list[Path]:
    """The mount points of this machine's cgroup v1 hierarchies (with ``unified``, also the
    v2 one a hybrid machine mounts beside them, where runc makes cgroups too)."""
    kinds = ("cgroup", "cgroup2") if unified else ("cgroup",)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if len(fields) == 2 and fields[1].split()[0] in kinds:
            mounts.append(Path(line.split()[4]))
    return mounts


def _run(*argv: str) -> str:
    """``argv``'s output; a NodeError naming the command and its complaint if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _in_netns(layout: Layout, *argv: str) -> list[str]:
    return ["nsenter", f"--net={layout.netns_path}", "--", *argv]


class RealNode:
    """The real node of the control plane ``cluster`` (started with ``node_address``)."""

    def __init__(self, cluster: ControlPlane, *, gpus: int = 2, tie_to_parent: bool = True) -> None:
        if cluster.node_address != NODE_ADDRESS or cluster.ports is None:
            raise NodeError(
                "a real node needs a running control plane started with "
                f"node_address={NODE_ADDRESS!r} (its API server then reaches the node only "
                "through its egress proxy)"
            )
        self.cluster = cluster
        self.layout = Layout.of(cluster.workdir)
        self.gpus = gpus
        self.tie_to_parent = tie_to_parent
        self.processes: list[Process] = []
        self.held_routes: list[str] = []

    @property
    def dir(self) -> Path:
        return self.layout.root

    @property
    def log_dir(self) -> Path:
        return self.cluster.log_dir

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        binaries = {n: find_binary(n) for n in ("containerd", "kubelet", "kube-proxy", "coredns")}
        find_binary("containerd-shim-runc-v2")
        cni = next((Path(d) for d in CNI_BIN_DIRS if (Path(d) / "ptp").exists()), None)
        if cni is None:
            raise NodeError(f"CNI plugins not found in {CNI_BIN_DIRS}: run `make system`")
        if not Path(RUNC).exists():
            raise NodeError(f"{RUNC} not found: run `make system`")
        self.stop_recorded(self.cluster.workdir)  # leftovers of a node that was not stopped
        deadline = time.monotonic() + timeout
        try:
            self._write_state()
            self._network()
            self._write_files(cni, binaries["containerd"].parent)
            for name in COMPONENTS:
                process = Process(
                    name, self._argv(name, binaries), self.log_dir / f"{name}.log",
                    runs=self._runs(name, binaries),
                )  # fmt: skip
                process.start(tie_to_parent=self.tie_to_parent)
                self.processes.append(process)
                self._write_state()
                if name == "containerd":
                    wait_ready(process, self.layout.containerd_socket.exists, deadline)
                    self.load_image(self._pause_archive())
            wait_ready(self._process("kubelet"), self._node_ready, deadline)
            self._authorize_apiserver()
            self._advertise_gpus()
            for process in self.processes:
                wait_ready(process, lambda: True, deadline)  # none has exited since
            self.cluster.node_routes.write_text(
                json.dumps([{"netns": self.layout.netns_path, "cidrs": self.cidrs}])
            )
        except BaseException:
            self.stop()
            raise

    @property
    def cidrs(self) -> list[str]:
        return [f"{NODE_ADDRESS}/32", POD_CIDR, SERVICE_CIDR]

    def stop(self) -> None:
        """Stop the node and leave the host as it was (see the module's docstring)."""
        self.stop_recorded(self.cluster.workdir)
        self.processes.clear()

    @classmethod
    def stop_recorded(cls, workdir: Path) -> list[str]:
        """Stop the real node recorded in ``workdir``: Pods' containers first (through the
        runtime, while it runs), then the processes, mounts, cgroups and the namespace."""
        layout = Layout.of(workdir)
        try:
            state = json.loads((layout.root / STATE).read_text())
        except FileNotFoundError:
            return []
        (workdir / "node-routes.json").unlink(missing_ok=True)
        by_name = {p["name"]: p for p in state.get("processes", [])}
        stopped = []
        containerd = by_name.pop("containerd", None)
        for name in ("kubelet", "kube-proxy", "coredns"):
            entry = by_name.pop(name, None)
            if entry and pid_is(entry["pid"], entry["executable"]):
                stop_pid(entry["pid"], entry["executable"])
                stopped.append(name)
        if containerd and pid_is(containerd["pid"], containerd["executable"]):
            _remove_pods(layout)
            stop_pid(containerd["pid"], containerd["executable"])
            stopped.append("containerd")
        _kill_shims(layout)
        for name, entry in by_name.items():
            if pid_is(entry["pid"], entry["executable"]):
                stop_pid(entry["pid"], entry["executable"])
                stopped.append(name)
        _unmount_under(layout.root, layout.run, layout.var)
        _remove_cgroups(layout.cgroup_root)
        if Path(layout.netns_path).exists():
            subprocess.run(["ip", "netns", "delete", layout.netns], check=False)
        for cidr in state.get("routes", []):
            subprocess.run(["ip", "route", "del", "unreachable", cidr], check=False)
        shutil.rmtree(layout.run, ignore_errors=True)
        shutil.rmtree(layout.var, ignore_errors=True)
        # The runtime's images (gigabytes each) go with the node; the archives stay cached.
        shutil.rmtree(layout.root / "containerd", ignore_errors=True)
        (layout.root / STATE).unlink(missing_ok=True)
        return stopped

    # -- images ------------------------------------------------------------------------

    def load_image(self, archive: Path) -> list[str]:
        """Import an OCI archive into the runtime's image store (no registry); the names
        it now holds from it: each ``repo:tag`` and its ``repo@sha256:...``, the reference
        a chart pinned by digest asks for."""
        result = subprocess.run(
            [*self._ctr(), "images", "import", "--local", "--discard-unpacked-layers",
             "--snapshotter=overlayfs", str(archive)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise NodeError(f"importing {archive}: {result.stderr.strip().splitlines()[-1]}")
        names = [
            line.split()[1]
            for line in result.stdout.splitlines()
            if line.startswith(("unpacking ", "saved "))
        ]
        digests = self._image_digests()
        for name in list(names):
            pinned = f"{name.rsplit(':', 1)[0]}@{digests[name]}"
            if pinned not in digests:
                subprocess.run([*self._ctr(), "images", "tag", name, pinned],
                               capture_output=True, check=True)  # fmt: skip
            names.append(pinned)
        return names

    def images(self) -> list[str]:
        return sorted(self._image_digests())

    def _image_digests(self) -> dict[str, str]:
        listed = subprocess.run(
            [*self._ctr(), "images", "list"], capture_output=True, text=True, check=True
        )
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        return {row[0]: row[2] for row in rows if len(row) > 2}

    def _ctr(self) -> list[str]:
        return [str(find_binary("ctr")), f"--address={self.layout.containerd_socket}",
                "--namespace=k8s.io"]  # fmt: skip

    def local_volumes(self, count: int, size: str = "20Gi", *, default: bool = True) -> str:
        """``count`` hostPath PersistentVolumes on this node (static local volumes, as a
        platform without a provisioner offers them) of a StorageClass of their own, the
        cluster's default with ``default``; returns the class's name."""
        name = "kubetrain-real-local"
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
        objects: list[dict[str, Any]] = [
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": name, "annotations": annotations},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Retain",
            }
        ]
        on_node = {
            "required": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": NODE_LABEL, "operator": "In", "values": ["real"]}
                        ]
                    }
                ]
            }
        }
        for i in range(count):
            path = self.dir / "volumes" / f"pv-{i}"
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o1777)  # any Pod's user may write, as on a fresh disk with fsGroup
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": f"real-local-{i}", "labels": {NODE_LABEL: "real"}},
                    "spec": {
                        "capacity": {"storage": size},
                        "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": name,
                        "hostPath": {"path": str(path), "type": "Directory"},
                        "nodeAffinity": on_node,
                    },
                }
            )
        manifest = self.dir / "local-volumes.json"
        manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        self._kubectl("apply", "-f", str(manifest))
        return name

    def _pause_archive(self) -> Path:
        return sandbox.archive(self.dir / "images")

    # -- configuration -----------------------------------------------------------------

    def _network(self) -> None:
        ns = self.layout
        _run("ip", "netns", "add", ns.netns)
        inside = ["ip", "netns", "exec", ns.netns]
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run(*inside, "ip", "addr", "add", f"{NODE_ADDRESS}/32", "dev", "lo")
        # Pods reach each other and Services through the namespace's own routing table;
        # the kubernetes Service's endpoint is the bridge on NODE_ADDRESS.
        _run(*inside, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        self._hold_ranges()

    def _hold_ranges(self) -> None:
        """Make the node's ranges unreachable from the host while it runs, so that no
        packet for a Pod, Service or the node's address can follow the host's default route
        off this machine. A range the host's own network uses is refused, never taken."""
        held = []
        for cidr in self.cidrs:
            covering = json.loads(_run("ip", "-j", "route", "show", "to", "match", cidr) or "[]")
            inside = json.loads(_run("ip", "-j", "route", "show", "to", "root", cidr) or "[]")
            if any(r.get("type") == "unreachable" and r["dst"] == cidr for r in inside):
                continue  # another local real node holds it already
            taken = [r for r in covering + inside if r["dst"] != "default"]
            if taken:
                raise NodeError(
                    f"the real node's range {cidr} overlaps this host's route "
                    f"{taken[0]['dst']} (dev {taken[0].get('dev', '?')}): not started"
                )
            _run("ip", "route", "add", "unreachable", cidr)
            held.append(cidr)
            self.held_routes = held
            self._write_state()

    def _write_files(self, cni_bin: Path, bin_dir: Path) -> None:
        d, ns, cluster = self.dir, self.layout, self.cluster
        for sub in ("cni/net.d", "cni/ipam", "containerd", "pki"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        ns.run.mkdir(parents=True, exist_ok=True)
        (ns.var / "kubelet").mkdir(parents=True, exist_ok=True)
        for hierarchy in _cgroup_mounts():
            path = hierarchy / ns.cgroup_root.lstrip("/")
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists():
                    (path / name).write_text((hierarchy / name).read_text())
        ca = pki.KeyPair(
            (cluster.pki_dir / "ca.crt").read_bytes(), (cluster.pki_dir / "ca.key").read_bytes()
        )
        server = f"https://{NODE_ADDRESS}:{cluster.ports.apiserver}"  # type: ignore[union-attr]
        users = {
            "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
            "kube-proxy": ("system:kube-proxy", ()),
            "coredns": ("kubetrain-local-coredns", ("system:masters",)),
        }
        for stem, (user, groups) in users.items():
            cert = pki.issue(ca, user, organizations=groups, client=True)
            write_kubeconfig(
                d / f"{stem}.kubeconfig", build_kubeconfig(server, ca.cert_pem, cert, user=user)
            )
        pki.issue(
            ca, NODE_NAME, dns_names=(NODE_NAME,), ip_addresses=(NODE_ADDRESS,), server=True
        ).write(d / "pki", "kubelet")
        (d / "pki" / "ca.crt").write_bytes(ca.cert_pem)
        (d / "resolv.conf").write_text("")  # Pods inherit no search path or server of the host
        cni = {
            "cniVersion": "1.0.0",
            "name": "kubetrain",
            "plugins": [
                {
                    "type": "ptp",
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(d / "cni" / "ipam"),
                    },
                }
            ],
        }
        (d / "cni/net.d/10-kubetrain.conflist").write_text(json.dumps(cni, indent=2))
        (d / "containerd.toml").write_text(self._containerd_config(cni_bin, bin_dir))
        (d / "kubelet.yaml").write_text(json.dumps(self._kubelet_config(), indent=2))
        (d / "kube-proxy.yaml").write_text(json.dumps(self._proxy_config(), indent=2))
        (d / "Corefile").write_text(
            f".:53 {{\n  bind {NODE_ADDRESS}\n  errors\n"
            f"  kubernetes cluster.local in-addr.arpa {{\n"
            f"    kubeconfig {d / 'coredns.kubeconfig'}\n  }}\n  cache 5\n}}\n"
        )

    def _containerd_config(self, cni_bin: Path, bin_dir: Path) -> str:
        d, ns = self.dir, self.layout
        return f"""version = 3
root = "{d / "containerd"}"
state = "{ns.run / "state"}"
[grpc]
  address = "{ns.containerd_socket}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  discard_unpacked_layers = true
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox.image()}"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # Root here lacks CAP_SYS_RESOURCE: an OOM score below containerd's own (the kubelet asks
  # -998 for sandboxes) is raised to it instead of failing runc.
  restrict_oom_score_adj = true
  # Pods' network namespaces are mounted under the node's state, not the host's /run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{d / "cni/net.d"}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""

    def _kubelet_config(self) -> dict[str, Any]:
        d, ns = self.dir, self.layout
        small = "1Gi"
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_ADDRESS,
            "port": KUBELET_PORT,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(d / "pki/kubelet.crt"),
            "tlsPrivateKeyFile": str(d / "pki/kubelet.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(d / "pki/ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            # cgroup v1 (hybrid) without systemd: the kubelet must be told to accept v1.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": ns.cgroup_root,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{ns.containerd_socket}",
            "clusterDNS": [NODE_ADDRESS],
            "clusterDomain": "cluster.local",
            "resolvConf": str(d / "resolv.conf"),
            # This machine's disk is shared with the image builds: evict on a nearly full
            # disk only, and never collect images the tests loaded.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": small,
                "imagefs.available": small,
                "nodefs.inodesFree": "1%",
                "imagefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "maxPods": 40,
            "nodeStatusUpdateFrequency": "4s",
            "containerLogMaxSize": "10Mi",
            "containerLogMaxFiles": 3,
            "makeIPTablesUtilChains": True,
        }

    def _proxy_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.dir / "kube-proxy.kubeconfig")},
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_ADDRESS,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Leave the machine-wide conntrack table as it is.
            "conntrack": {"maxPerCore": 0, "min": 0},
            "iptables": {"localhostNodePorts": False},
        }

    def _argv(self, name: str, binaries: dict[str, Path]) -> list[str]:
        d, ns, port = self.dir, self.layout, self.cluster.ports.apiserver  # type: ignore[union-attr]
        if name == "bridge":
            return [
                sys.executable, "-m", "kubetrain.localcluster.bridge", "listen",
                f"--netns={ns.netns_path}",
                f"--listen=0.0.0.0:{port}", f"--to=127.0.0.1:{port}",
            ]  # fmt: skip
        if name == "containerd":
            return _in_netns(ns, str(binaries["containerd"]), f"--config={d / 'containerd.toml'}")
        if name == "coredns":
            return _in_netns(ns, str(binaries["coredns"]), "-conf", str(d / "Corefile"))
        if name == "kubelet":
            return _in_netns(
                ns, str(binaries["kubelet"]),
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={ns.var / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_ADDRESS}",
                f"--node-labels={NODE_LABEL}=real",
                "--v=1",
            )  # fmt: skip
        if name == "kube-proxy":
            return _in_netns(ns, str(binaries["kube-proxy"]), f"--config={d / 'kube-proxy.yaml'}")
        raise ValueError(name)

    def _runs(self, name: str, binaries: dict[str, Path]) -> str | None:
        """nsenter hands its PID over to the component (what its cmdline then shows)."""
        return None if name == "bridge" else str(binaries[name])

    # -- readiness ---------------------------------------------------------------------

    def _kubectl(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [str(find_binary("kubectl")), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _node_ready(self) -> bool:
        out = self._kubectl(
            "get", "node", NODE_NAME, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False,
        )  # fmt: skip
        return out.strip() == "True"

    def _authorize_apiserver(self) -> None:
        """Let the API server's kubelet client use the kubelet's API (logs, exec, port-forward),
        as kubeadm does: the kubelet authorizes its callers through the API server."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubetrain-local:apiserver-kubelet-client"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:kubelet-api-admin",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": "kube-apiserver-kubelet-client",
                }
            ],
        }
        path = self.dir / "apiserver-kubelet-client.json"
        path.write_text(json.dumps(binding))
        self._kubectl("apply", "-f", str(path))

    def _advertise_gpus(self) -> None:
        """``nvidia.com/gpu`` capacity on the Node's status, as Kubernetes documents for an
        extended resource without a device plugin; the kubelet keeps it in allocatable."""
        patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(self.gpus)}]
        self._kubectl(
            "patch", "node", NODE_NAME, "--subresource=status", "--type=json",
            f"--patch={json.dumps(patch)}",
        )  # fmt: skip
        wait_until(
            lambda: self._kubectl(
                "get", "node", NODE_NAME, "-o",
                r"jsonpath={.status.allocatable.nvidia\.com/gpu}", check=False,
            ).strip() == str(self.gpus),
            30,
        )  # fmt: skip

    def _process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def _write_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {
            "netns": self.layout.netns,
            "routes": self.held_routes,
            "processes": [
                {"name": p.name, "pid": p.pid, "executable": p.executable, "log": str(p.log)}
                for p in self.processes
            ],
        }
        (self.dir / STATE).write_text(json.dumps(state, indent=2))


# -- teardown helpers ----------------------------------------------------------------------


def _remove_pods(layout: Layout) -> None:
    """Stop and remove every Pod sandbox through the runtime's CRI (crictl-free: ctr tasks)."""
    try:
        ctr = [str(find_binary("ctr")), f"--address={layout.containerd_socket}", "-n", "k8s.io"]
    except ClusterError:
        return
    listed = subprocess.run(
        [*ctr, "tasks", "list", "--quiet"], capture_output=True, text=True, check=False
    )
    for task in listed.stdout.split():
        subprocess.run([*ctr, "tasks", "kill", "--signal=SIGKILL", task], check=False,
                       capture_output=True)  # fmt: skip
    for task in listed.stdout.split():
        subprocess.run([*ctr, "tasks", "delete", "--force", task], check=False,
                       capture_output=True)  # fmt: skip


def _kill_shims(layout: Layout) -> None:
    """containerd's shims outlive it by design; the node's are those whose argv names its
    socket (matched exactly in their own cmdline, never by a process name)."""
    marker = str(layout.containerd_socket).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and marker in argv:
            stop_pid(int(proc.name), argv[0].decode(), grace_seconds=5)


def _unmount_under(*roots: Path) -> None:
    prefixes = [str(r.resolve()) + "/" for r in roots]
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if any(point.startswith(p) or point + "/" == p for p in prefixes):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove_cgroups(root: str) -> None:
    """Kill what is left in the node's cgroups (a container whose shim was lost: its PIDs
    are the node's by where they run), then remove them, deepest first."""
    for hierarchy in _cgroup_mounts(unified=True):
        top = hierarchy / root.lstrip("/")
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        walked = sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True)
        for dirpath, _, _ in walked:
            for _ in range(50):  # a killed task leaves its cgroup a moment later
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def default_archives() -> dict[str, Path]:
    """The image archives ``make images`` recorded in build/images.json, by image name."""
    path = repo_root() / "build" / "images.json"
    try:
        built = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {name: Path(entry["archive"]) for name, entry in built.items()}
