"""The children of a job the SDK reaches past the TrainingJob for.

Its worker Pods (to read their logs) and its checkpoint claim (kept on ``cancel``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from kubernetes import client

from kubetrain.api import TrainingJob
from kubetrain.api.children import LABEL_ATTEMPT, LABEL_JOB, LABEL_WORKER, checkpoint_claim_name
from kubetrain.sdk.errors import KubetrainError, NotFoundError, api_errors


def _rank(pod: Any) -> tuple[int, bool]:
    """Newest attempt first; among equals, a Pod that is not being deleted."""
    attempt = (pod.metadata.labels or {}).get(LABEL_ATTEMPT, "0")
    return (int(attempt) if attempt.isdigit() else 0, pod.metadata.deletion_timestamp is None)


def worker_pod(core: client.CoreV1Api, namespace: str, job: str, worker: int) -> str:
    """The name of worker ``worker``'s Pod of the job's latest attempt."""
    selector = f"{LABEL_JOB}={job},{LABEL_WORKER}={worker}"
    with api_errors():
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    if not pods:
        raise NotFoundError(f"trainingjob {job!r} has no Pod for worker {worker} now")
    chosen: Any = max(pods, key=_rank)
    return str(chosen.metadata.name)


def log_lines(
    core: client.CoreV1Api, namespace: str, pod: str, *, follow: bool, tail_lines: int | None
) -> Iterator[str]:
    """The lines of the Pod's log, streamed as they come with ``follow``."""
    kwargs: dict[str, Any] = {"follow": follow, "_preload_content": False}
    if tail_lines is not None:
        kwargs["tail_lines"] = tail_lines
    try:
        with api_errors():
            response: Any = core.read_namespaced_pod_log(pod, namespace, **kwargs)
    except KubetrainError as err:
        raise type(err)(
            f"cannot read the logs of Pod {pod}: {err.message}",
            status=err.status,
            reason=err.reason,
        ) from None
    return _lines(response)


def _lines(response: Any) -> Iterator[str]:
    """Decoded lines of a streamed HTTP response, released when done."""
    try:
        with api_errors():
            for raw in response:
                yield raw.decode(errors="replace").rstrip("\n")
    finally:
        response.release_conn()


def detach_claim(api_client: client.ApiClient, job: TrainingJob, namespace: str) -> str | None:
    """Remove the job's ownerReference from its checkpoint claim, so it outlives the job.

    Returns the claim's name, or None when the operator has not created it yet. The patch
    is guarded by the claim's resourceVersion: a concurrent change fails it (ConflictError).
    """
    core = client.CoreV1Api(api_client)
    claim = checkpoint_claim_name(job)
    try:
        with api_errors():
            pvc = core.read_namespaced_persistent_volume_claim(claim, namespace)
    except NotFoundError:
        return None
    meta: Any = pvc.metadata
    refs = meta.owner_references or []
    keep = [r for r in refs if r.uid != job.metadata.uid]
    if len(keep) == len(refs):
        return claim
    serialize = cast(Any, api_client).sanitize_for_serialization
    patch: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version},
        {"op": "replace", "path": "/metadata/ownerReferences", "value": serialize(keep)},
    ]
    with api_errors():
        core.patch_namespaced_persistent_volume_claim(
            claim, namespace, patch, _content_type="application/json-patch+json"
        )
    return claim
