"""The pins hold: the locked build inputs say what ``hack/versions.env`` and ``pyproject.toml``
say, and what ``make setup`` installed is what the locks describe.

Run by ``make test`` and by ``make setup-cold`` against the cold result.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "hack" / "tools"
BIN = ROOT / "bin"


def versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def gomod(tool: str) -> dict[str, list[tuple[str, ...]]]:
    """The directives of hack/tools/TOOL/go.mod: ``{"require": [(path, version)], ...}``."""
    directives: dict[str, list[tuple[str, ...]]] = {}
    block = None
    for raw in (TOOLS / tool / "go.mod").read_text().splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block:
            if line == ")":
                block = None
            else:
                directives[block].append(tuple(line.split()))
            continue
        verb, _, rest = line.partition(" ")
        directives.setdefault(verb, [])
        if rest == "(":
            block = verb
        else:
            directives[verb].append(tuple(rest.split()))
    return directives


def required(tool: str) -> dict[str, str]:
    return {path: version for path, version in gomod(tool)["require"]}


def replaced(tool: str) -> dict[str, str]:
    """Replaces, each ``old => new version``: none may point at a local path."""
    out = {}
    for fields in gomod(tool).get("replace", []):
        assert fields[1] == "=>" and len(fields) == 4, f"{tool}: unexpected replace {fields}"
        assert not fields[2].startswith("."), f"{tool}: a local-path replace {fields}"
        out[fields[0]] = fields[3]
    return out


V = versions()
K8S_STAGING = "v0." + V["K8S_VERSION"].removeprefix("v1.")
HELM_MODULE = "helm.sh/helm/" + V["HELM_VERSION"].split(".")[0]
CONTAINERD = "github.com/containerd/containerd/v2"
COREDNS = "github.com/coredns/coredns"


@pytest.mark.parametrize(
    ("tool", "module", "version", "tools"),
    [
        (
            "kubernetes",
            "k8s.io/kubernetes",
            V["K8S_VERSION"],
            {f"k8s.io/kubernetes/cmd/{c}" for c in ("kube-apiserver", "kube-controller-manager")}
            | {f"k8s.io/kubernetes/cmd/{c}" for c in ("kube-scheduler", "kubectl")}
            | {f"k8s.io/kubernetes/cmd/{c}" for c in ("kubelet", "kube-proxy")},
        ),
        ("etcd", "go.etcd.io/etcd/server/v3", V["ETCD_VERSION"], {"go.etcd.io/etcd/server/v3"}),
        ("helm", HELM_MODULE, V["HELM_VERSION"], {f"{HELM_MODULE}/cmd/helm"}),
        ("kueue", "sigs.k8s.io/kueue", V["KUEUE_VERSION"], {"sigs.k8s.io/kueue/cmd/kueue"}),
        (
            "containerd",
            CONTAINERD,
            V["CONTAINERD_VERSION"],
            {f"{CONTAINERD}/cmd/{c}" for c in ("containerd", "containerd-shim-runc-v2", "ctr")},
        ),
        ("coredns", COREDNS, V["COREDNS_VERSION"], {COREDNS}),
    ],
)
def test_each_tool_lock_requires_exactly_the_version_in_versions_env(
    tool: str, module: str, version: str, tools: set[str]
) -> None:
    assert required(tool)[module] == version
    assert {fields[0] for fields in gomod(tool)["tool"]} == tools
    go_sum = (TOOLS / tool / "go.sum").read_text()
    for path, version_required in required(tool).items():
        v = replaced(tool).get(path, version_required)
        assert f"{path} {v}/go.mod h1:" in go_sum, f"{tool}: go.sum lacks {path} {v}"


def test_the_kubernetes_lock_takes_every_staging_module_at_the_release() -> None:
    staging = replaced("kubernetes")
    assert len(staging) > 20  # k8s.io/api, apimachinery, client-go, ...
    assert set(staging.values()) == {K8S_STAGING}
    assert all(old.startswith("k8s.io/") for old in staging)


def test_etcd_is_the_release_kubernetes_requires() -> None:
    assert required("kubernetes")["go.etcd.io/etcd/client/v3"] == V["ETCD_VERSION"]
    assert set(replaced("etcd").values()) == {V["ETCD_VERSION"]}


def run_bin(*argv: str) -> str:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, check=True, timeout=30
    ).stdout


@pytest.mark.parametrize(
    "component",
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"],
)
def test_built_kubernetes_components_report_the_pinned_release(component: str) -> None:
    assert run_bin(component, "--version").split() == ["Kubernetes", V["K8S_VERSION"]]


def test_built_kubectl_etcd_and_helm_report_the_pinned_releases() -> None:
    kubectl = json.loads(run_bin("kubectl", "version", "--client", "-o", "json"))
    assert kubectl["clientVersion"]["gitVersion"] == V["K8S_VERSION"]
    assert re.search(r"^etcd Version: (\S+)$", run_bin("etcd", "--version"), re.M)[1] == V[
        "ETCD_VERSION"
    ].removeprefix("v")
    assert run_bin("helm", "version", "--template", "{{.Version}}") == V["HELM_VERSION"]


def test_the_real_nodes_runtime_reports_the_pinned_releases() -> None:
    assert run_bin("containerd", "--version").split()[1:3] == [CONTAINERD, V["CONTAINERD_VERSION"]]
    assert run_bin("ctr", "--version").split()[-1] == V["CONTAINERD_VERSION"]
    assert run_bin("coredns", "-version").split()[0] == "CoreDNS-" + V["COREDNS_VERSION"][1:]


def test_kueue_comes_with_the_crds_and_webhooks_of_its_release() -> None:
    """bin/kueue-manifests is copied from the module version the binary was built from."""
    assert (BIN / ".kueue.key").read_text().startswith("kueue-")
    workloads = (BIN / "kueue-manifests" / "crd" / "kueue.x-k8s.io_workloads.yaml").read_text()
    assert "name: v1beta2" in workloads  # the API version the operator speaks
    assert (
        "/mutate-kueue-x-k8s-io-v1beta2-workload"
        in (BIN / "kueue-manifests" / "webhooks.yaml").read_text()
    )


def python_lock(
    path: Path = ROOT / "hack" / "requirements.lock",
) -> dict[str, tuple[str, set[str]]]:
    """A requirements lock: canonical name -> (version, its hashes)."""
    entries: dict[str, tuple[str, set[str]]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            name = canonicalize_name(m[1])
            entries[name] = (m[2], set())
        elif m := re.search(r"--hash=(sha256:[0-9a-f]{64})", line):
            entries[name][1].add(m[1])
        elif re.match(r"^[A-Za-z0-9]", line):
            pytest.fail(f"{path.relative_to(ROOT)}: not an exact pin: {line}")
    return entries


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        specs += extra
    specs += project["build-system"]["requires"]
    return [Requirement(s) for s in specs]


def test_the_python_lock_satisfies_pyproject_and_pins_every_package_with_hashes() -> None:
    lock = python_lock()
    for req in project_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"hack/requirements.lock lacks {req} (run make lock)"
        assert req.specifier.contains(lock[name][0], prereleases=True), (
            f"hack/requirements.lock has {name}=={lock[name][0]}, pyproject.toml wants {req}"
        )
    assert all(hashes for _, hashes in lock.values())


def test_the_virtualenv_holds_exactly_the_locked_versions() -> None:
    drift = {
        name: (version, installed)
        for name, (version, _) in python_lock().items()
        if (installed := importlib.metadata.version(name)) != version
    }
    assert not drift, f"installed versions differ from the lock (run make venv): {drift}"


IMAGE_LOCKS = {
    "operator": set(),
    "trainer-lora": {"lora", "multimodal", "qlora", "fetch", "trackers"},
    "trainer-vision": {"vision", "fetch", "trackers"},
}


@pytest.mark.parametrize("image", sorted(IMAGE_LOCKS))
def test_each_image_lock_is_a_share_of_the_lock_covering_its_extras(image: str) -> None:
    lock = python_lock()
    share = python_lock(ROOT / "images" / image / "requirements.lock")
    for name, (version, hashes) in share.items():
        assert name in lock, f"images/{image}/requirements.lock has {name}, the lock has not"
        assert version == lock[name][0], f"{name}: {version} in the image, {lock[name][0]} tested"
        assert hashes and hashes <= lock[name][1], f"{name}: hashes the lock does not know"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]] + [
        Requirement(r)
        for extra in IMAGE_LOCKS[image]
        for r in project["optional-dependencies"][extra]
    ]
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in share]
    assert not missing, f"images/{image}/requirements.lock lacks {missing} (run make lock)"
    dockerfile = (ROOT / "images" / image / "Dockerfile").read_text()
    assert f"COPY images/{image}/requirements.lock" in dockerfile


def test_the_trainer_images_carry_torch_and_its_cuda_wheels_the_operator_image_does_not() -> None:
    lora, vision, operator = (
        python_lock(ROOT / "images" / image / "requirements.lock")
        for image in ("trainer-lora", "trainer-vision", "operator")
    )
    for share in (lora, vision):
        assert share["torch"][0] == python_lock()["torch"][0]
        assert "nvidia-cuda-runtime" in share
    assert "bitsandbytes" in lora
    assert not [name for name in operator if name == "torch" or name.startswith("nvidia-")]


def test_the_build_lock_is_the_locked_pip_and_setuptools() -> None:
    lock, build = python_lock(), python_lock(ROOT / "images" / "build.lock")
    assert {"pip", "setuptools", "wheel"} <= set(build)
    assert all(build[name][0] == lock[name][0] for name in build)
