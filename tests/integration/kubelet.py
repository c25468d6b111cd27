"""The test's stand-in for the kubelet and the trainer: Pod status and progress reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from kubetrain.api.report import ANNOTATION, EXIT_STOPPED
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
