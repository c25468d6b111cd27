"""The test's stand-in for the kubelet and the trainer: Pod status and progress reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetrain.api.report import ANNOTATION, CHANNEL_AUDIENCE, EXIT_STOPPED
from kubetrain.localcluster import ControlPlane
from kubetrain.trainer.reporter import Channel, PushSink
from tests.polling import eventually


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def start(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """The container is running (as a kubelet reports it).

    A kubelet runs only Pods the scheduler bound to its node, so this waits for the binding
    first: the deletion of a bound Pod is graceful (it keeps a deletionTimestamp until the
    kubelet confirms), while an unbound one would vanish at once.
    """
    eventually(
        lambda: core.read_namespaced_pod(name, namespace).spec.node_name,
        what=f"Pod {name} bound to a node",
    )
    core.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "startTime": _now(),
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "image": "trainer",
                        "imageID": "",
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _now()}},
                    }
                ],
            }
        },
    )


def finish(
    core: client.CoreV1Api, namespace: str, name: str, exit_code: int = 0, message: str = ""
) -> None:
    """The container exited with ``exit_code`` and termination ``message``."""
    terminated = {
        "exitCode": exit_code,
        "reason": "Completed" if exit_code == 0 else "Error",
        "message": message,
        "startedAt": _now(),
        "finishedAt": _now(),
    }
    core.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "image": "trainer",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        },
    )


def waiting(core: client.CoreV1Api, namespace: str, name: str, reason: str, message: str) -> None:
    """The container has not started, for ``reason`` (as a kubelet reports ImagePullBackOff)."""
    eventually(
        lambda: core.read_namespaced_pod(name, namespace).spec.node_name,
        what=f"Pod {name} bound to a node",
    )
    state = {"waiting": {"reason": reason, "message": message}}
    status = {"phase": "Pending", "containerStatuses": [
        {"name": "trainer", "image": "trainer", "imageID": "", "ready": False,
         "restartCount": 0, "state": state}]}  # fmt: skip
    core.patch_namespaced_pod_status(name, namespace, {"status": status})


def terminate(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """A graceful deletion completes: the trainer checkpointed and exited, the Pod goes."""
    finish(core, namespace, name, EXIT_STOPPED, "stopped after writing a checkpoint")
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def report(core: client.CoreV1Api, namespace: str, name: str, **fields: Any) -> None:
    """Patch a progress report onto the Pod, as the trainer's reporter does."""
    body = {"version": 1, "time": _now(), **fields}
    set_annotation(core, namespace, name, json.dumps(body))


def set_annotation(core: client.CoreV1Api, namespace: str, name: str, value: str) -> None:
    core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {ANNOTATION: value}}})


def checkpoint(id_: str, epoch: int, step: int, loss: float) -> dict[str, Any]:
    return {
        "id": id_,
        "epoch": epoch,
        "step": step,
        "loss": loss,
        "createdAt": _now(),
        "sizeBytes": 1024,
        "path": f"/checkpoints/{id_}",
    }


def report_token(
    core: client.CoreV1Api, namespace: str, pod: str, audience: str = CHANNEL_AUDIENCE
) -> str:
    """A token for the Pod's ServiceAccount bound to the Pod, as a kubelet projects it."""
    found = core.read_namespaced_pod(pod, namespace)
    token: str = core.create_namespaced_service_account_token(
        found.spec.service_account_name or "default",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience],
                expiration_seconds=600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod, uid=found.metadata.uid
                ),
            )
        ),
    ).status.token
    return token


def push(url: str, ca_pem: str, token_file: Path, **fields: Any) -> None:
    """Push a progress report on the operator's channel with the trainer's own sink."""
    body = {"version": 1, "time": _now(), **fields}
    PushSink(Channel(url, ca_pem, token_file, 1.0)).send(json.dumps(body))


def as_trainer(
    cluster: ControlPlane, core: client.CoreV1Api, pod: client.V1Pod
) -> client.CoreV1Api:
    """A client with the token the kubelet would project for ``pod`` (its ServiceAccount,
    bound to the Pod, for the API server)."""
    token = core.create_namespaced_service_account_token(
        pod.spec.service_account_name,
        pod.metadata.namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],  # the API server's own
                expiration_seconds=600,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        ),
    ).status.token
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.pki_dir / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.CoreV1Api(client.ApiClient(configuration))
