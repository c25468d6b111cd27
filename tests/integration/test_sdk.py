"""``kubetrain.Client`` against the real control plane with the real operator.

The test plays kubelet and trainer (``kubelet.py``) from a second thread where a call
blocks (``wait``), exactly as a trainer would report while a script waits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetrain.api import ModelType, Phase, Priority
from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.nodeagent import NodeAgent
from kubetrain.sdk import (
    STOP_REASON_ANNOTATION,
    CatalogueFallbackWarning,
    Client,
    ConflictError,
    ConversionWarning,
    JobPage,
    NotFoundError,
    PermissionDeniedError,
    PollTimeoutError,
    ValidationError,
)
from tests.integration import helpers, kubelet
from tests.integration.test_operator import bound_claim
from tests.polling import eventually

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def sdk(cluster: ControlPlane, namespace: str) -> Iterator[Client]:
    with helpers.sdk_client(cluster, namespace) as connected:
        yield connected


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """A thread that plays the trainer while the test blocks in the SDK."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


def _train_to_completion(core: client.CoreV1Api, namespace: str, job: str) -> None:
    pod = helpers.start_worker(core, namespace, job)
    for step in (20, 50, 80):
        helpers.progress(core, namespace, pod, step)
    helpers.complete(core, namespace, pod)


def test_create_returns_a_typed_job_and_waits_for_completion(
    sdk: Client, core: client.CoreV1Api, namespace: str, background: ThreadPoolExecutor
) -> None:
    trainer = background.submit(_train_to_completion, core, namespace, "llama")
    done = helpers.create_llm(sdk, core, "llama", priority="high", wait=True, timeout=90)
    trainer.result(timeout=5)

    assert done.metadata.name == "llama" and done.metadata.uid
    assert done.spec.model_type is ModelType.LLM and done.spec.priority is Priority.HIGH
    assert done.spec.llm is not None and done.spec.llm.base_model == helpers.BASE_MODEL
    assert done.status.phase is Phase.COMPLETED
    assert done.status.progress is not None and done.status.progress.percentage == 100.0
    assert done.status.model is not None
    assert done.status.model.path == "/checkpoints/output/adapter"
    assert done.status.estimated_cost is not None and done.status.estimated_cost.hourly_usd == 3.0
    # Waiting on a finished job returns at once.
    assert sdk.wait_for_completion("llama", timeout=10).status.phase is Phase.COMPLETED


def test_a_managed_training_request_creates_the_job_and_waits_as_it_asks(
    sdk: Client, core: client.CoreV1Api, namespace: str, background: ThreadPoolExecutor
) -> None:
    bound_claim(core, namespace, "ds-1234567890abcdef", create_claim=True)
    bound_claim(core, namespace, "llama-7b-finetune-checkpoints", create_claim=False)
    request = {
        "name": "llama-7b-finetune",
        "modelType": "llm",
        "datasetId": "ds_1234567890abcdef",
        "config": {
            "baseModel": helpers.BASE_MODEL,
            "parameters": {"rank": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"]},
            "training": {"epochs": 2, "batch_size": 4, "learning_rate": 2e-4},
        },
        "gpuType": "a100",
        "maxWorkers": 1,
        "priority": "high",
        "checkpoint": helpers.CHECKPOINT,  # a kubetrain field rides along
    }

    def trainer() -> client.V1Pod:
        pod = helpers.live_pod(core, namespace, "llama-7b-finetune")
        _train_to_completion(core, namespace, "llama-7b-finetune")
        return pod

    playing = background.submit(trainer)
    with pytest.warns(ConversionWarning, match="PersistentVolumeClaim 'ds-1234567890abcdef'"):
        done = sdk.create_from_request(request, wait=True, timeout=90.0, poll_interval=5.0)
    pod = playing.result(timeout=5)

    assert done.status.phase is Phase.COMPLETED and done.spec.priority is Priority.HIGH
    assert done.spec.dataset.pvc is not None
    assert done.spec.dataset.pvc.claim_name == "ds-1234567890abcdef"
    assert done.spec.llm is not None and done.spec.llm.lora is not None
    assert done.spec.llm.lora.target_modules == ["q_proj", "v_proj"]
    claims = {
        v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim
    }
    assert "ds-1234567890abcdef" in claims

    config = {**request["config"], "scheduler": "cosine"}
    with pytest.raises(ValidationError) as bad:
        sdk.create_from_request({**request, "name": "other", "config": config})
    assert bad.value.field == "config.scheduler" and bad.value.status is None
    with pytest.raises(ValidationError) as unknown:
        sdk.create_from_request(request, name_suffix="x")
    assert unknown.value.field == "name_suffix" and len(sdk.list()) == 1


def test_a_job_without_a_name_gets_a_generated_one(sdk: Client) -> None:
    job = sdk.create(
        model_type="vision",
        dataset="hf://datasets/cifar10",
        vision={"task": "classification", "architecture": "resnet18"},
        gpu_type="a100",
    )
    assert job.metadata.name is not None and job.metadata.name.startswith("tj-")
    assert sdk.get(job.metadata.name).metadata.uid == job.metadata.uid
    assert job.spec.dataset.uri == "hf://datasets/cifar10"


def _make_many(sdk: Client) -> None:
    for i in range(15):  # five of them name a GPU type the catalogue lacks: Failed at once
        sdk.create(
            f"llm-{i:02d}",
            model_type="llm",
            dataset={"synthetic": {}},
            llm={"baseModel": helpers.BASE_MODEL},
            gpu_type="tpu-v5" if i >= 10 else "a100",
            labels={"team": "nlp"},
        )
    for i in range(10):
        sdk.create(
            f"vis-{i:02d}",
            model_type="vision",
            dataset={"synthetic": {}},
            vision={"task": "detection", "architecture": "yolov8n"},
            priority="high",
        )


def test_list_filters_on_the_server_and_pages_through_many_jobs(sdk: Client) -> None:
    _make_many(sdk)

    def five_failed() -> JobPage | None:
        page = sdk.list(status="failed")
        return page if len(page) == 5 else None

    failed = eventually(five_failed, timeout=60, what="five jobs Failed on an unknown GPU type")
    assert [j.metadata.name for j in failed] == [f"llm-{i}" for i in range(10, 15)]
    assert all(j.status.phase is Phase.FAILED for j in failed)

    # Several phases: every job but the failed ones (a job not yet seen counts as Pending).
    active = sdk.list(status=["Pending", "Queued", "Running"])
    assert len(active) == 20 and not {j.metadata.name for j in active} & {"llm-10", "llm-14"}
    assert len(sdk.list(status=["failed", "completed"])) == 5

    assert {j.metadata.name for j in sdk.list(model_type="vision")} == {
        f"vis-{i:02d}" for i in range(10)
    }
    assert len(sdk.list(priority=Priority.HIGH)) == 10
    assert len(sdk.list(labels={"team": "nlp"})) == 15
    assert len(sdk.list(model_type="llm", status="failed")) == 5

    first = sdk.list(limit=10)
    assert len(first) == 10 and first.continue_token and first.remaining == 15
    second = sdk.list(limit=10, continue_token=first.continue_token)
    third = sdk.list(limit=10, continue_token=second.continue_token)
    assert len(second) == 10 and len(third) == 5 and third.continue_token is None
    paged = [j.metadata.name for page in (first, second, third) for j in page]
    assert len(set(paged)) == 25

    assert [j.metadata.name for j in sdk.iter(page_size=10)] == paged
    assert len(list(sdk.iter(model_type="vision", page_size=3))) == 10

    last_by_name = sdk.list(sort="name", order="desc", limit=3)
    assert [j.metadata.name for j in last_by_name] == ["vis-09", "vis-08", "vis-07"]
    assert last_by_name.continue_token is None
    with pytest.raises(ValueError, match="unknown status"):
        sdk.list(status="sleeping")


def test_stop_waits_for_stopped_and_resume_continues_from_a_chosen_checkpoint(
    sdk: Client, core: client.CoreV1Api, namespace: str, background: ThreadPoolExecutor
) -> None:
    helpers.create_llm(sdk, core, "pausable")
    pod = helpers.start_worker(core, namespace, "pausable")
    helpers.progress(
        core,
        namespace,
        pod,
        20,
        checkpoints=[
            kubelet.checkpoint("step-10", 1, 10, 1.9),
            kubelet.checkpoint("step-20", 1, 20, 1.8),
        ],
    )
    eventually(lambda: len(sdk.checkpoints("pausable")) == 2, what="two checkpoints in status")
    with pytest.raises(ConflictError, match="stop it before resuming"):
        sdk.resume("pausable", "step-10")

    terminating = background.submit(helpers.finish_stopping, core, namespace, "pausable")
    stopped = sdk.stop("pausable", reason="node maintenance", wait=True, timeout=60)
    terminating.result(timeout=60)
    assert stopped.status.phase is Phase.STOPPED and stopped.spec.suspend
    assert stopped.metadata.annotations[STOP_REASON_ANNOTATION] == "node maintenance"
    assert [c.id for c in sdk.checkpoints("pausable")] == ["step-10", "step-20"]

    with pytest.raises(NotFoundError, match="available: step-10, step-20"):
        sdk.resume("pausable", "step-99")
    assert sdk.get("pausable").status.phase is Phase.STOPPED  # the bad id never reached it

    resumed = sdk.resume("pausable", "step-10")
    assert not resumed.spec.suspend and resumed.spec.resume_from == "step-10"
    assert STOP_REASON_ANNOTATION not in resumed.metadata.annotations
    second = helpers.live_pod(core, namespace, "pausable", attempt=2)
    assert helpers.pod_env(second)["RESUME_FROM"] == "step-10"
    assert sdk.resume("pausable").spec.resume_from == "step-10"  # already running: unchanged


def test_an_invalid_spec_is_rejected_locally_naming_the_field(sdk: Client) -> None:
    with pytest.raises(ValidationError) as bad:
        sdk.create(
            "too-fast",
            model_type="llm",
            dataset={"synthetic": {}},
            llm={"baseModel": helpers.BASE_MODEL},
            training={"learning_rate": 5},
        )
    assert bad.value.field == "spec.training.learningRate"
    assert "less than or equal to 0.1" in (bad.value.rule or "")
    assert bad.value.status is None  # never sent
    with pytest.raises(ValidationError) as missing:
        sdk.create("no-llm", model_type="llm", dataset={"synthetic": {}})
    assert missing.value.field == "spec.llm"
    assert len(sdk.list()) == 0


def test_the_api_servers_rejections_become_typed_errors(
    sdk: Client, core: client.CoreV1Api
) -> None:
    helpers.create_llm(sdk, core, "fixed", storage=False)
    with pytest.raises(ValidationError) as immutable:
        sdk.patch("fixed", {"llm": {"baseModel": "mistralai/Mistral-7B-v0.1"}})
    assert immutable.value.status == 422
    assert immutable.value.field == "spec.llm.baseModel"
    assert "immutable" in (immutable.value.rule or "")
    assert sdk.get("fixed").spec.llm.base_model == helpers.BASE_MODEL  # type: ignore[union-attr]

    assert sdk.patch("fixed", {"training": {"epochs": 5}}).spec.training.epochs == 5
    with pytest.raises(ConflictError) as exists:
        helpers.create_llm(sdk, core, "fixed", storage=False)
    assert exists.value.status == 409
    with pytest.raises(NotFoundError):
        sdk.get("nothing-here")
    with pytest.raises(NotFoundError):
        sdk.stop("nothing-here")


def test_a_wait_that_times_out_raises_and_leaves_the_job_running(
    sdk: Client, core: client.CoreV1Api, namespace: str
) -> None:
    helpers.create_llm(sdk, core, "slow")
    pod = helpers.start_worker(core, namespace, "slow")
    helpers.progress(core, namespace, pod, 10)
    eventually(lambda: sdk.get("slow").status.phase is Phase.RUNNING, what="phase Running")

    started = time.monotonic()
    with pytest.raises(PollTimeoutError) as timed_out:
        sdk.wait_for_completion("slow", timeout=2)
    assert time.monotonic() - started >= 2  # it waited its whole timeout (however loaded)
    assert timed_out.value.phase == "Running" and "keeps running" in str(timed_out.value)
    job = sdk.get("slow")
    assert job.status.phase is Phase.RUNNING and not job.spec.suspend
    assert core.read_namespaced_pod(pod, namespace).metadata.deletion_timestamp is None


def test_cancel_can_keep_the_checkpoint_claim(
    sdk: Client, core: client.CoreV1Api, namespace: str
) -> None:
    for name in ("kept", "dropped"):
        helpers.create_llm(sdk, core, name)
        helpers.live_pod(core, namespace, name)
        eventually(
            lambda n=name: (
                core.read_namespaced_persistent_volume_claim(
                    f"{n}-checkpoints", namespace
                ).metadata.owner_references
            ),
            what=f"the checkpoint claim of {name}",
        )
    assert sdk.cancel("kept", keep_checkpoints=True).kept_claim == "kept-checkpoints"
    assert sdk.cancel("dropped").kept_claim is None
    for pod in core.list_namespaced_pod(namespace).items:  # no kubelet: end the deletions
        with contextlib.suppress(ApiException):  # already gone is fine
            core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)

    def collected() -> bool:
        claims = {
            c.metadata.name: c
            for c in core.list_namespaced_persistent_volume_claim(namespace).items
            if c.metadata.deletion_timestamp is None
        }
        return "dropped-checkpoints" not in claims

    eventually(collected, timeout=60, what="garbage collection of both jobs' children")
    claim = core.read_namespaced_persistent_volume_claim("kept-checkpoints", namespace)
    assert claim.metadata.deletion_timestamp is None and not claim.metadata.owner_references
    with pytest.raises(NotFoundError):
        sdk.get("kept")


WAITS_FOR_A_GO = """
import os, sys, time
for step in range(3):
    print(f"step {step}")
while not os.path.exists(sys.argv[1]):  # the test says when to go on
    time.sleep(0.05)
print("done")
"""


def test_logs_stream_from_the_workers_pod(
    sdk: Client,
    core: client.CoreV1Api,
    namespace: str,
    node_agent: NodeAgent,
    tmp_path: Path,
) -> None:
    go = tmp_path / "go"
    pod = helpers.worker_pod_on_agent(
        core, namespace, "chatty", node_agent.node_names[-1], WAITS_FOR_A_GO, str(go)
    )
    assert sdk.worker_pod("chatty") == pod

    def started() -> bool:
        statuses = core.read_namespaced_pod(pod, namespace).status.container_statuses or []
        return bool(statuses and statuses[0].state.running)

    eventually(started, timeout=60, what="the trainer container running")
    following = sdk.logs("chatty", follow=True)
    assert [next(following) for _ in range(3)] == ["step 0", "step 1", "step 2"]
    go.touch()  # lines written from now on arrive on the open stream
    assert list(following) == ["done"]  # and the stream ends with the container
    assert list(sdk.logs("chatty", tail_lines=2)) == ["step 2", "done"]
    with pytest.raises(NotFoundError, match="no Pod for worker 1"):
        sdk.logs("chatty", worker=1)


def test_rbac_refusals_are_permission_denied(
    cluster: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    token = core.create_namespaced_service_account_token(
        "nobody",
        namespace,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[])),
    ).status.token
    configuration = client.Configuration()
    configuration.host = cluster.server
    configuration.ssl_ca_cert = str(cluster.pki_dir / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    with Client(api_client=client.ApiClient(configuration), namespace=namespace) as nobody:
        with pytest.raises(PermissionDeniedError) as denied:
            nobody.list()
        assert denied.value.status == 403 and "forbidden" in denied.value.message


def test_estimate_uses_the_clusters_catalogue_or_says_it_fell_back(
    cluster: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    config = {
        "catalogue": {
            "defaultType": "l4",
            "gpuTypes": {"a100": {"pricePerHour": 2.5}, "mi300x": {"pricePerHour": 3.75}},
        }
    }
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="kubetrain-config"),
            data={"config.yaml": yaml.safe_dump(config)},
        ),
    )
    with Client(
        kubeconfig=cluster.kubeconfig, namespace=namespace, config_namespace=namespace
    ) as sdk:
        priced = sdk.estimate("a100", workers=2, gpus_per_worker=4, hours=10)
        assert (priced.hourly_usd, priced.total_usd) == (20.0, 200.0)
        assert priced.source == "cluster" and priced.warning is None
        assert sdk.estimate("mi300x").hourly_usd == 3.75
        assert sdk.estimate("cpu", workers=3).hourly_usd == pytest.approx(0.3)  # per worker
        with pytest.raises(ValidationError, match="'tpu' is not in the GPU catalogue"):
            sdk.estimate("tpu")

    with (
        Client(
            kubeconfig=cluster.kubeconfig, namespace=namespace, config_map="no-such-config"
        ) as sdk,
        pytest.warns(CatalogueFallbackWarning, match="no-such-config"),
    ):
        fallback = sdk.estimate("a100", hours=2)
    assert fallback.source == "defaults" and fallback.warning
    assert (fallback.hourly_usd, fallback.total_usd) == (3.0, 6.0)
