"""The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubetrain.localcluster import pki
from kubetrain.localcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from kubetrain.localcluster.ports import LOOPBACK, free_ports
from kubetrain.localcluster.processes import Process, stop_pid, tail

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.0.0.0/24"
"""Allocated in etcd only, unless a real node (``realnode``) serves it inside its namespace."""
KUBERNETES_SERVICE_IP = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
EGRESS = "egress"
STATE_FILE = "state.json"


class ClusterError(RuntimeError):
    """The local control plane could not be started or reached."""


def wait_ready(process: Process, probe: Callable[[], bool], deadline: float) -> None:
    """Poll ``probe`` until it holds; a ClusterError naming ``process`` and the tail of its
    log if it exits first or ``deadline`` (monotonic) passes."""
    while True:
        code = process.exit_code()
        if code is not None:
            raise ClusterError(
                f"{process.name} exited with code {code} before it became ready; "
                f"last lines of {process.log}:\n{tail(process.log)}"
            )
        if probe():
            return
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"{process.name} did not become ready in time; "
                f"last lines of {process.log}:\n{tail(process.log)}"
            )
        time.sleep(0.1)


def repo_root() -> Path:
    """The checkout this package is installed from (editable installs)."""
    return Path(__file__).resolve().parents[3]


def find_binary(name: str, bin_dir: Path | None = None) -> Path:
    """Locate a pinned binary in ``bin_dir``, ``$KUBETRAIN_BIN_DIR`` or the checkout's bin/."""
    if bin_dir is not None:
        candidates = [bin_dir]
    else:
        env = os.environ.get("KUBETRAIN_BIN_DIR")
        candidates = [Path(env)] if env else [repo_root() / "bin"]
    for directory in candidates:
        path = (directory / name).resolve()
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = ", ".join(str(c) for c in candidates)
    raise ClusterError(f"{name} not found in {where}: run `make setup` to build it")


@dataclass(frozen=True)
class Ports:
    """The loopback ports one control plane listens on."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @classmethod
    def allocate(cls) -> Ports:
        return cls(*free_ports(5))


class ControlPlane:
    """A real Kubernetes control plane as processes on loopback, rooted in ``workdir``.

    ``start`` generates fresh PKI, picks free ports, starts every component in order and
    waits for each to be ready; on any failure it stops what it started and raises a
    ClusterError naming the component, with the tail of its log.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        bin_dir: Path | None = None,
        tie_to_parent: bool = True,
        node_address: str | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir
        self.tie_to_parent = tie_to_parent
        self.node_address = node_address
        """For a real node (``realnode``): the address inside its namespace where the API
        server is reached (advertised for the ``kubernetes`` Service). With it, the API
        server's traffic to nodes and Pods goes through ``bridge egress``, which dials only
        loopback and real nodes' namespaces."""
        self.processes: list[Process] = []
        self.ports: Ports | None = None

    @property
    def egress(self) -> bool:
        return self.node_address is not None

    # -- paths -------------------------------------------------------------------------

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user in group system:masters)."""
        return self.workdir / "kubeconfig"

    @property
    def egress_socket(self) -> Path:
        return self.workdir / "egress.sock"

    @property
    def node_routes(self) -> Path:
        """The ranges real nodes serve inside their namespaces (read by ``bridge egress``)."""
        return self.workdir / "node-routes.json"

    @property
    def server(self) -> str:
        if self.ports is None:
            raise ClusterError("the control plane has not been started")
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        binaries = {name: find_binary(name, self.bin_dir) for name in COMPONENTS}
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.pki_dir.mkdir(parents=True)
        self.ports = Ports.allocate()
        self._write_pki()
        deadline = time.monotonic() + timeout
        names = [EGRESS, *COMPONENTS] if self.egress else list(COMPONENTS)
        try:
            for name in names:
                argv = self._egress_argv() if name == EGRESS else self._argv(name, binaries[name])
                process = Process(name, argv, self.log_dir / f"{name}.log")
                process.start(tie_to_parent=self.tie_to_parent)
                self.processes.append(process)
                self._save_state()
                self._wait_ready(process, self._probe(name), deadline)
            self._wait_ready(
                self._process("kube-controller-manager"), self._controllers_running, deadline
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component, newest first, by its own PID."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def stop_recorded(cls, workdir: Path) -> list[str]:
        """Stop a control plane started by another process (``make cluster-down``).

        Reads the PIDs recorded in ``workdir``; a PID is signalled only while it still
        runs the binary that was started, so a reused PID is never hit. Returns the names
        of the components that were stopped.
        """
        state_path = workdir / STATE_FILE
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            return []
        stopped = []
        for entry in reversed(state["processes"]):
            stop_pid(entry["pid"], entry["executable"])
            stopped.append(entry["name"])
        state_path.unlink(missing_ok=True)
        return stopped

    # -- configuration -----------------------------------------------------------------

    def _write_pki(self) -> None:
        d = self.pki_dir
        ca = pki.new_ca()
        ca.write(d, "ca")
        pki.issue(
            ca,
            "kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=(LOOPBACK, KUBERNETES_SERVICE_IP, *filter(None, [self.node_address])),
            server=True,
        ).write(d, "apiserver")
        for stem, common_name in (
            ("cm-serving", "kube-controller-manager"),
            ("scheduler-serving", "kube-scheduler"),
        ):
            pki.issue(
                ca, common_name, dns_names=("localhost",), ip_addresses=(LOOPBACK,), server=True
            ).write(d, stem)
        sa_key, sa_pub = pki.new_signing_key()
        (d / "sa.key").write_bytes(sa_key)
        (d / "sa.pub").write_bytes(sa_pub)
        # The API server's identity towards node agents (for `kubectl logs`).
        pki.issue(ca, "kube-apiserver-kubelet-client", client=True).write(
            d, "apiserver-kubelet-client"
        )
        clients = {
            "admin": ("kubetrain-admin", ("system:masters",)),
            "controller-manager": ("system:kube-controller-manager", ()),
            "scheduler": ("system:kube-scheduler", ()),
        }
        for stem, (user, groups) in clients.items():
            cert = pki.issue(ca, user, organizations=groups, client=True)
            cert.write(d, stem)
            path = self.kubeconfig if stem == "admin" else self.workdir / f"{stem}.kubeconfig"
            write_kubeconfig(path, build_kubeconfig(self.server, ca.cert_pem, cert, user=user))

    def _argv(self, name: str, binary: Path) -> list[str]:
        assert self.ports is not None
        p, d, w = self.ports, self.pki_dir, self.workdir
        etcd_url = f"http://{LOOPBACK}:{p.etcd_client}"
        if name == "etcd":
            peer = f"http://{LOOPBACK}:{p.etcd_peer}"
            return [
                str(binary),
                f"--data-dir={w / 'etcd-data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]
        if name == "kube-apiserver":
            return [
                str(binary),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={self.node_address or LOOPBACK}",
                f"--secure-port={p.apiserver}",
                f"--cert-dir={d}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={d / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={d / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=false",
                "--profiling=false",
                "--v=1",
                *self._egress_flags(),
            ]
        common = [
            f"--bind-address={LOOPBACK}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]
        if name == "kube-controller-manager":
            kubeconfig = w / "controller-manager.kubeconfig"
            return [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--secure-port={p.controller_manager}",
                f"--tls-cert-file={d / 'cm-serving.crt'}",
                f"--tls-private-key-file={d / 'cm-serving.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--cluster-signing-cert-file={d / 'ca.crt'}",
                f"--cluster-signing-key-file={d / 'ca.key'}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                # A node that stops reporting is NotReady after 20 s (default 50 s), so
                # node-loss handling can be seen in a test; the agents renew every 4 s.
                "--node-monitor-grace-period=20s",
                "--node-monitor-period=2s",
                *common,
            ]
        if name == "kube-scheduler":
            kubeconfig = w / "scheduler.kubeconfig"
            return [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--secure-port={p.scheduler}",
                f"--tls-cert-file={d / 'scheduler-serving.crt'}",
                f"--tls-private-key-file={d / 'scheduler-serving.key'}",
                f"--client-ca-file={d / 'ca.crt'}",
                *common,
            ]
        raise ValueError(f"unknown component {name}")

    def _egress_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kubetrain.localcluster.bridge",
            "egress",
            f"--socket={self.egress_socket}",
            f"--routes={self.node_routes}",
        ]

    def _egress_flags(self) -> list[str]:
        if not self.egress:
            return []
        path = self.workdir / "egress-selector.yaml"
        selection = {
            "name": "cluster",
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": str(self.egress_socket)}},
            },
        }
        config = {
            "apiVersion": "apiserver.k8s.io/v1beta1",
            "kind": "EgressSelectorConfiguration",
            "egressSelections": [selection],
        }
        path.write_text(json.dumps(config, indent=2))
        return [f"--egress-selector-config-file={path}"]

    # -- readiness ---------------------------------------------------------------------

    def _ssl_context(self, client: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        if client:
            context.load_cert_chain(self.pki_dir / "admin.crt", self.pki_dir / "admin.key")
        return context

    def _get(self, url: str, *, client: bool = False) -> tuple[int, bytes]:
        context = self._ssl_context(client) if url.startswith("https") else None
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return 0, b""

    def _probe(self, name: str) -> Callable[[], bool]:
        assert self.ports is not None
        p = self.ports
        if name == EGRESS:
            return self.egress_socket.exists
        urls = {
            "etcd": f"http://{LOOPBACK}:{p.etcd_client}/health",
            "kube-apiserver": f"{self.server}/readyz",
            "kube-controller-manager": f"https://{LOOPBACK}:{p.controller_manager}/healthz",
            "kube-scheduler": f"https://{LOOPBACK}:{p.scheduler}/healthz",
        }
        url, client = urls[name], name == "kube-apiserver"
        return lambda: self._get(url, client=client)[0] == 200

    def _controllers_running(self) -> bool:
        """The service-account controller has made the ``default`` ServiceAccount."""
        path = "/api/v1/namespaces/default/serviceaccounts/default"
        return self._get(self.server + path, client=True)[0] == 200

    def _wait_ready(self, process: Process, probe: Callable[[], bool], deadline: float) -> None:
        wait_ready(process, probe, deadline)

    def _process(self, name: str) -> Process:
        return next(p for p in self.processes if p.name == name)

    def _save_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "processes": [
                {"name": p.name, "pid": p.pid, "executable": p.argv[0], "log": str(p.log)}
                for p in self.processes
            ],
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))
