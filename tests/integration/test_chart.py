"""The Helm chart: lint, server-side validation of its output, install, upgrade, uninstall.

Runs against a control plane of its own, so the chart installs its CRD and
PriorityClasses into a cluster that has none yet, as on a fresh real cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain.localcluster import ControlPlane, find_binary
from kubetrain.localcluster.kueue import manifests_dir
from kubetrain.operator.settings import Settings, load_settings
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetrain"
NS = "kubetrain-system"


def _ran(result: subprocess.CompletedProcess[str], check: bool) -> subprocess.CompletedProcess[str]:
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(result.args[3:])} failed:\n{result.stderr}")
    return result


class Tools:
    """helm and kubectl pointed at one cluster, with helm's state in a temp dir."""

    def __init__(self, plane: ControlPlane, home: Path) -> None:
        self.kubeconfig = str(plane.kubeconfig)
        self.env = dict(
            os.environ,
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(find_binary("helm")), "--kubeconfig", self.kubeconfig, *args]
        return _ran(
            subprocess.run(argv, check=False, capture_output=True, text=True, env=self.env), check
        )

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(find_binary("kubectl")), "--kubeconfig", self.kubeconfig, *args]
        return _ran(
            subprocess.run(argv, check=False, capture_output=True, text=True, input=stdin), check
        )

    def get(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    plane = ControlPlane(tmp_path_factory.mktemp("chart-cluster"))
    plane.start()
    try:
        yield Tools(plane, tmp_path_factory.mktemp("helm"))
    finally:
        plane.stop()


def test_the_chart_lints() -> None:
    lint = subprocess.run(
        [str(find_binary("helm")), "lint", str(CHART), "--kube-version", "1.36.3", "--strict"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_rendering_twice_gives_identical_manifests() -> None:
    """GitOps tools render the chart on every sync (no ``lookup``): nothing may differ, or
    each sync would change what runs (a new report channel CA broke running trainers)."""

    def render() -> str:
        return subprocess.run(
            [str(find_binary("helm")), "template", "t", str(CHART), "--kube-version", "1.36.3",
             "-n", "kubetrain-system", "--set", "replicas=2"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    first, second = render(), render()
    assert first == second
    kinds = {d["kind"] for d in yaml.safe_load_all(first) if d}
    assert "Secret" not in kinds  # the operator makes the channel's certificate itself


def test_bad_values_fail_before_anything_is_installed(tools: Tools) -> None:
    for setting, complaint in (
        ("replicas=0", "/replicas"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        (
            "gpuCatalogue.gpuTypes.mi300.pricePerHour=-1",
            "/gpuCatalogue/gpuTypes/mi300/pricePerHour",
        ),
        ("operator.unknownKnob=1", "unknownKnob"),
    ):
        result = tools.helm(
            "template", "t", str(CHART), "--kube-version", "1.36.3", "--set", setting, check=False
        )
        assert result.returncode != 0 and complaint in result.stderr, (setting, result.stderr)


@pytest.fixture
def without_crd(tools: Tools) -> Iterator[None]:
    """The module's control plane without the TrainingJob CRD, before and after the test:
    a test that installs it starts from nothing, whatever ran before it."""

    def gone() -> bool:
        found = tools.kubectl("get", "crd", "trainingjobs.kubetrain.io", check=False)
        return found.returncode != 0

    def remove() -> None:
        tools.kubectl("delete", "crd", "trainingjobs.kubetrain.io", "--ignore-not-found")
        eventually(gone, what="no TrainingJob CRD")

    remove()
    yield
    remove()


def test_every_rendered_object_passes_server_side_validation(
    tools: Tools, without_crd: None
) -> None:
    tools.kubectl("create", "namespace", "render-check")
    digest = "sha256:" + "0" * 64
    pinned = ["--set", f"image.digest={digest}", "--set", f"trainer.llmImageDigest={digest}"]
    for values in ([], ["--set", "replicas=2"], pinned):
        rendered = tools.helm(
            "template", "t", str(CHART), "--kube-version", "1.36.3", "-n", "render-check", *values
        ).stdout
        documents = [d for d in yaml.safe_load_all(rendered) if d]
        crds = [d for d in documents if d["kind"] == "CustomResourceDefinition"]
        # CRDs first (for real, not dry-run), so that objects of their kinds can be checked.
        tools.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            stdin=yaml.safe_dump_all(crds),
        )
        eventually(
            lambda: (
                tools.kubectl(
                    "wait",
                    "--for=condition=Established",
                    "crd/trainingjobs.kubetrain.io",
                    check=False,
                ).returncode
                == 0
            ),
            what="CRD established",
        )
        rest = yaml.safe_dump_all([d for d in documents if d["kind"] != "CustomResourceDefinition"])
        check = tools.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rest, check=False)
        assert check.returncode == 0, check.stderr
    tools.kubectl("delete", "namespace", "render-check", "--wait=false")


def test_install_upgrade_uninstall(tools: Tools, without_crd: None) -> None:
    tools.helm("install", "kubetrain", str(CHART), "-n", NS, "--create-namespace")

    crd = tools.get("crd", "trainingjobs.kubetrain.io")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    deployment = tools.get("deployment", "kubetrain", "-n", NS)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "--lease-name=kubetrain" in container["args"]  # leader election, even for one
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The report channel: served by the leader only, over TLS from the Secret the operator
    # keeps; the chart renders no certificate and mounts none.
    assert (
        "--report-channel-url=https://kubetrain-reports.kubetrain-system.svc:8443"
        in container["args"]
    )
    assert not any(a.startswith("--report-channel-tls-dir") for a in container["args"])
    assert not [v for v in pod["volumes"] if "secret" in v]
    assert pod["terminationGracePeriodSeconds"] == 30
    service = tools.get("service", "kubetrain-reports", "-n", NS)
    assert service["spec"]["selector"]["kubetrain.io/report-channel"] == "serving"
    dashboard = tools.get("configmap", "kubetrain-dashboard", "-n", NS)
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["kubetrain.json"])["uid"] == "kubetrain-jobs"
    assert tools.kubectl("get", "secret", "-n", NS, "-l", "app.kubernetes.io/instance=kubetrain",
                         "-o", "name").stdout.strip() == ""  # fmt: skip

    config = tools.get("configmap", "kubetrain-config", "-n", NS)["data"]["config.yaml"]
    settings = Settings.model_validate(yaml.safe_load(config))  # the operator can read it
    assert "a100" in settings.catalogue.names
    assert settings.report_channel_secret == "kubetrain-report-channel-tls"
    assert settings.shutdown_seconds == 25  # inside the Pod's grace
    assert settings.replica_selector == (
        "app.kubernetes.io/component=operator,app.kubernetes.io/instance=kubetrain,"
        "app.kubernetes.io/name=kubetrain"
    )
    # The Secret's Role: get and update only that Secret, create in this namespace only.
    channel_role = tools.get("role", "kubetrain-report-channel", "-n", NS)
    plain = yaml.safe_load_all((ROOT / "config" / "rbac" / "operator-tls-role.yaml")
                               .read_text())  # fmt: skip
    assert channel_role["rules"] == next(plain)["rules"]

    role = tools.get("clusterrole", "kubetrain")
    source = yaml.safe_load((ROOT / "config" / "rbac" / "operator-clusterrole.yaml").read_text())
    assert role["rules"] == source["rules"]
    classes = {c["metadata"]["name"]: c["value"] for c in tools.get("priorityclass")["items"]}
    assert classes["kubetrain-high"] > classes["kubetrain-normal"] > classes["kubetrain-low"]

    tools.kubectl("create", "namespace", "ml")
    tools.kubectl("apply", "-n", "ml", "-f", str(ROOT / "examples"))
    assert len(tools.get("trainingjobs", "-n", "ml")["items"]) == len(
        list((ROOT / "examples").glob("*.yaml"))
    )

    tools.helm(
        "upgrade",
        "kubetrain",
        str(CHART),
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "replicas=2",
        "--set-json",
        'gpuCatalogue.gpuTypes.mi300={"pricePerHour": 3.5, "resourceName": "amd.com/gpu"}',
    )
    deployment = tools.get("deployment", "kubetrain", "-n", NS)
    assert deployment["spec"]["replicas"] == 2
    config = tools.get("configmap", "kubetrain-config", "-n", NS)["data"]["config.yaml"]
    assert Settings.model_validate(yaml.safe_load(config)).catalogue.get("mi300") is not None

    refused = tools.helm(
        "upgrade",
        "kubetrain",
        str(CHART),
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "replicas=0",
        check=False,
    )
    assert refused.returncode != 0 and "/replicas" in refused.stderr
    assert tools.get("deployment", "kubetrain", "-n", NS)["spec"]["replicas"] == 2

    tools.helm("uninstall", "kubetrain", "-n", NS)
    assert tools.kubectl("get", "deployment", "kubetrain", "-n", NS, check=False).returncode != 0
    assert tools.get("crd", "trainingjobs.kubetrain.io")  # kept: the jobs survive
    assert len(tools.get("trainingjobs", "-n", "ml")["items"]) == len(
        list((ROOT / "examples").glob("*.yaml"))
    )


def test_the_kueue_values_turn_the_integration_on_with_valid_priority_classes(
    tools: Tools, tmp_path: Path
) -> None:
    rendered = tools.helm(
        "template", "t", str(CHART), "--kube-version", "1.36.3",
        "--set", "kueue.enabled=true", "--set", "kueue.defaultQueue=team-a",
    ).stdout  # fmt: skip
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    classes = [d for d in documents if d["kind"] == "WorkloadPriorityClass"]
    assert {c["metadata"]["name"]: c["value"] for c in classes} == {
        "kubetrain-high": 1000, "kubetrain-normal": 100, "kubetrain-low": 10
    }  # fmt: skip
    # Valid for the Kueue release the local cluster runs (its CRD, from the same module).
    crd = manifests_dir() / "crd" / "kueue.x-k8s.io_workloadpriorityclasses.yaml"
    tools.kubectl("apply", "--server-side", "-f", str(crd))
    eventually(
        lambda: tools.kubectl("wait", "--for=condition=Established",
                              "crd/workloadpriorityclasses.kueue.x-k8s.io",
                              check=False).returncode == 0,
        what="Kueue's WorkloadPriorityClass CRD established",
    )  # fmt: skip
    check = tools.kubectl("apply", "--dry-run=server", "-f", "-",
                          stdin=yaml.safe_dump_all(classes), check=False)  # fmt: skip
    assert check.returncode == 0, check.stderr
    tools.kubectl("delete", "crd", "workloadpriorityclasses.kueue.x-k8s.io")
    config = next(d for d in documents if d["kind"] == "ConfigMap"
                  and d["metadata"]["name"] == "kubetrain-config")  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(config["data"]["config.yaml"])
    settings = load_settings(path, environ={})
    assert settings.kueue_enabled and settings.kueue_default_queue == "team-a"
    assert settings.kueue_priority_classes["high"] == "kubetrain-high"
    off = tools.helm("template", "t", str(CHART), "--kube-version", "1.36.3").stdout
    assert "WorkloadPriorityClass" not in off and "kueueEnabled: false" in off
