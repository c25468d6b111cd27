"""A job's trained model onto this machine: from where it was published (spec.output), or
from the job's checkpoint volume through a short-lived Pod.

From a URI the files come through fsspec with this machine's own credentials (the default
chain: environment, profile); from the volume, a Pod in the job's namespace mounts the claim
read-only and writes the model directory to its log as base64 (``kubetrain.trainer.fetch
.export``), which every kubelet serves. Either way the files are checked against the
digest the trainer reported before the download counts as done.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from kubetrain.api.children import checkpoint_claim_name
from kubetrain.api.job import TrainingJob
from kubetrain.api.report import TRAIN_LOG, tree_digest
from kubetrain.api.status import ModelOutput
from kubetrain.sdk.errors import KubetrainError, api_errors

Progress = Callable[[int, int], None]
"""Called with (bytes so far, bytes in all)."""
EXPORT_MOUNT = "/model-volume"
CLAIM_ROOT = "/checkpoints"
"""Where the trainers mount the checkpoint claim: the paths status gives are under it."""
DEFAULT_IMAGE = "ghcr.io/kubetrain/trainer-lora:0.1.0"


def from_uri(uri: str, dest: Path, progress: Progress | None = None) -> int:
    """Download every object under ``uri`` into ``dest``; the bytes downloaded."""
    try:
        import fsspec  # type: ignore[import-untyped]  # noqa: PLC0415 - the fetch extra
    except ImportError:
        raise KubetrainError(
            f"downloading from {uri} needs fsspec and s3fs/gcsfs: pip install 'kubetrain[fetch]'"
        ) from None
    fs, root = fsspec.core.url_to_fs(uri)
    try:
        found: dict[str, Any] = fs.find(root, detail=True)
    except PermissionError as err:
        raise KubetrainError(
            f"{uri}: access denied with this machine's credentials ({err})"
        ) from None
    if not found:
        raise KubetrainError(f"{uri}: nothing there (was the model deleted?)")
    total, done = sum(int(info.get("size") or 0) for info in found.values()), 0
    prefix = root.rstrip("/") + "/"
    for key, info in sorted(found.items()):
        target = dest / key[len(prefix) :] if key.startswith(prefix) else dest / Path(key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
        done += int(info.get("size") or 0)
        if progress is not None:
            progress(done, total)
    return done


def from_volume(
    core: client.CoreV1Api,
    job: TrainingJob,
    model: ModelOutput,
    dest: Path,
    *,
    image: str,
    timeout: float,
    progress: Progress | None = None,
) -> int:
    """Copy the model directory off the job's volume through a short-lived Pod."""
    name = job.metadata.name or ""
    if not model.claim_name or not model.path:
        raise KubetrainError(f"trainingjob {name!r} reports no volume path for its model")
    size = export(
        core, job, model.claim_name, model.path, dest,
        image=image, timeout=timeout, expected=model.digest,
    )  # fmt: skip
    if progress is not None:
        progress(size, size)
    return size


def train_log(core: client.CoreV1Api, job: TrainingJob, *, image: str, timeout: float) -> list[Any]:
    """The per-step metrics the trainer writes to the job's volume (``train-log.jsonl``)."""
    with tempfile.TemporaryDirectory() as tmp:
        export(core, job, checkpoint_claim_name(job), f"{CLAIM_ROOT}/{TRAIN_LOG}", Path(tmp),
               image=image, timeout=timeout)  # fmt: skip
        lines = (Path(tmp) / TRAIN_LOG).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def export_pod(pod_name: str, job_name: str, claim: str, inside: str, image: str) -> dict[str, Any]:
    """The Pod that prints ``inside`` (a path on ``claim``) to its log as the export format."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "labels": {"app.kubernetes.io/name": "kubetrain",
                       "app.kubernetes.io/component": "download",
                       "app.kubernetes.io/instance": job_name},
        },
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "export",
                "image": image,
                "command": ["python", "-m", "kubetrain.trainer.fetch.export",
                            f"{EXPORT_MOUNT}/{inside}".rstrip("/")],
                "volumeMounts": [{"name": "model", "mountPath": EXPORT_MOUNT, "readOnly": True}],
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "model", "persistentVolumeClaim": {
                "claimName": claim, "readOnly": True}}],
        },
    }  # fmt: skip


def export(
    core: client.CoreV1Api,
    job: TrainingJob,
    claim: str,
    path: str,
    dest: Path,
    *,
    image: str,
    timeout: float,
    expected: str | None = None,
) -> int:
    """Copy ``path`` (as the trainers see it, under /checkpoints) off ``claim`` into ``dest``
    through a short-lived Pod in the job's namespace; the bytes copied. The files are checked
    once: against ``expected`` (the digest the trainer reported), else the Pod's own."""
    namespace, name = job.metadata.namespace or "default", job.metadata.name or ""
    inside = path.removeprefix(CLAIM_ROOT).lstrip("/")
    pod_name = f"{name[:40]}-download-{secrets.token_hex(3)}"
    pod = export_pod(pod_name, name, claim, inside, image)
    with api_errors():
        core.create_namespaced_pod(namespace, pod)  # type: ignore[arg-type]  # a plain manifest
    try:
        _wait_done(core, namespace, pod_name, timeout)
        with api_errors():
            log = core.read_namespaced_pod_log(pod_name, namespace, container="export")
    finally:
        with api_errors():
            core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)
    return unpack(str(log), dest, expected)


def _wait_done(core: client.CoreV1Api, namespace: str, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        with api_errors():
            status = core.read_namespaced_pod(name, namespace).status
        phase = status.phase if status is not None else None
        if phase == "Succeeded":
            return
        if phase == "Failed":
            with api_errors():
                tail = core.read_namespaced_pod_log(name, namespace, tail_lines=5)
            raise KubetrainError(f"the download Pod {name} failed: {str(tail).strip()}")
        if time.monotonic() > deadline:
            raise KubetrainError(f"the download Pod {name} did not finish within {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


def unpack(log: str, dest: Path, expected: str | None) -> int:
    """Unpack what the export entry point printed (``BEGIN``, base64 tar, ``END digest size``)
    into ``dest``, checked against ``expected`` or the printed digest; the bytes unpacked."""
    lines = log.splitlines()
    try:
        begin = lines.index("BEGIN")
        end = next(i for i in range(len(lines) - 1, begin, -1) if lines[i].startswith("END "))
    except (ValueError, StopIteration):
        raise KubetrainError("the download Pod's output is incomplete") from None
    data = base64.b64decode("".join(lines[begin + 1 : end]))
    _, digest, size = lines[end].split()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    check(dest, expected or (None if digest == "-" else digest))
    return int(size)


def check(dest: Path, digest: str | None) -> None:
    """The downloaded files are the ones the trainer published (when it said what those were)."""
    if not digest:
        return
    found, _, _ = tree_digest(dest)
    if found != digest:
        raise KubetrainError(f"the downloaded model's digest {found} is not the reported {digest}")


def fresh(dest: Path) -> Path:
    """``dest`` as an empty directory to download into (an existing empty one is fine)."""
    if dest.exists() and any(dest.iterdir()):
        raise KubetrainError(f"{dest} is not empty; download into a new or empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def discard(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
