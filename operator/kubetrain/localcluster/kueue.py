"""Kueue on the local control plane, started on demand (``make cluster-up KUEUE=1``, the
tests' ``kueue`` fixture).

The manager is the binary ``make setup`` builds from Kueue's Go module; its CRDs and
webhook manifests come from the same module version (``bin/kueue-manifests``). Everything
listens on loopback:

- the webhooks are registered with a ``url:`` client config (``https://127.0.0.1:<port>``,
  a certificate from the local cluster's CA), never through a Service;
- Kueue's internal certificate management is off. It then reads its serving certificates
  from fixed paths (``/etc/kueue/metrics/certs``, ``/visibility``), so it runs chrooted
  into a root of its own under the cluster's workdir, where those paths hold certificates
  issued here. Nothing is written to the machine's ``/etc``.

waitForPodsReady is on, as Kueue v0.19 has it by default and as clusters run it
(``WAIT_FOR_PODS_READY``): an admitted Workload whose controller does not mark it
``PodsReady`` in time is evicted, so a job that never reports its workers running shows in
the tests as an eviction.

Only the webhooks of Kueue's own resources (and of batch/v1 Jobs, the one job integration
enabled) are registered: a webhook with no handler behind it would refuse every object it
covers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kubetrain.api.base import GROUP, KIND, VERSION
from kubetrain.localcluster import pki
from kubetrain.localcluster.controlplane import ClusterError, ControlPlane, find_binary, repo_root
from kubetrain.localcluster.ports import LOOPBACK, free_ports
from kubetrain.localcluster.processes import Process, record_extra, running_extra, tail

NAMESPACE = "kueue-system"
WEBHOOK_CONFIGURATIONS = {
    "MutatingWebhookConfiguration": "kueue-mutating-webhook-configuration",
    "ValidatingWebhookConfiguration": "kueue-validating-webhook-configuration",
}
FRAMEWORKS = ("batch/job",)
"""Kueue's built-in job integrations enabled here (the benchmark's batch/v1 Jobs)."""
EXTERNAL_FRAMEWORK = f"{KIND}.{VERSION}.{GROUP}"
"""TrainingJobs admit themselves through Workloads they own (kubetrain's operator); Kueue
is told, so its Pod integration never takes their Pods for plain Pods."""
_GROUPS = {"kueue.x-k8s.io", "batch"}
WAIT_FOR_PODS_READY: dict[str, Any] = {
    # Admission -> every worker running takes about a second here (bench/bench_kueue.py:
    # 1.31 s; the fetch stage runs before admission): 30 s leaves a loaded CI run ample room,
    # and is shorter than the e2e quota test's first two jobs stay admitted (about 45 s), so
    # an operator that never marks PodsReady has them evicted while the test watches.
    # (Kueue's default is 30 minutes: room for image pulls and node scale-up.)
    "timeout": "30s",
    # After a worker fails the job's other workers stop with their grace period
    # (trainer.terminationGracePeriodSeconds, 120 s by default) before the next attempt
    # starts: the recovery timeout must outlast that, with room to start the new workers.
    "recoveryTimeout": "180s",
    # Admission is all or nothing already (the Workload holds every worker) and there is
    # one node: blocking the queue until each job runs would only serialize the tests.
    "blockAdmission": False,
    "requeuingStrategy": {
        # A Workload evicted for its pods is queued again behind those waiting since
        # (Kueue's default), after a backoff of 10 s, doubling to at most 5 minutes (Kueue:
        # 60 s to an hour, long for a test); no backoffLimitCount: requeued until it runs,
        # never deactivated (the operator shows deactivation only as a wait in the queue).
        "timestamp": "Eviction",
        "backoffBaseSeconds": 10,
        "backoffMaxSeconds": 300,
    },
}
"""Kueue's waitForPodsReady here (config.kueue.x-k8s.io/v1beta2 WaitForPodsReady: present is
on; Kueue v0.19 turns it on with a 30-minute timeout when the block is absent)."""


def manifests_dir(bin_dir: Path | None = None) -> Path:
    """``bin/kueue-manifests``: the CRDs and webhooks of the Kueue release in bin/."""
    path = find_binary("kueue", bin_dir).parent / "kueue-manifests"
    if not (path / "crd").is_dir():
        raise ClusterError(f"{path} has no Kueue CRDs: run `make setup` to build Kueue")
    return path


def configuration(health: int, metrics: int, webhook: int, visibility: int) -> dict[str, Any]:
    """Kueue's Configuration for the local cluster: loopback only, no leader election."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"{LOOPBACK}:{health}"},
        "metrics": {"bindAddress": f"{LOOPBACK}:{metrics}"},
        "webhook": {"host": LOOPBACK, "port": webhook, "certDir": "/webhook-certs"},
        "visibilityServer": {"bindAddress": LOOPBACK, "bindPort": visibility},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {
            "frameworks": list(FRAMEWORKS),
            "externalFrameworks": [EXTERNAL_FRAMEWORK],
        },
        "clientConnection": {"qps": 100, "burst": 200},
        "waitForPodsReady": WAIT_FOR_PODS_READY,
    }


def local_webhooks(manifest: str, port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, cut to the resources it serves here, each webhook
    pointed at ``https://127.0.0.1:<port><path>`` and trusting ``ca_pem``."""
    bundle = base64.b64encode(ca_pem).decode()
    out = []
    for doc in yaml.safe_load_all(manifest):
        if not doc or doc.get("kind") not in WEBHOOK_CONFIGURATIONS:
            continue
        kept = []
        for hook in doc.get("webhooks") or []:
            groups = {g for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if not groups or not groups <= _GROUPS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://{LOOPBACK}:{port}{path}", "caBundle": bundle}
            hook["timeoutSeconds"] = 10
            kept.append(hook)
        doc["metadata"] = {"name": WEBHOOK_CONFIGURATIONS[doc["kind"]]}
        doc["webhooks"] = kept
        out.append(doc)
    return out


RECORD = "kueue.json"
"""In a ``cluster-up`` workdir: where the recorded Kueue's visibility API listens."""


def priority_classes() -> list[dict[str, Any]]:
    """kubetrain's WorkloadPriorityClasses, as the chart makes them (kueue.priorityClasses)."""
    return [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
         "metadata": {"name": f"kubetrain-{name}"}, "value": value}
        for name, value in (("high", 1000), ("normal", 100), ("low", 10))
    ]  # fmt: skip


def start_recorded(cluster: ControlPlane, timeout: float) -> Kueue:
    """``make cluster-up KUEUE=1``: Kueue outliving this process (stopped by its recorded
    PID on ``cluster-down``), with the queues of examples/kueue/queues.yaml."""
    running = Kueue(cluster, tie_to_parent=False)
    running.start(timeout)
    queues = repo_root() / "examples" / "kueue" / "queues.yaml"
    running.kubectl("apply", "-f", str(queues))
    running.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(priority_classes()))
    record = {"visibilityUrl": running.visibility_url}
    (cluster.workdir / RECORD).write_text(json.dumps(record))
    return running


def recorded(workdir: Path) -> dict[str, str] | None:
    """What ``start_recorded`` wrote, while that Kueue still runs."""
    if not running_extra(workdir, "kueue"):
        return None
    try:
        return dict(json.loads((workdir / RECORD).read_text()))
    except FileNotFoundError:
        return None


class Kueue:
    """Kueue's manager for a running local ``ControlPlane``; ``start`` installs its CRDs,
    starts it chrooted and registers its webhooks once it serves them; ``stop`` removes the
    webhooks first (a webhook with nothing behind it would refuse Workloads), then stops
    it by its PID. Its CRDs (and the Workloads, queues and flavors) stay."""

    def __init__(
        self, cluster: ControlPlane, *, bin_dir: Path | None = None, tie_to_parent: bool = True
    ) -> None:
        self.cluster, self.bin_dir, self.tie_to_parent = cluster, bin_dir, tie_to_parent
        self.root = cluster.workdir / "kueue-root"
        self.log = cluster.log_dir / "kueue.log"
        self.process: Process | None = None
        self.health, self.metrics, self.webhook, self.visibility = free_ports(4)

    @property
    def visibility_url(self) -> str:
        """Kueue's visibility API server, for clients that cannot reach it through the API
        server's aggregation (an APIService needs a Service, which nothing here may use)."""
        return f"https://{LOOPBACK}:{self.visibility}"

    @property
    def ca_file(self) -> Path:
        return self.cluster.pki_dir / "ca.crt"

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        argv = [
            str(find_binary("kubectl", self.bin_dir)),
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            *args,
        ]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self, timeout: float = 120.0) -> None:
        binary = find_binary("kueue", self.bin_dir)
        manifests = manifests_dir(self.bin_dir)
        deadline = time.monotonic() + timeout
        self._install_crds(manifests, deadline)
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=yaml.safe_dump(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            ),
        )
        self._make_root(binary)
        argv = ["/kueue", "--config=/config/config.yaml", "--kubeconfig=/config/kubeconfig"]
        if os.geteuid() == 0:
            launcher = [shutil.which("chroot") or "/usr/sbin/chroot", str(self.root)]
        else:  # a user namespace of its own, in which it may chroot
            launcher = ["unshare", "--user", "--map-root-user", "chroot", str(self.root)]
        self.process = Process("kueue", launcher + argv, self.log, runs="/kueue")
        self.process.start(tie_to_parent=self.tie_to_parent)
        assert self.process.pid is not None
        if not self.tie_to_parent:
            record_extra(self.cluster.workdir, "kueue", self.process.pid, "/kueue")
        try:
            self._wait(self._ready, deadline, "did not become ready")
            webhooks = local_webhooks(
                (manifests / "webhooks.yaml").read_text(), self.webhook, self.ca_file.read_bytes()
            )
            self.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "-",
                stdin=yaml.safe_dump_all(webhooks),
            )
            self._wait(self._admits, deadline, "does not answer its webhooks")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for kind, name in WEBHOOK_CONFIGURATIONS.items():
            with contextlib.suppress(ClusterError):  # the control plane is already gone
                self.kubectl("delete", kind, name, "--ignore-not-found", "--wait=false")
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> Kueue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steps -------------------------------------------------------------------------

    def _install_crds(self, manifests: Path, deadline: float) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifests / "crd"))
        left = max(1, int(deadline - time.monotonic()))
        names = [
            f"crd/{yaml.safe_load(p.read_text())['metadata']['name']}"
            for p in sorted((manifests / "crd").glob("*.yaml"))
        ]
        self.kubectl("wait", "--for=condition=Established", f"--timeout={left}s", *names)

    def _make_root(self, binary: Path) -> None:
        """Kueue's own root: its binary, configuration, kubeconfig and certificates."""
        if self.root.exists():
            shutil.rmtree(self.root)
        ca = pki.KeyPair(
            (self.cluster.pki_dir / "ca.crt").read_bytes(),
            (self.cluster.pki_dir / "ca.key").read_bytes(),
        )
        serving = pki.issue(
            ca, "kueue", dns_names=("localhost",), ip_addresses=(LOOPBACK,), server=True
        )
        for where in ("etc/kueue/metrics/certs", "visibility", "webhook-certs"):
            directory = self.root / where
            directory.mkdir(parents=True)
            serving.write(directory, "tls")
        (self.root / "tmp").mkdir(mode=0o1777)
        config = self.root / "config"
        config.mkdir()
        shutil.copy(self.cluster.kubeconfig, config / "kubeconfig")  # credentials inline
        (config / "config.yaml").write_text(
            yaml.safe_dump(configuration(self.health, self.metrics, self.webhook, self.visibility))
        )
        try:
            os.link(binary, self.root / "kueue")
        except OSError:  # another filesystem
            shutil.copy2(binary, self.root / "kueue")

    def _ready(self) -> bool:
        try:
            url = f"http://{LOOPBACK}:{self.health}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _admits(self) -> bool:
        """Kueue's webhooks answer: a server-side dry run of a ResourceFlavor passes them."""
        flavor = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": "kubetrain-webhook-probe"},
        }
        try:
            self.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(flavor))
        except ClusterError:
            return False
        return True

    def _wait(self, probe: Any, deadline: float, what: str) -> None:
        assert self.process is not None
        while not probe():
            code = self.process.exit_code()
            if code is not None:
                raise ClusterError(
                    f"kueue exited with code {code}; last lines of {self.log}:\n{tail(self.log)}"
                )
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"kueue {what} in time; last lines of {self.log}:\n{tail(self.log)}"
                )
            time.sleep(0.2)
