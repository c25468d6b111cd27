"""Remote data and models on the local cluster: an S3-compatible server on loopback holds the
dataset and the base model; the fetch Pod brings them into the cache once, the LoRA trainer
trains from there, and a stop and a resume fetch nothing again."""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetrain.api.report import tree_digest
from kubetrain.localcluster.nodeagent import STORAGE_CLASS
from tests.e2e.conftest import directory_claim
from tests.e2e.test_training_e2e import ROOT, Job, _step, tiny_lora
from tests.integration.helpers import plugin
from tests.integration.operator_fixtures import OperatorProcess
from tests.trainer.s3server import REGION, S3Server
from tests.trainer.test_fetch import seed_hub

BUCKET = "training-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    from kubetrain.trainer.lora.model import random_model  # noqa: PLC0415 - torch, only here

    server = S3Server()
    store = server.client()
    store.create_bucket(Bucket=BUCKET)
    lines = [
        json.dumps({"prompt": f"What is {i} + 1?", "completion": f" {i + 1}"}) for i in range(512)
    ]
    store.put_object(Bucket=BUCKET, Key="datasets/sums/train.jsonl", Body="\n".join(lines).encode())
    saved = tmp_path_factory.mktemp("llama-tiny")
    model, tokenizer = random_model("llama-tiny", seed=0)
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    for path in sorted(p for p in saved.rglob("*") if p.is_file()):
        key = f"models/llama-tiny/{path.relative_to(saved)}"
        store.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    server.require_auth()
    yield server
    server.stop()


def keys(core: client.CoreV1Api, namespace: str, s3: S3Server, name: str = "s3-keys") -> None:
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={
                "AWS_ACCESS_KEY_ID": s3.key,
                "AWS_SECRET_ACCESS_KEY": s3.secret,
                "AWS_ENDPOINT_URL": s3.endpoint,
                "AWS_REGION": REGION,
            },
        ),
    )


def remote_lora(name: str) -> dict[str, Any]:
    manifest = tiny_lora(name)
    spec = manifest["spec"]
    credentials = {"secretName": "s3-keys"}
    spec["dataset"] = {
        "uri": f"s3://{BUCKET}/datasets/sums/",
        "format": "jsonl",
        "credentials": credentials,
    }
    spec["llm"] |= {"baseModel": f"s3://{BUCKET}/models/llama-tiny/", "credentials": credentials}
    spec["checkpoint"] |= {"intervalSteps": 16}
    return manifest


@pytest.fixture
def job(
    api_client: client.ApiClient,
    e2e_namespace: str,
    e2e_operator: OperatorProcess,
    s3: S3Server,
) -> Job:
    keys(client.CoreV1Api(api_client), e2e_namespace, s3)
    return Job(api_client, e2e_namespace, "remote", e2e_operator)


def _env(pod: client.V1Pod) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env if e.value is not None}


def test_a_lora_job_trains_from_s3_and_never_fetches_twice(job: Job, s3: S3Server) -> None:
    job.create(remote_lora("remote"))
    fetching = job.until(lambda s: s.get("phase") == "Initializing", "Initializing")
    assert fetching["initialization"]["state"] == "Fetching"
    running = job.until(lambda s: _step(s) > 0, "training from the fetched copies")
    sources = {s["name"]: s for s in running["initialization"]["sources"]}
    assert set(sources) == {"dataset", "baseModel"}
    assert sources["baseModel"]["path"].startswith("/checkpoints/.cache/models/")
    assert sources["dataset"]["files"] == 1 and sources["baseModel"]["files"] >= 3
    worker = job.core.read_namespaced_pod("remote-worker-0-a1", job.ns)
    env = _env(worker)
    assert env["KUBETRAIN_BASE_MODEL_PATH"] == sources["baseModel"]["path"]
    assert env["KUBETRAIN_DATASET_PATH"] == sources["dataset"]["path"]
    secrets = [v for v in worker.spec.volumes if v.secret is not None]
    assert secrets == [], "the workers never see the source credentials"
    fetched = s3.downloads()
    assert fetched == 1 + sources["baseModel"]["files"], "each object downloaded once"

    job.until(lambda s: s.get("latestCheckpoint"), "a checkpoint")
    job.patch({"suspend": True})
    job.until(lambda s: s.get("phase") == "Stopped", "Stopped")
    job.patch({"suspend": False})
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed after the resume")
    assert done["attempt"] == 2 and _step(done) == done["progress"]["totalSteps"]
    assert s3.downloads() == fetched, "the resumed attempt read the cache, not the bucket"
    pods = [p.metadata.name for p in job.core.list_namespaced_pod(job.ns).items]
    assert [p for p in pods if "-fetch-" in p] == ["remote-fetch-1"]


def test_a_missing_object_fails_the_job_at_once(job: Job) -> None:
    manifest = remote_lora("remote")
    manifest["spec"]["dataset"]["uri"] = f"s3://{BUCKET}/datasets/nowhere/"
    job.create(manifest)
    failed = job.until_failed("DatasetNotFound")
    assert f"s3://{BUCKET}/datasets/nowhere/" in failed["message"]
    assert failed.get("failures", 0) == 0


def test_refused_credentials_are_access_denied_naming_the_secret(job: Job, s3: S3Server) -> None:
    job.core.create_namespaced_secret(
        job.ns,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="stale-keys"),
            string_data={
                "AWS_ACCESS_KEY_ID": "AKIAOLDKEY",
                "AWS_SECRET_ACCESS_KEY": "not-the-secret",
                "AWS_ENDPOINT_URL": s3.endpoint,
                "AWS_REGION": REGION,
            },
        ),
    )
    manifest = remote_lora("remote")
    manifest["spec"]["dataset"]["credentials"] = {"secretName": "stale-keys"}
    job.create(manifest)
    failed = job.until_failed("AccessDenied")
    assert "stale-keys" in failed["message"] and "not-the-secret" not in failed["message"]


def test_the_llama_example_trains_on_two_workers_from_s3(
    api_client: client.ApiClient, e2e_namespace: str, e2e_operator: OperatorProcess, s3: S3Server
) -> None:
    """examples/llama2-7b-lora.yaml as it is, with tiny stand-ins for its dataset and base
    model on the loopback server, and its credentials in the Secrets it names."""
    core = client.CoreV1Api(api_client)
    for name, data in (
        ("training-data-s3", {"access-key-id": s3.key, "secret-access-key": s3.secret}),
        ("huggingface", {"token": "hf_unused"}),
    ):
        core.create_namespaced_secret(
            e2e_namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data),
        )
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "llama2-7b-lora.yaml").read_text()
    )
    spec = manifest["spec"]
    spec["dataset"]["uri"] = f"s3://{BUCKET}/datasets/sums/"
    spec["llm"]["baseModel"] = f"s3://{BUCKET}/models/llama-tiny/"
    spec["env"] += [
        {"name": "AWS_ENDPOINT_URL", "value": s3.endpoint},
        {"name": "AWS_REGION", "value": REGION},
    ]
    spec["checkpoint"]["size"] = "1Gi"
    job = Job(api_client, e2e_namespace, manifest["metadata"]["name"], e2e_operator)
    job.create(manifest)
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    assert done["resourceAllocation"]["workers"] == 2
    assert {s["name"] for s in done["initialization"]["sources"]} == {"dataset", "baseModel"}
    assert _step(done) == done["progress"]["totalSteps"] > 0
    assert done["model"]["path"]


def test_jobs_on_one_shared_cache_fetch_one_copy(
    api_client: client.ApiClient, e2e_namespace: str, e2e_operator: OperatorProcess, s3: S3Server
) -> None:
    core = client.CoreV1Api(api_client)
    keys(core, e2e_namespace, s3)
    core.create_namespaced_persistent_volume_claim(
        e2e_namespace,
        client.V1PersistentVolumeClaim(
            metadata=client.V1ObjectMeta(name="model-cache"),
            spec=client.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteMany"],
                storage_class_name=STORAGE_CLASS,
                resources=client.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    before = s3.downloads()
    jobs = []
    for name in ("first", "second"):
        manifest = remote_lora(name)
        manifest["spec"]["cache"] = {"claimName": "model-cache"}
        manifest["spec"]["training"]["epochs"] = 1
        job = Job(api_client, e2e_namespace, name, e2e_operator)
        job.create(manifest)
        jobs.append(job)
        done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
        sources = done["initialization"]["sources"]
        assert all(s["path"].startswith("/cache/") for s in sources)
        if name == "second":
            assert all(s.get("reused") for s in sources), "the second job downloaded nothing"
    files = 1 + next(s for s in sources if s["name"] == "baseModel")["files"]
    assert s3.downloads() - before == files, "one copy for both jobs"


def test_the_result_is_published_and_downloaded_with_one_command(
    job: Job, s3: S3Server, cluster: Any, tmp_path: Path
) -> None:
    manifest = remote_lora("remote")
    manifest["spec"]["training"]["epochs"] = 1
    manifest["spec"]["output"] = {
        "uri": f"s3://{BUCKET}/results/remote/",
        "credentials": {"secretName": "s3-keys"},
    }
    job.create(manifest)
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    model = done["model"]
    assert model["uri"] == f"s3://{BUCKET}/results/remote/"
    assert model["digest"].startswith("sha256:") and model["sizeBytes"] > 0
    published = next(c for c in done["conditions"] if c["type"] == "Published")
    assert published["status"] == "True" and published["reason"] == "Uploaded"

    # kubectl train download, with this machine's own S3 credentials (the default chain).
    env = os.environ | {
        "AWS_ACCESS_KEY_ID": s3.key,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": REGION,
    }
    target = tmp_path / "from-s3"
    run = subprocess.run(
        [str(plugin()), "--kubeconfig", str(cluster.kubeconfig), "-n", job.ns,
         "download", "remote", str(target)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "model downloaded to" in run.stdout
    assert (target / "kubetrain-model.json").is_file()
    assert tree_digest(target)[0] == model["digest"]
    # The download off the volume (exec into a short-lived Pod) needs a real kubelet: the
    # stand-in here serves no exec, so tests/node proves it.


def test_a_failed_upload_is_a_condition_and_the_model_stays_on_the_volume(job: Job) -> None:
    manifest = remote_lora("remote")
    manifest["spec"]["training"]["epochs"] = 1
    manifest["spec"]["output"] = {
        "uri": "s3://no-such-bucket/results/",
        "credentials": {"secretName": "s3-keys"},
    }
    job.create(manifest)
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    published = next(c for c in done["conditions"] if c["type"] == "Published")
    assert published["status"] == "False" and published["reason"] == "UploadFailed"
    assert "s3://no-such-bucket/results/" in published["message"]
    assert done["model"]["path"] and not done["model"].get("uri")
    events = job.core.list_namespaced_event(job.ns).items
    assert any(e.reason == "UploadFailed" and e.type == "Warning" for e in events)


def test_a_vision_job_trains_from_an_s3_image_folder_and_publishes_its_onnx_model(
    api_client: client.ApiClient, e2e_namespace: str, e2e_operator: OperatorProcess, s3: S3Server
) -> None:
    from PIL import Image  # noqa: PLC0415 - the vision extra, only here

    store = s3.client()
    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        for i in range(12):
            picture = io.BytesIO()
            Image.new("RGB", (32, 32), tuple(min(255, c + 3 * i) for c in colour)).save(
                picture, format="PNG"
            )
            key = f"datasets/colours/{label}/{i}.png"
            store.put_object(Bucket=BUCKET, Key=key, Body=picture.getvalue())
    keys(client.CoreV1Api(api_client), e2e_namespace, s3)
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "examples" / "tiny-vision-cpu.yaml").read_text()
    )
    spec = manifest["spec"]
    credentials = {"secretName": "s3-keys"}
    spec["dataset"] = {"uri": f"s3://{BUCKET}/datasets/colours/", "format": "imagefolder",
                       "credentials": credentials}  # fmt: skip
    spec["vision"]["numClasses"] = 2
    spec["output"] = {"uri": f"s3://{BUCKET}/results/colours/", "credentials": credentials}
    vision = Job(api_client, e2e_namespace, "tiny-vision", e2e_operator)
    vision.create(manifest)
    done = vision.until(lambda s: s.get("phase") == "Completed", "Completed")
    (dataset,) = done["initialization"]["sources"]
    assert dataset["files"] == 24
    assert done["model"]["uri"] == f"s3://{BUCKET}/results/colours/"
    uploaded = store.list_objects_v2(Bucket=BUCKET, Prefix="results/colours/")["Contents"]
    assert any(o["Key"].endswith(".onnx") for o in uploaded)


def test_a_hub_model_comes_from_a_seeded_shared_cache_with_the_hub_offline(
    api_client: client.ApiClient,
    e2e_namespace: str,
    e2e_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    """An air-gapped platform: the hub cache is seeded onto a shared claim, the hub is never
    reached (HF_HUB_OFFLINE), and a job names its base model by hub id."""
    from kubetrain.trainer.lora.model import random_model  # noqa: PLC0415 - torch, only here

    saved = tmp_path / "saved"
    model, tokenizer = random_model("llama-tiny", seed=0)
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    root = tmp_path / "hub-cache"
    files = {
        p.relative_to(saved).as_posix(): p.read_bytes() for p in saved.rglob("*") if p.is_file()
    }
    commit = seed_hub(root, "model", "kubetrain/llama-tiny", files)
    core = client.CoreV1Api(api_client)
    volume = directory_claim(core, e2e_namespace, "hub-cache", root)
    manifest = tiny_lora("hub")
    spec = manifest["spec"]
    spec["llm"]["baseModel"] = "kubetrain/llama-tiny"
    spec["cache"] = {"claimName": "hub-cache"}
    spec["env"] = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    spec["training"]["epochs"] = 1
    job = Job(api_client, e2e_namespace, "hub", e2e_operator)
    job.create(manifest)
    done = job.until(lambda s: s.get("phase") == "Completed", "Completed")
    (source,) = done["initialization"]["sources"]
    assert source["name"] == "baseModel" and source["revision"] == commit
    assert source["path"] == (
        f"/cache/huggingface/hub/models--kubetrain--llama-tiny/snapshots/{commit}"
    )
    assert source.get("reused") is True, "nothing was downloaded: it was all in the cache"
    core.delete_persistent_volume(volume)
