"""Finding the cluster and the namespace the way kubectl does."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from kubetrain.sdk.errors import KubetrainError

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Connection:
    """An API client and the namespace commands default to."""

    api_client: client.ApiClient
    namespace: str


def kubeconfig_path(explicit: str | os.PathLike[str] | None) -> str | None:
    """The kubeconfig to read: the argument, else $KUBECONFIG, else ~/.kube/config if present."""
    if explicit is not None:
        return os.fspath(explicit)
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.is_file() else None


def _context_namespace(path: str, context: str | None) -> str | None:
    contexts, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    chosen = (
        active if context is None else next((c for c in contexts if c.get("name") == context), None)
    )
    if not chosen:
        return None
    namespace = (chosen.get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def connect(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    namespace: str | None = None,
) -> Connection:
    """Connect with a kubeconfig (or, inside a Pod with none, the ServiceAccount's token).

    The namespace is the argument, else the kubeconfig context's, else the Pod's own,
    else ``default``.
    """
    configuration = client.Configuration()
    path = kubeconfig_path(kubeconfig)
    try:
        if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            if namespace is None and SERVICE_ACCOUNT_NAMESPACE.is_file():
                namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
        elif path is None:
            raise KubetrainError(
                "no kubeconfig: pass kubeconfig=, set $KUBECONFIG or create ~/.kube/config"
            )
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=configuration
            )
            if namespace is None:
                namespace = _context_namespace(path, context)
    except (config.ConfigException, OSError) as err:
        raise KubetrainError(f"cannot load the Kubernetes configuration: {err}") from None
    return Connection(client.ApiClient(configuration), namespace or DEFAULT_NAMESPACE)
