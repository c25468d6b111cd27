"""Pure builders: a TrainingJob (plus operator settings) in, the manifests of its children out.

No clock, no randomness, no I/O: the same inputs always give the same objects, so the
reconciler can create them idempotently and tests can compare them with golden files.
"""

from __future__ import annotations

from typing import Any

from kubetrain.api.children import (
    ANNOTATION_RESUME_FROM,
    ANNOTATION_WORKERS,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_STAGE,
    LABEL_WORKER,
    MANAGED_BY,
    checkpoint_claim_name,
    fetch_pod_name,
    labels,
    pod_name,
    service_name,
    worker_hostname,
)
from kubetrain.api.fetch import (
    CACHE_MOUNT,
    CHECKPOINT_CACHE,
    CREDENTIALS_MOUNT,
    ENV_PLAN,
    FetchPlan,
    fetch_sources,
)
from kubetrain.api.job import TrainingJob
from kubetrain.api.report import ANNOTATION
from kubetrain.api.spec import ModelType, TrainingJobSpec
from kubetrain.api.status import Initialization
from kubetrain.operator.placement import Placement, affinity, resources
from kubetrain.operator.settings import Settings
from kubetrain.operator.trainer_env import (
    CHECKPOINT_MOUNT,
    DATASET_MOUNT,
    channel_env,
    channel_volume,
    field_env,
    trainer_env,
    user_env,
)

TRAINER_UID = 1000

JSON = dict[str, Any]


def _name(job: TrainingJob) -> str:
    assert job.metadata.name, "a stored TrainingJob always has a name"
    return job.metadata.name


def owner_reference(job: TrainingJob) -> JSON:
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "name": _name(job),
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: TrainingJob, name: str, component: str, *, owned: bool = True) -> JSON:
    meta: JSON = {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels(_name(job), component),
    }
    if owned:
        meta["ownerReferences"] = [owner_reference(job)]
    return meta


def checkpoint_claim(job: TrainingJob) -> JSON | None:
    """The checkpoint PVC, or None when the job uses an existing claim.

    Several workers share one volume, so they need ReadWriteMany unless the user said
    otherwise. With ``reclaimPolicy: Retain`` the claim has no owner and outlives the job.
    """
    ckpt = job.spec.checkpoint
    if ckpt.existing_claim_name:
        return None
    modes = [str(m) for m in ckpt.access_modes] or (
        ["ReadWriteMany"] if job.spec.resources.workers > 1 else ["ReadWriteOnce"]
    )
    spec: JSON = {"accessModes": modes, "resources": {"requests": {"storage": ckpt.size}}}
    if ckpt.storage_class_name:
        spec["storageClassName"] = ckpt.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(job, checkpoint_claim_name(job), "checkpoints"),
        "spec": spec,
    }


TRAINER_IDENTITY = "kubetrain-trainer"
"""The ServiceAccount, Role and RoleBinding every trainer of a namespace runs as."""
LABEL_TRAINER_IDENTITY = "kubetrain.io/trainer-identity"
TRAINER_POLICY = "kubetrain-trainer-own-pod"
"""The ValidatingAdmissionPolicy (config/trainer-policy.yaml) that holds each trainer to
its own Pod: the Role alone would let it patch any Pod of the namespace."""


def trainer_identity(namespace: str) -> list[JSON]:
    """The namespace's trainer ServiceAccount, with a Role to read and patch Pods.

    One set per namespace, not per job: every job's workers share it, and the admission
    policy ``TRAINER_POLICY`` narrows it to the Pod each token is bound to and to its
    annotations. Not owned by a job (it outlives each one; the namespace takes it along).
    """
    meta: JSON = {
        "name": TRAINER_IDENTITY,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/name": "kubetrain",
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            LABEL_TRAINER_IDENTITY: "true",
        },
    }
    group = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": f"{group}/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": f"{group}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": group, "kind": "Role", "name": TRAINER_IDENTITY},
            "subjects": [
                {"kind": "ServiceAccount", "name": TRAINER_IDENTITY, "namespace": namespace}
            ],
        },
    ]


def headless_service(job: TrainingJob, settings: Settings) -> JSON | None:
    """Stable DNS names (``<job>-worker-<i>.<job>-workers``) for multi-worker rendezvous."""
    if job.spec.resources.workers <= 1:
        return None
    name = _name(job)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(name), "workers"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: name},
            "ports": [{"name": "rendezvous", "port": settings.master_port, "protocol": "TCP"}],
        },
    }


def _image_and_command(spec: TrainingJobSpec, settings: Settings) -> tuple[str, list[str]]:
    images = settings.images
    if spec.model_type is ModelType.VISION:
        image, command = images.vision, images.vision_command
    elif spec.model_type is ModelType.MULTIMODAL:
        image, command = images.multimodal, images.multimodal_command
    else:
        image, command = images.llm, images.llm_command
    return spec.image or image, list(spec.command) or list(command)


def worker_pod(
    job: TrainingJob,
    index: int,
    *,
    attempt: int,
    resume_from: str,
    placement: Placement,
    settings: Settings,
    fetched: Initialization | None = None,
) -> JSON:
    """Worker ``index`` of attempt ``attempt``: GPU placement, restricted security, trainer env;
    the fetch stage's copies of remote sources (``fetched``) in place of the remote ones."""
    spec, name = job.spec, _name(job)
    paths = {s.name: s.path for s in fetched.sources} if fetched else {}
    image, command = _image_and_command(spec, settings)
    meta = _metadata(job, pod_name(name, index, attempt), "worker")
    meta["labels"] |= {LABEL_WORKER: str(index), LABEL_ATTEMPT: str(attempt)}
    meta["annotations"] = {
        ANNOTATION_RESUME_FROM: resume_from or "latest",
        ANNOTATION_WORKERS: str(spec.resources.workers),
    }
    volumes: list[JSON] = [
        {
            "name": "checkpoints",
            "persistentVolumeClaim": {"claimName": checkpoint_claim_name(job)},
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[JSON] = [
        {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    channel_volumes, channel_mounts = channel_volume(settings)
    volumes += channel_volumes
    mounts += channel_mounts
    if spec.output is not None and spec.output.credentials is not None:
        secret = spec.output.credentials.secret_name
        volumes.append({"name": "credentials-output", "secret": {"secretName": secret}})
        mounts.append(
            {"name": "credentials-output", "mountPath": f"{CREDENTIALS_MOUNT}/output",
             "readOnly": True}
        )  # fmt: skip
    if fetched is not None and fetched.claim_name:
        volumes.append(_cache_volume(fetched.claim_name, read_only=True))
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT, "readOnly": True})
    if spec.dataset.pvc is not None:
        volumes.append(
            {
                "name": "dataset",
                "persistentVolumeClaim": {
                    "claimName": spec.dataset.pvc.claim_name,
                    "readOnly": True,
                },
            }
        )
        mounts.append({"name": "dataset", "mountPath": DATASET_MOUNT, "readOnly": True})
    container: JSON = {
        "name": "trainer",
        "image": image,
        "imagePullPolicy": settings.images.pull_policy,
        "command": command,
        "env": trainer_env(
            job, index, resume_from, placement, settings, fetched=paths, attempt=attempt
        ),
        "resources": resources(placement),
        "volumeMounts": mounts,
        "ports": [{"name": "rendezvous", "containerPort": settings.master_port}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.args:
        container["args"] = list(spec.args)
    pod_spec = _pod_spec(spec, placement, settings, container, volumes)
    pod_spec["hostname"] = worker_hostname(name, index)
    if spec.resources.workers > 1:
        pod_spec["subdomain"] = service_name(name)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}


def _pod_spec(
    spec: TrainingJobSpec,
    placement: Placement,
    settings: Settings,
    container: JSON,
    volumes: list[JSON],
) -> JSON:
    """What every Pod of a job shares: the trainer identity, restricted security, placement."""
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "serviceAccountName": TRAINER_IDENTITY,
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if placement.entry.node_selector or placement.admitted_labels:
        pod_spec["nodeSelector"] = dict(placement.entry.node_selector) | dict(
            placement.admitted_labels
        )
    if wanted := affinity(placement.entry):
        pod_spec["affinity"] = wanted
    # A worker on a node that stopped reporting is evicted after lostNodeGraceSeconds (by
    # the node lifecycle controller's taint eviction), and the job restarts elsewhere from
    # its latest checkpoint, instead of the default five minutes.
    lost = [
        {"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": settings.lost_node_grace_seconds}
        for taint in ("not-ready", "unreachable")
    ]  # fmt: skip
    pod_spec["tolerations"] = [
        dict(t) for t in (*placement.entry.tolerations, *placement.admitted_tolerations)
    ] + lost
    if priority_class := settings.priority_classes.get(str(spec.priority)):
        pod_spec["priorityClassName"] = priority_class
    return pod_spec


def _cache_volume(claim: str, *, read_only: bool) -> JSON:
    return {"name": "cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def fetch_pod(
    job: TrainingJob,
    attempt: int,
    *,
    placement: Placement,
    settings: Settings,
    cache_claim: str | None,
) -> JSON:
    """The job's fetch Pod (attempt ``attempt``): the trainer image running the fetch stage,
    CPU only, on the nodes the workers will use (their volumes are the same), each source's
    credentials Secret mounted for it alone."""
    spec, name = job.spec, _name(job)
    image, _ = _image_and_command(spec, settings)
    meta = _metadata(job, fetch_pod_name(name, attempt), "fetch")
    meta["labels"] |= {LABEL_STAGE: "fetch"}
    sources = fetch_sources(spec)
    cache_dir = CACHE_MOUNT if cache_claim else CHECKPOINT_CACHE
    plan = FetchPlan(cache_dir=cache_dir, sources=sources)
    volumes: list[JSON] = [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": checkpoint_claim_name(job)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
    ]
    mounts: list[JSON] = [
        {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if cache_claim:
        volumes.append(_cache_volume(cache_claim, read_only=False))
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
    for source in sources:
        if source.credentials_secret and source.credentials_dir:
            volume = f"credentials-{source.name.lower()}"
            volumes.append({"name": volume, "secret": {"secretName": source.credentials_secret}})
            mounts.append({"name": volume, "mountPath": source.credentials_dir, "readOnly": True})
    channel_volumes, channel_mounts = channel_volume(settings)
    env: list[JSON] = [
        {"name": "KUBETRAIN_JOB_NAME", "value": name},
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        {"name": ENV_PLAN, "value": plan.model_dump_json(by_alias=True, exclude_none=True)},
        {"name": "KUBETRAIN_CHECKPOINT_DIR", "value": CHECKPOINT_MOUNT},
        {"name": "KUBETRAIN_PROGRESS_ANNOTATION", "value": ANNOTATION},
        {"name": "KUBETRAIN_REPORT_INTERVAL_SECONDS",
         "value": f"{settings.report_interval_seconds:g}"},
        *channel_env(settings),
    ]  # fmt: skip
    container: JSON = {
        "name": "fetch",
        "image": image,
        "imagePullPolicy": settings.images.pull_policy,
        "command": ["python", "-m", "kubetrain.trainer.fetch"],
        "env": user_env(spec, env),
        "resources": {
            "requests": {"cpu": settings.fetch_cpu, "memory": settings.fetch_memory},
            "limits": {"memory": settings.fetch_memory},
        },
        "volumeMounts": mounts + channel_mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec = _pod_spec(spec, placement, settings, container, volumes + channel_volumes)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
