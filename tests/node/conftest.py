"""The real node's tier: the chart as shipped, on a kubelet and containerd.

One control plane and one real node (``kubetrain.localcluster.realnode``) for the session,
with the images of ``make images`` loaded into the runtime from their archives (no
registry), static local volumes for the jobs' claims, and the chart installed with Helm
from ``charts/kubetrain``, its operator image pinned by digest as the build printed it.
Nothing here is a stand-in: Pods run in runc from the images, logs rotate, DNS and Services
are CoreDNS and kube-proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config

from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.realnode import NODE_ADDRESS, RealNode
from tests.integration.test_chart import Tools

ROOT = Path(__file__).resolve().parents[2]
RELEASE = "kubetrain"
SYSTEM = "kubetrain-system"
T = TypeVar("T")


def built_images() -> dict[str, Any]:
    path = ROOT / "build" / "images.json"
    if not path.exists():
        pytest.fail("the real node's tier runs the built images: run `make images` first")
    images: dict[str, Any] = json.loads(path.read_text())
    return images


WAITING_GRACE_SECONDS = 40
"""The shipped install's containerWaitingGraceSeconds (the chart's default is 300)."""


def until(probe: Callable[[], T | None], what: str, timeout: float = 300.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@dataclass
class RealCluster:
    plane: ControlPlane
    node: RealNode
    api: client.ApiClient
    tools: Tools
    images: dict[str, Any]
    loaded: dict[str, float]
    """Seconds each image took to load into the runtime."""

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root (network namespaces, mounts, cgroups)")
    images = built_images()
    plane = ControlPlane(tmp_path_factory.mktemp("real"), node_address=NODE_ADDRESS)
    plane.start()
    node = RealNode(plane)
    try:
        node.start()
        loaded: dict[str, float] = {}

        def load(name: str) -> None:
            started = time.monotonic()
            node.load_image(Path(images[name]["archive"]))
            loaded[name] = time.monotonic() - started

        # A user's own image, built here (hack/build-custom-example.sh), beside the project's.
        archive = plane.workdir / "custom-example.oci.tar"
        built = subprocess.run(
            ["bash", str(ROOT / "hack" / "build-custom-example.sh"), "--archive", str(archive)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        images = dict(images, custom={"archive": str(archive), "tag": built.stdout.split()[-1]})
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(load, images))
        node.local_volumes(12)
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        yield RealCluster(plane, node, api, Tools(plane, tmp_path_factory.mktemp("helm")),
                          images, loaded)  # fmt: skip
    finally:
        node.stop()
        plane.stop()


@dataclass
class Release:
    cluster: RealCluster
    namespace: str
    values: list[str]

    def operator_pods(self) -> list[client.V1Pod]:
        pods = self.cluster.core.list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=operator"
        ).items
        return [p for p in pods if p.metadata.deletion_timestamp is None]

    def ready_pods(self) -> list[client.V1Pod]:
        return [
            p
            for p in self.operator_pods()
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def leader(self) -> client.V1Pod | None:
        """The operator Pod that holds the Lease, is Ready and carries the serving label."""
        leases = client.CoordinationV1Api(self.cluster.api).list_namespaced_lease(self.namespace)
        holders = {lease.spec.holder_identity for lease in leases.items if lease.spec}
        for pod in self.operator_pods():
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            serving = (pod.metadata.labels or {}).get("kubetrain.io/report-channel") == "serving"
            if ready and serving and any(h and pod.metadata.name in h for h in holders):
                return pod
        return None


@pytest.fixture(scope="session")
def shipped(real_cluster: RealCluster) -> Release:
    """The chart installed as a user installs it, pinned to the built operator image."""
    operator = real_cluster.images["operator"]
    values = [
        "--set", "replicas=2",  # a leader and a standby: failover is the standby's takeover
        "--set", f"operator.containerWaitingGraceSeconds={WAITING_GRACE_SECONDS}",
        "--set", f"image.digest={operator['digest']}",
        "--set", "trainer.llmImageDigest=" + real_cluster.images["trainer-lora"]["digest"],
        "--set", "trainer.visionImageDigest=" + real_cluster.images["trainer-vision"]["digest"],
    ]  # fmt: skip
    real_cluster.tools.helm(
        "install", RELEASE, str(ROOT / "charts" / "kubetrain"), "--namespace", SYSTEM,
        "--create-namespace", "--wait", "--timeout", "5m", *values,
    )  # fmt: skip
    release = Release(real_cluster, SYSTEM, values)
    until(release.leader, "the operator Pod to lead and serve the report channel")
    until(lambda: len(release.ready_pods()) == 2, "the standby operator Pod to be Ready")
    return release


@pytest.fixture
def jobs(real_cluster: RealCluster, shipped: Release, request: pytest.FixtureRequest) -> str:
    """A namespace for one test's jobs (kept: the session's cluster goes at its end)."""
    name = f"jobs-{request.node.name.split('_')[2][:20]}-{uuid.uuid4().hex[:5]}"
    real_cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name
