"""The trainer images run the Pods the operator renders: the LoRA trainer stops with a
checkpoint on SIGTERM and a second container resumes from it, the vision trainer exports an
ONNX model that ONNX Runtime loads, the fetch entry point works from the image it runs in,
the download's export runs by exec in the operator image's small download Pod, and a GPU job
on a node without a usable NVIDIA driver fails at once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.images.containers import PodContainer, image_config
from tests.polling import eventually
from tests.trainer.s3server import REGION, S3Server

from kubetrain.api.job import TrainingJob
from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, MODEL_MANIFEST, tree_digest
from kubetrain.operator.placement import Placement
from kubetrain.operator.render import fetch_pod, worker_pod
from kubetrain.operator.settings import Settings
from kubetrain.sdk import download

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
REPORT = "/tmp/kubetrain-report.json"  # on the Pod's /tmp emptyDir: the host reads it there
TRAINER_UID = 1000


def job_from(example: str, **spec: Any) -> TrainingJob:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    manifest["metadata"] |= {"namespace": "images", "uid": "uid-images", "generation": 1}
    manifest["spec"] |= spec
    return TrainingJob.model_validate(manifest)


def placement(job: TrainingJob, settings: Settings) -> Placement:
    gpu_type = settings.catalogue.gpu_type_for(job.spec)
    entry = settings.catalogue.get(gpu_type)
    assert entry is not None
    return Placement.resolve(job.spec, gpu_type, entry)


def worker(job: TrainingJob, attempt: int, settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or Settings()
    return worker_pod(job, 0, attempt=attempt, resume_from="",
                      placement=placement(job, settings), settings=settings)  # fmt: skip


def volume(path: Path) -> Path:
    """A folder standing for a PersistentVolume, owned as the Pod's fsGroup would make it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, TRAINER_UID, TRAINER_UID)
    return path


def report(container: PodContainer) -> dict[str, Any]:
    path = container.scratch / f"{container.name}-tmp" / Path(REPORT).name
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o755)
    yield tmp_path


def test_the_lora_image_stops_with_a_checkpoint_and_a_second_container_resumes_there(
    built: dict[str, dict[str, Any]], scratch: Path, containers: list[PodContainer]
) -> None:
    image = built["trainer-lora"]
    job = job_from("tiny-lora-cpu.yaml")
    first = worker(job, attempt=1)
    # The image's own ENTRYPOINT runs: it is the command the operator renders.
    assert (
        first["spec"]["containers"][0]["command"]
        == image_config(image["tag"])["Config"]["Entrypoint"]
    )
    checkpoints = volume(scratch / "checkpoints")
    trainer = PodContainer(first, image["tag"], scratch, volumes={"checkpoints": checkpoints},
                           env={"KUBETRAIN_REPORT_FILE": REPORT}, use_command=False)  # fmt: skip
    containers.append(trainer.start())
    eventually(lambda: report(trainer).get("checkpoints"), timeout=300,
               what=f"a first checkpoint; log:\n{trainer.logs()[-3000:]}")  # fmt: skip

    code = trainer.stop()  # SIGTERM, then SIGKILL after the Pod's grace period
    assert code == EXIT_STOPPED, f"exit {code}:\n{trainer.logs()[-3000:]}"
    stopped = report(trainer)
    assert (
        stopped["state"] == "stopping" or stopped["state"] == "completed" or stopped["checkpoints"]
    )
    last = max(stopped["checkpoints"], key=lambda c: c["step"])
    assert last["step"] == stopped["step"], "the SIGTERM checkpoint is at the step it stopped"
    assert (checkpoints / last["id"]).is_dir()

    resumed = PodContainer(worker(job, attempt=2), image["tag"], scratch,
                           volumes={"checkpoints": checkpoints},
                           env={"KUBETRAIN_REPORT_FILE": REPORT})  # fmt: skip
    containers.append(resumed.start())
    code = resumed.wait(timeout=900)
    logs = resumed.logs()
    assert code == 0, f"exit {code}:\n{logs[-3000:]}"
    assert f"resuming from checkpoint {last['id']} (step {last['step']})" in logs
    done = report(resumed)
    assert done["state"] == "completed" and done["step"] == done["totalSteps"]
    assert done["model"]["path"].startswith("/checkpoints/")
    assert resumed.termination_message().startswith("completed") or resumed.termination_message()

    # `kubectl train download`: the operator image's download Pod holds the volume read-only
    # and the SDK's export runs in it by exec; the model comes back, digest checked.
    model = done["model"]
    exporter = download_pod(built, scratch, checkpoints)
    containers.append(exporter.start())
    dest = scratch / "downloaded"
    copied = exec_export(exporter, model["path"], dest, model.get("digest") or None)
    assert copied > 0 and any(dest.rglob("*.safetensors"))


def download_pod(built: dict[str, dict[str, Any]], scratch: Path, claim: Path) -> PodContainer:
    """The Pod ``kubectl train download`` starts (the operator image), ``claim`` its volume."""
    image = built["operator"]
    pod = download.export_pod("tiny-lora-download", "tiny-lora", "tiny-lora-checkpoints",
                              image["ref"], hold=600)  # fmt: skip
    return PodContainer(pod, image["tag"], scratch, volumes={"model": claim})


def exec_export(
    pod: PodContainer,
    path: str,
    dest: Path,
    digest: str | None,
    progress: download.Progress | None = None,
) -> int:
    """What the SDK does once the Pod runs: exec the export in it and unpack its stdout,
    the copy counting only when the export exited 0."""
    eventually(pod.running, timeout=60, what="the download Pod to run")
    process = pod.exec(*download.export_command(path))
    assert process.stdout is not None and process.stderr is not None
    try:
        with download.staged(dest) as part:
            try:
                copied = download.unpack(process.stdout, part, digest, progress)
            finally:  # as the SDK does: the export's own error is the one to report
                code = process.wait(timeout=60)
                assert code == 0, f"exit {code}: {process.stderr.read().decode()}"
    finally:
        process.kill()
        process.wait(timeout=60)
    return copied


def test_the_operator_image_exports_a_60_mb_model_by_exec_within_the_pods_limits(
    built: dict[str, dict[str, Any]], scratch: Path, containers: list[PodContainer]
) -> None:
    checkpoints = volume(scratch / "checkpoints")
    model = volume(checkpoints / "run-1" / "model")
    (model / "model.safetensors").write_bytes(os.urandom(60 * 1000 * 1000))
    (model / MODEL_MANIFEST).write_text(json.dumps({"kind": "lora"}))
    for path in (model / "model.safetensors", model / MODEL_MANIFEST):
        os.chown(path, TRAINER_UID, TRAINER_UID)
    digest, size, _ = tree_digest(model)
    exporter = download_pod(built, scratch, checkpoints)
    # The container gets the Pod's limits, read-only root and user (tests.images.containers).
    argv = exporter.argv()
    assert "--read-only" in argv and "--cap-drop=ALL" in argv and "--user=1000:1000" in argv
    assert any(a.startswith("--memory=") for a in argv) and any(
        a.startswith("--cpus=") for a in argv
    )
    containers.append(exporter.start())
    seen: list[int] = []
    dest = scratch / "downloaded"
    copied = exec_export(exporter, "/checkpoints/run-1/model", dest, digest,
                         lambda done, total: seen.append(done))  # fmt: skip
    assert copied == size and tree_digest(dest)[0] == digest
    assert seen[-1] == size and seen == sorted(seen) and len(seen) > 50
    assert exporter.state()["OOMKilled"] is False

    # A path that is not on the volume: the export says so, and nothing is left.
    with pytest.raises(AssertionError, match="exit 2: export: /model-volume/run-2/model does not"):
        exec_export(exporter, "/checkpoints/run-2/model", scratch / "nothing", None)
    assert not (scratch / "nothing").exists()
    assert not [p for p in scratch.iterdir() if ".partial-" in p.name]

    # Its main process waits for the next exec, and SIGTERM (the Pod's deletion) ends it at once.
    assert exporter.running()
    assert exporter.stop() == 0


def test_the_vision_image_exports_onnx_that_onnx_runtime_loads(
    built: dict[str, dict[str, Any]], scratch: Path, containers: list[PodContainer]
) -> None:
    image = built["trainer-vision"]
    job = job_from("tiny-vision-cpu.yaml")
    checkpoints = volume(scratch / "checkpoints")
    trainer = PodContainer(worker(job, attempt=1), image["tag"], scratch,
                           volumes={"checkpoints": checkpoints},
                           env={"KUBETRAIN_REPORT_FILE": REPORT})  # fmt: skip
    containers.append(trainer.start())
    code = trainer.wait(timeout=900)
    assert code == 0, f"exit {code}:\n{trainer.logs()[-3000:]}"
    onnx = sorted(checkpoints.rglob("*.onnx"))
    assert onnx, f"no ONNX model under {checkpoints}"
    inside = f"/checkpoints/{onnx[0].relative_to(checkpoints)}"
    check = (
        "import numpy as np, onnxruntime as ort, sys\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "i = s.get_inputs()[0]\n"
        "out = s.run(None, {i.name: np.zeros([1, 3, 32, 32], dtype=np.float32)})[0]\n"
        "print(out.shape)\n"
    )
    loader = PodContainer(worker(job, attempt=1), image["tag"], scratch,
                          volumes={"checkpoints": checkpoints}, command=["python"],
                          args=["-c", check, inside])  # fmt: skip
    containers.append(loader.start())
    assert loader.wait(timeout=300) == 0, loader.logs()
    assert loader.logs().strip().splitlines()[-1] == "(1, 4)"  # numClasses 4


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    store = server.client()
    store.create_bucket(Bucket="data")
    lines = [json.dumps({"prompt": f"{i} + 1 =", "completion": f" {i + 1}"}) for i in range(64)]
    store.put_object(Bucket="data", Key="sums/train.jsonl", Body="\n".join(lines).encode())
    server.require_auth()
    yield server
    server.stop()


def test_the_fetch_entry_point_fills_the_cache_from_the_image(
    built: dict[str, dict[str, Any]], scratch: Path, containers: list[PodContainer], s3: S3Server
) -> None:
    image = built["trainer-lora"]
    credentials = {"secretName": "s3-keys"}
    dataset = {"uri": "s3://data/sums/", "format": "jsonl", "credentials": credentials}
    job = job_from("tiny-lora-cpu.yaml", dataset=dataset)
    settings = Settings()
    pod = fetch_pod(job, 1, placement=placement(job, settings), settings=settings, cache_claim=None)
    assert pod["spec"]["containers"][0]["image"] == image["ref"]
    keys = scratch / "s3-keys"
    keys.mkdir()
    for name, value in {"AWS_ACCESS_KEY_ID": s3.key, "AWS_SECRET_ACCESS_KEY": s3.secret,
                        "AWS_ENDPOINT_URL": s3.endpoint, "AWS_REGION": REGION}.items():  # fmt: skip
        (keys / name).write_text(value)
        (keys / name).chmod(0o644)
    secrets = {v["name"]: keys for v in pod["spec"]["volumes"] if "secret" in v}
    assert secrets, "the fetch Pod mounts the dataset's credentials"
    checkpoints = volume(scratch / "checkpoints")
    # The host network: the S3 server listens on loopback.
    fetcher = PodContainer(pod, image["tag"], scratch, network="host",
                           volumes={"checkpoints": checkpoints, **secrets})  # fmt: skip
    containers.append(fetcher.start())
    code = fetcher.wait(timeout=300)
    assert code == 0, f"exit {code}:\n{fetcher.logs()[-3000:]}"
    fetched = [p for p in checkpoints.rglob("train.jsonl") if p.is_file()]
    assert fetched and fetched[0].read_text().count("\n") == 63
    assert s3.downloads() == 1


def test_a_gpu_job_on_a_node_without_a_usable_driver_fails_at_once_naming_it(
    built: dict[str, dict[str, Any]], scratch: Path, containers: list[PodContainer]
) -> None:
    labels = image_config(built["trainer-lora"]["tag"])["Config"]["Labels"]
    job = job_from("tiny-lora-cpu.yaml", resources={"gpuType": "a100", "workers": 1})
    pod = worker(job, attempt=1)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The NVIDIA device plugin's allocation, as it hands it to the container; this machine has
    # no NVIDIA driver for the container to see.
    allocated = {"NVIDIA_VISIBLE_DEVICES": "GPU-8f6b2c1e-5f1d-4d2a-9e47-0c1b2a3d4e5f"}
    trainer = PodContainer(pod, built["trainer-lora"]["tag"], scratch, env=allocated,
                           volumes={"checkpoints": volume(scratch / "checkpoints")})  # fmt: skip
    containers.append(trainer.start())
    assert trainer.wait(timeout=120) == EXIT_PERMANENT, trainer.logs()[-3000:]
    message = trainer.termination_message()
    assert message.startswith("ConfigurationError:"), message
    assert "NVIDIA driver" in message
    assert labels["io.kubetrain.cuda.driver-min"] in message
