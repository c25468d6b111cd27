"""Renderers are pure and deterministic; their output is pinned by golden files.

Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then review
the diff like any other code change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain.api.job import TrainingJob
from kubetrain.operator.placement import Placement
from kubetrain.operator.render import (
    checkpoint_claim,
    headless_service,
    trainer_identity,
    worker_pod,
)
from kubetrain.operator.settings import Settings
from kubetrain.operator.trainer_env import trainer_config

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = Settings()


def _job(**spec: Any) -> TrainingJob:
    base: dict[str, Any] = {
        "modelType": "llm",
        "dataset": {"pvc": {"claimName": "corpus", "subPath": "chat/train.jsonl"}},
        "llm": {"baseModel": "meta-llama/Llama-2-7b-hf", "lora": {"rank": 16, "alpha": 32}},
        "training": {"epochs": 3, "batchSize": 4},
        "resources": {"gpuType": "a100", "workers": 2, "gpusPerWorker": 4},
        "priority": "high",
        "env": [{"name": "HF_HOME", "value": "/checkpoints/hf"}],
    }
    base.update(spec)
    return TrainingJob.model_validate(
        {
            "metadata": {"name": "llama", "namespace": "team-a", "uid": "uid-1", "generation": 1},
            "spec": base,
        }
    )


def _placement(job: TrainingJob) -> Placement:
    gpu_type = job.spec.resources.gpu_type or "a100"
    entry = SETTINGS.catalogue.get(gpu_type)
    assert entry is not None
    return Placement.resolve(job.spec, gpu_type, entry)


def _children(job: TrainingJob) -> list[dict[str, Any]]:
    placement = _placement(job)
    objects = [
        checkpoint_claim(job),
        *trainer_identity("team-a"),
        headless_service(job, SETTINGS),
        *(
            worker_pod(
                job, i, attempt=3, resume_from="latest", placement=placement, settings=SETTINGS
            )
            for i in range(job.spec.resources.workers)
        ),
    ]
    return [o for o in objects if o is not None]


@pytest.mark.parametrize(
    ("case", "spec"),
    [
        ("llm-2x4-a100", {}),
        (
            "vision-cpu-existing-claim",
            {
                "modelType": "vision",
                "llm": None,
                "vision": {"task": "classification", "architecture": "resnet18", "numClasses": 10},
                "dataset": {"synthetic": {"samples": 32}},
                "resources": {"gpuType": "cpu", "workers": 1},
                "priority": "low",
                "checkpoint": {"existingClaimName": "shared-ckpts"},
                "env": [],
            },
        ),
    ],
)
def test_children_match_the_golden_files(case: str, spec: dict[str, Any]) -> None:
    rendered = yaml.safe_dump_all(_children(_job(**spec)), sort_keys=True)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text()


def test_rendering_is_deterministic() -> None:
    assert _children(_job()) == _children(_job())


def test_workers_get_placement_security_and_rendezvous_env() -> None:
    job = _job()
    pod = worker_pod(
        job, 1, attempt=2, resume_from="step-100", placement=_placement(job), settings=SETTINGS
    )
    spec = pod["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert pod["metadata"]["name"] == "llama-worker-1-a2"  # a name per attempt
    assert pod["metadata"]["labels"]["kubetrain.io/attempt"] == "2"
    assert (spec["hostname"], spec["subdomain"]) == ("llama-worker-1", "llama-workers")
    assert env["MASTER_ADDR"] == "llama-worker-0.llama-workers"
    assert (env["NODE_RANK"], env["RANK"], env["WORLD_SIZE"], env["NPROC_PER_NODE"]) == (
        "1",
        "4",
        "8",
        "4",
    )
    assert env["RESUME_FROM"] == "step-100"
    assert env["KUBETRAIN_DATASET_PATH"] == "/data/chat/train.jsonl"
    assert env["HF_HOME"] == "/checkpoints/hf"  # the user's env comes last
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert spec["priorityClassName"] == "kubetrain-high"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True


def test_a_user_env_entry_replaces_the_operators() -> None:
    job = _job(env=[{"name": "MASTER_PORT", "value": "12345"}])
    pod = worker_pod(
        job, 0, attempt=1, resume_from="", placement=_placement(job), settings=SETTINGS
    )
    values = [
        e.get("value") for e in pod["spec"]["containers"][0]["env"] if e["name"] == "MASTER_PORT"
    ]
    assert values == ["12345"]


def test_the_trainer_config_leaves_out_what_only_the_operator_reads() -> None:
    config = json.loads(trainer_config(_job(suspend=True, resumeFrom="x").spec))
    assert "suspend" not in config and "resumeFrom" not in config and "runPolicy" not in config
    assert config["llm"]["lora"]["rank"] == 16


def test_trainers_of_a_namespace_share_one_identity_narrowed_by_the_admission_policy() -> None:
    account, role, binding = trainer_identity("team-a")
    assert account["metadata"]["name"] == role["metadata"]["name"] == "kubetrain-trainer"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubetrain-trainer", "namespace": "team-a"}
    ]
    assert "ownerReferences" not in role["metadata"]  # it outlives every job
    job = _job()
    pod = worker_pod(
        job, 0, attempt=1, resume_from="", placement=_placement(job), settings=SETTINGS
    )
    assert pod["spec"]["serviceAccountName"] == "kubetrain-trainer"


def test_workers_on_a_lost_node_are_evicted_after_the_operators_grace() -> None:
    job = _job()
    pod = worker_pod(
        job, 0, attempt=1, resume_from="", placement=_placement(job), settings=SETTINGS
    )
    lost = {
        t["key"]: t["tolerationSeconds"]
        for t in pod["spec"]["tolerations"]
        if t.get("effect") == "NoExecute"
    }
    grace = SETTINGS.lost_node_grace_seconds
    assert lost == {"node.kubernetes.io/not-ready": grace, "node.kubernetes.io/unreachable": grace}


def test_single_worker_jobs_need_no_service_and_use_read_write_once() -> None:
    job = _job(resources={"gpuType": "h100", "workers": 1})
    assert headless_service(job, SETTINGS) is None
    claim = checkpoint_claim(job)
    assert claim is not None and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = worker_pod(
        job, 0, attempt=1, resume_from="", placement=_placement(job), settings=SETTINGS
    )
    assert "subdomain" not in pod["spec"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["MASTER_ADDR"] == "localhost"
