"""The operator image, run as the chart's own Pod: installed with Helm on the local control
plane, the Deployment's Pod (which no kubelet runs here) is started by podman from the built
image, with that Pod's user, read-only root, volumes, ServiceAccount token and env. It wins
its Lease, labels its Pod as the report channel's endpoint and answers its liveness probe."""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.images.containers import PodContainer
from tests.integration.test_chart import Tools
from tests.polling import eventually

from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "kubetrain-system"
RELEASE = "kubetrain"


def on_loopback(args: list[str], ports: dict[str, int]) -> list[str]:
    """The chart's args with every listener on a free loopback port: the container shares the
    host's network here (it must reach the API server on loopback), not a Pod network."""
    loopback = {
        "--metrics-port": str(ports["metrics"]),
        "--liveness": f"http://127.0.0.1:{ports['health']}/healthz",
        "--report-channel-listen": f"127.0.0.1:{ports['reports']}",
    }
    rewritten = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        rewritten.append(f"{flag}={loopback[flag]}" if flag in loopback else arg)
    return rewritten


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o644)
    folder.chmod(0o755)
    return folder


def test_the_operator_image_runs_the_charts_pod(
    built: dict[str, dict[str, Any]],
    cluster: ControlPlane,
    core: client.CoreV1Api,
    tmp_path: Path,
    containers: list[PodContainer],
) -> None:
    image = built["operator"]
    repository, tag = image["ref"].rsplit(":", 1)
    Tools(cluster, tmp_path / "helm").helm("install", RELEASE, str(ROOT / "charts" / "kubetrain"),
         "--namespace", NAMESPACE, "--create-namespace",
         "--set", f"image.repository={repository}", "--set", f"image.tag={tag}")  # fmt: skip

    selector = "app.kubernetes.io/name=kubetrain"
    pod = eventually(
        lambda: core.list_namespaced_pod(NAMESPACE, label_selector=selector).items,
        timeout=60, what="the Deployment's Pod",
    )[0]  # fmt: skip
    manifest = client.ApiClient().sanitize_for_serialization(pod)
    [container] = manifest["spec"]["containers"]
    assert container["image"] == image["ref"]

    # What the kubelet would hand the container: the ConfigMap, the TLS Secret, the
    # ServiceAccount's token (the projected kube-api-access volume) and the service env.
    volumes: dict[str, Path] = {}
    for volume in manifest["spec"]["volumes"]:
        name = volume["name"]
        if "configMap" in volume:
            data = core.read_namespaced_config_map(volume["configMap"]["name"], NAMESPACE).data
            volumes[name] = write_files(tmp_path / name, {k: v.encode() for k, v in data.items()})
        elif "secret" in volume:
            data = core.read_namespaced_secret(volume["secret"]["secretName"], NAMESPACE).data
            volumes[name] = write_files(
                tmp_path / name, {k: base64.b64decode(v) for k, v in data.items()}
            )
        elif "projected" in volume:
            token = core.create_namespaced_service_account_token(
                manifest["spec"]["serviceAccountName"], NAMESPACE,
                client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
            ).status.token  # fmt: skip
            kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
            ca = base64.b64decode(
                kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
            )
            volumes[name] = write_files(
                tmp_path / name,
                {"token": token.encode(), "ca.crt": ca, "namespace": NAMESPACE.encode()},
            )
    host, port = cluster.server.removeprefix("https://").rsplit(":", 1)
    ports = dict(zip(("metrics", "health", "reports"), free_ports(3), strict=True))
    operator = PodContainer(
        manifest, image["tag"], tmp_path, volumes=volumes, network="host",
        env={"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
        args=on_loopback(container["args"], ports),
    )  # fmt: skip
    containers.append(operator.start())

    coordination = client.CoordinationV1Api(core.api_client)

    def lease_holder() -> str | None:
        try:
            holder: str | None = coordination.read_namespaced_lease(
                RELEASE, NAMESPACE
            ).spec.holder_identity
        except ApiException as err:
            if err.status != 404:
                raise
            return None
        return holder

    holder = eventually(
        lease_holder,
        timeout=90, what=f"the operator to win its Lease; its log:\n{operator.logs()}",
    )  # fmt: skip
    assert holder.startswith(manifest["metadata"]["name"])  # the container's hostname is the Pod's
    eventually(
        lambda: (core.read_namespaced_pod(pod.metadata.name, NAMESPACE).metadata.labels or {}).get(
            "kubetrain.io/report-channel"
        ) == "serving",
        timeout=30, what="the leader to label its Pod as the report channel's endpoint",
    )  # fmt: skip

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{ports['health']}/healthz", timeout=5
            ) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        eventually(healthy, timeout=30, what="the liveness probe to answer 200")
    except AssertionError as err:
        raise AssertionError(f"{err}; the operator's log:\n{operator.logs()[-4000:]}") from None
    assert operator.running()

    # A rollout's SIGTERM: the operator exits by itself within the chart's grace period.
    code = operator.stop()
    assert code in (0, 143), f"exit code {code}; log:\n{operator.logs()}"
