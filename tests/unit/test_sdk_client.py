"""The SDK's entry points without a cluster: lazy exports and kubectl-like configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import kubetrain
from kubetrain.sdk import Client, KubetrainError
from kubetrain.sdk.connection import connect, kubeconfig_path


def test_importing_kubetrain_does_not_import_the_kubernetes_client() -> None:
    probe = (
        "import sys, kubetrain\n"
        "assert 'kubernetes' not in sys.modules and 'kubetrain.sdk' not in sys.modules\n"
        "client = kubetrain.Client\n"
        "assert 'kubernetes' in sys.modules and client.__name__ == 'Client'\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_the_lazy_names_are_the_sdks() -> None:
    assert kubetrain.Client is Client
    assert issubclass(kubetrain.NotFoundError, kubetrain.KubetrainError)
    assert issubclass(kubetrain.ValidationError, kubetrain.KubetrainError)
    assert {"Client", "PollTimeoutError", "PermissionDeniedError"} <= set(dir(kubetrain))
    with pytest.raises(AttributeError, match="no attribute 'Clients'"):
        _ = kubetrain.Clients  # type: ignore[attr-defined]


def _kubeconfig(tmp_path: Path) -> Path:
    clusters = [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}]
    users = [{"name": "u", "user": {"token": "t"}}]
    contexts = [
        {"name": "plain", "context": {"cluster": "c", "user": "u"}},
        {"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}},
    ]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
        "current-context": "team",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_namespace_comes_from_the_argument_else_the_context_else_default(
    tmp_path: Path,
) -> None:
    path = _kubeconfig(tmp_path)
    assert connect(path).namespace == "team-a"
    assert connect(path, context="plain").namespace == "default"
    assert connect(path, context="plain", namespace="x").namespace == "x"
    assert Client(path).namespace == "team-a"
    assert connect(path).api_client.configuration.host == "https://127.0.0.1:1"


def test_kubeconfig_is_found_like_kubectl_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert kubeconfig_path(None) is None
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("")
    assert kubeconfig_path(None) == str(tmp_path / ".kube" / "config")
    monkeypatch.setenv("KUBECONFIG", "/a:/b")
    assert kubeconfig_path(None) == "/a:/b"
    assert kubeconfig_path(tmp_path / "explicit") == str(tmp_path / "explicit")


def test_no_configuration_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubetrainError, match="no kubeconfig"):
        Client()
    with pytest.raises(KubetrainError, match="cannot load the Kubernetes configuration"):
        Client(tmp_path / "missing")
    with pytest.raises(KubetrainError, match="cannot load"):
        Client(_kubeconfig(tmp_path), context="nope")
