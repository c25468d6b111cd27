"""The fetch stage end to end: ``python -m kubetrain.trainer.fetch`` as a Pod runs it, against
an S3 server (moto, checking signatures), an HTTPS file server, a Hugging Face Hub and a
pre-populated Hub cache, all on 127.0.0.1. The servers record requests, so the tests see what
was downloaded, and can slow a download down so that a test can act in the middle of it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from kubetrain.api.report import EXIT_PERMANENT, EXIT_STOPPED, decode
from tests.polling import eventually
from tests.trainer.conftest import TrainerRun, trainer_env
from tests.trainer.hubserver import HubServer, Repo
from tests.trainer.s3server import S3Server
from tests.trainer.webserver import FileServer

pytestmark = pytest.mark.timeout(120)

MODULE = "kubetrain.trainer.fetch"
CHAT = {
    "sets/chat/part-0.jsonl": b'{"text": "red cat"}\n' * 50,
    "sets/chat/part-1.jsonl": b'{"text": "blue dog"}\n' * 70,
    "sets/chat/extra/part-2.jsonl": b'{"text": "green bird"}\n' * 30,
}
TINY = {"tiny/config.json": b'{"hidden_size": 8}', "tiny/model.safetensors": os.urandom(40_000)}
SLOW = os.urandom(24 << 20)  # 8 s through the paced S3 server, 40 s through the Hub


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    client = server.client()
    for bucket in ("data", "models"):
        client.create_bucket(Bucket=bucket)
    for key, body in CHAT.items():
        client.put_object(Bucket="data", Key=key, Body=body)
    client.put_object(Bucket="data", Key="sets/chat/extra/", Body=b"")  # a console "folder"
    for key, body in TINY.items():
        client.put_object(Bucket="models", Key=key, Body=body)
    client.put_object(Bucket="models", Key="weights/resnet.pt", Body=b"weights" * 1000)
    client.put_object(Bucket="models", Key="slow/weights.bin", Body=SLOW)
    server.require_auth()
    yield server
    server.stop()


@pytest.fixture
def secret(tmp_path: Path, s3: S3Server) -> Path:
    """The mounted credentials Secret of the S3 sources."""
    return write_secret(tmp_path / "s3-creds", s3, s3.key, s3.secret)


def write_secret(directory: Path, s3: S3Server, key: str, secret: str) -> Path:
    directory.mkdir()
    values = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": "us-east-1",
    }
    for name, value in values.items():
        (directory / name).write_text(value + "\n")
    return directory


def source(name: str, uri: str, kind: str, credentials: Path | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "uri": uri, "kind": kind}
    if credentials is not None:
        entry |= {"credentialsDir": str(credentials), "credentialsSecret": credentials.name}
    return entry


@pytest.fixture
def start_fetch(tmp_path: Path) -> Iterator[Any]:
    """Start the fetch stage on a plan whose cache is ``tmp_path/cache``, like its Pod would."""
    started: list[TrainerRun] = []

    def start(sources: list[dict[str, Any]], env: dict[str, str] | None = None) -> TrainerRun:
        directory = tmp_path / f"run{len(started)}"
        directory.mkdir()
        plan = {"cacheDir": str(tmp_path / "cache"), "sources": sources}
        extra = {"KUBETRAIN_FETCH": json.dumps(plan), "HF_HUB_OFFLINE": "1", **(env or {})}
        log = directory.parent / f"{directory.name}.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", MODULE],
                env=trainer_env(directory, {}, None, extra),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        run = TrainerRun(directory, process, log)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def finish(run: TrainerRun, code: int = 0) -> dict[str, Any]:
    """Wait for the run; check its exit code; return its last report."""
    assert run.wait(60) == code, run.output()
    report = run.report()
    assert report is not None, run.output()
    decode(json.dumps(report))  # the operator would take it
    return report


def fetched(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert report["state"] == "completed", report
    return {entry["name"]: entry for entry in report["fetched"]}


def reported(run: TrainerRun, what: str, check: Any) -> dict[str, Any]:
    """Poll the run's reports until ``check`` holds (the run must still be running)."""

    def probe() -> dict[str, Any] | None:
        if run.process.poll() is not None:
            raise AssertionError(f"the fetch exited ({run.process.returncode}):\n{run.output()}")
        report = run.report()
        return report if report and check(report) else None

    return eventually(probe, timeout=30, interval=0.05, what=what)


def downloading(report: dict[str, Any]) -> bool:
    return report.get("fetch", {}).get("bytesDone", 0) > 0


def leftovers(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/*.partial-*"))


def test_s3_prefixes_and_an_object_land_in_the_cache_then_are_reused(
    start_fetch: Any, s3: S3Server, secret: Path, tmp_path: Path
) -> None:
    sources = [
        source("dataset", "s3://data/sets/chat/", "dataset", secret),
        source("baseModel", "s3://models/tiny", "model", secret),
        source("pretrainedWeights", "s3://models/weights/resnet.pt", "weights", secret),
    ]
    before = s3.downloads()
    first = fetched(finish(start_fetch(sources)))
    assert s3.downloads() - before == len(CHAT) + len(TINY) + 1

    dataset = Path(first["dataset"]["path"])
    assert dataset.parent == tmp_path / "cache" / "datasets"
    assert dataset.name.startswith("data-sets-chat-")
    for key, body in CHAT.items():
        assert (dataset / key.removeprefix("sets/chat/")).read_bytes() == body
    assert sorted(p.name for p in dataset.rglob("*") if p.is_file()) == [
        "part-0.jsonl", "part-1.jsonl", "part-2.jsonl",
    ]  # fmt: skip
    marker = json.loads(dataset.with_name(dataset.name + ".json").read_text())
    assert marker["uri"] == "s3://data/sets/chat/"
    assert marker["revision"] == first["dataset"]["revision"]
    assert marker["sizeBytes"] == sum(map(len, CHAT.values())) == first["dataset"]["sizeBytes"]
    assert {f["path"] for f in marker["files"]} == {k.removeprefix("sets/chat/") for k in CHAT}
    assert first["dataset"]["files"] == 3 and not first["dataset"]["reused"]

    model = Path(first["baseModel"]["path"])
    assert (model / "config.json").read_bytes() == TINY["tiny/config.json"]
    weights = Path(first["pretrainedWeights"]["path"])
    assert weights.name == "resnet.pt" and weights.parent.parent.name == "weights"
    assert weights.read_bytes() == b"weights" * 1000
    assert not leftovers(tmp_path / "cache")

    requests = len(s3.requests)
    again = fetched(finish(start_fetch(sources)))
    assert s3.downloads() - before == len(CHAT) + len(TINY) + 1, "the second run downloaded"
    assert all(
        (method == "GET" and path.count("/") == 1) or method == "HEAD"
        for method, path in s3.requests[requests:]
    ), s3.requests[requests:]
    for name, entry in again.items():
        assert entry["reused"], entry
        assert {**entry, "reused": False} == first[name]


def test_two_fetchers_of_one_source_download_one_copy(
    start_fetch: Any, s3: S3Server, secret: Path
) -> None:
    sources = [source("pretrainedWeights", "s3://models/slow/weights.bin", "weights", secret)]
    path = "/models/slow/weights.bin"
    before = s3.downloads(path)
    s3.paced.add(path)
    try:
        first = start_fetch(sources)
        reported(first, "the first fetcher downloading", downloading)
        second = start_fetch(sources)
        reported(second, "the second fetcher waiting", lambda r: "waiting" in r["message"])
    finally:
        s3.paced.discard(path)
    one, two = fetched(finish(first)), fetched(finish(second))
    assert s3.downloads(path) - before == 1
    assert not one["pretrainedWeights"]["reused"] and two["pretrainedWeights"]["reused"]
    assert one["pretrainedWeights"]["path"] == two["pretrainedWeights"]["path"]
    assert Path(two["pretrainedWeights"]["path"]).read_bytes() == SLOW


def test_a_changed_object_is_a_new_entry(start_fetch: Any, s3: S3Server, secret: Path) -> None:
    s3.client().put_object(Bucket="data", Key="changing/train.jsonl", Body=b'{"v": 1}\n')
    sources = [source("dataset", "s3://data/changing/train.jsonl", "dataset", secret)]
    old = fetched(finish(start_fetch(sources)))["dataset"]
    s3.client().put_object(Bucket="data", Key="changing/train.jsonl", Body=b'{"v": 2}\n')
    new = fetched(finish(start_fetch(sources)))["dataset"]
    assert new["revision"] != old["revision"] and not new["reused"]
    assert Path(new["path"]).parent != Path(old["path"]).parent
    assert Path(old["path"]).read_bytes() == b'{"v": 1}\n'
    assert Path(new["path"]).read_bytes() == b'{"v": 2}\n'


@pytest.mark.parametrize("uri", ["s3://data/missing/train.jsonl", "s3://no-such-bucket/train/"])
def test_a_missing_object_is_dataset_not_found(start_fetch: Any, secret: Path, uri: str) -> None:
    run = start_fetch([source("dataset", uri, "dataset", secret)])
    report = finish(run, EXIT_PERMANENT)
    assert run.message().startswith(f"DatasetNotFound: {uri}: "), run.message()
    assert report["state"] == "failed" and report["message"] == run.message()


def test_refused_credentials_are_access_denied_naming_the_secret(
    start_fetch: Any, s3: S3Server, tmp_path: Path
) -> None:
    wrong = write_secret(tmp_path / "wrong-creds", s3, "AKIAWRONGKEY0000", "not-the-secret-42")
    run = start_fetch([source("dataset", "s3://data/sets/chat/", "dataset", wrong)])
    finish(run, EXIT_PERMANENT)
    assert run.message() == (
        "AccessDenied: s3://data/sets/chat/: access denied with the credentials of Secret "
        "wrong-creds"
    )
    everything = run.output() + json.dumps(run.report()) + run.message()
    assert "not-the-secret-42" not in everything


def test_sigterm_mid_download_keeps_nothing_and_a_new_run_completes(
    start_fetch: Any, s3: S3Server, secret: Path, tmp_path: Path
) -> None:
    sources = [source("pretrainedWeights", "s3://models/slow/weights.bin", "weights", secret)]
    s3.paced.add("/models/slow/weights.bin")
    try:
        run = start_fetch(sources)
        reported(run, "the download under way", downloading)
        run.stop()
        report = finish(run, EXIT_STOPPED)
    finally:
        s3.paced.discard("/models/slow/weights.bin")
    assert report["state"] == "stopping" and run.message().startswith("stopped by SIGTERM")
    weights = tmp_path / "cache" / "weights"
    assert not [p for p in weights.iterdir() if not p.name.endswith(".lock")]

    entry = fetched(finish(start_fetch(sources)))["pretrainedWeights"]
    assert Path(entry["path"]).read_bytes() == SLOW and not entry["reused"]


def test_a_killed_fetch_leaves_a_partial_that_the_next_one_removes(
    start_fetch: Any, s3: S3Server, secret: Path, tmp_path: Path
) -> None:
    sources = [source("pretrainedWeights", "s3://models/slow/weights.bin", "weights", secret)]
    s3.paced.add("/models/slow/weights.bin")
    try:
        run = start_fetch(sources)
        reported(run, "the download under way", downloading)
        run.process.kill()
        run.process.wait()
    finally:
        s3.paced.discard("/models/slow/weights.bin")
    assert leftovers(tmp_path / "cache")

    entry = fetched(finish(start_fetch(sources)))["pretrainedWeights"]
    assert Path(entry["path"]).read_bytes() == SLOW
    assert not leftovers(tmp_path / "cache")


def test_a_damaged_download_is_not_kept_and_fails_for_a_retry(
    start_fetch: Any, s3: S3Server, secret: Path, tmp_path: Path
) -> None:
    """With no S3 checksum to check (an upload without one), the ETag's MD5 catches it."""
    legacy = s3.client(config=Config(request_checksum_calculation="when_required"))
    legacy.put_object(Bucket="models", Key="weights/legacy.pt", Body=b"old weights" * 100)
    sources = [source("pretrainedWeights", "s3://models/weights/legacy.pt", "weights", secret)]
    s3.damaged.add("/models/weights/legacy.pt")
    try:
        run = start_fetch(sources)
        finish(run, 1)
    finally:
        s3.damaged.discard("/models/weights/legacy.pt")
    assert run.message().startswith("OSError: models/weights/legacy.pt: MD5 "), run.message()
    assert [p.suffix for p in (tmp_path / "cache" / "weights").iterdir()] == [".lock"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    server = FileServer(tmp_path_factory.mktemp("https"))
    server.files["/weights/model.pt"] = os.urandom(300_000)
    server.statuses |= {"/weights/private.pt": 403, "/weights/busy.pt": 503}
    yield server
    server.stop()


def test_https_file_lands_once_and_errors_are_named(start_fetch: Any, files: FileServer) -> None:
    env = {"SSL_CERT_FILE": str(files.ca_file)}
    uri = f"{files.base}/weights/model.pt"
    sources = [source("pretrainedWeights", uri, "weights")]
    first = fetched(finish(start_fetch(sources, env)))["pretrainedWeights"]
    assert Path(first["path"]).read_bytes() == files.files["/weights/model.pt"]
    assert Path(first["path"]).name == "model.pt"
    requests = len(files.requests)
    again = fetched(finish(start_fetch(sources, env)))["pretrainedWeights"]
    assert again["reused"] and again["path"] == first["path"]
    assert files.requests[requests:] == [("HEAD", "/weights/model.pt")]

    for path, code, message in [
        ("/weights/absent.pt", EXIT_PERMANENT, "ModelNotFound: {uri}: not found"),
        ("/weights/private.pt", EXIT_PERMANENT, "AccessDenied: {uri}: access denied with the "
         "environment's default credentials"),
        ("/weights/busy.pt", 1, "ClientResponseError: 503, message='Service Unavailable'"),
    ]:  # fmt: skip
        uri = f"{files.base}{path}"
        run = start_fetch([source("pretrainedWeights", uri, "weights")], env)
        finish(run, code)
        assert run.message().startswith(message.format(uri=uri)), run.message()


def seed_hub(cache: Path, repo_type: str, repo_id: str, files: dict[str, bytes]) -> str:
    """A snapshot in huggingface_hub's on-disk layout: refs/main, snapshots/<sha>, blobs/."""
    folder = cache / "huggingface" / "hub" / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "blobs").mkdir()
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def test_hub_models_and_datasets_come_from_the_offline_cache(
    start_fetch: Any, tmp_path: Path
) -> None:
    model = seed_hub(tmp_path / "cache", "model", "org/tiny", {"config.json": b"{}", "w.bin": b"w"})
    data = seed_hub(tmp_path / "cache", "dataset", "org/chat", {"data/train.jsonl": b"{}\n" * 9})
    sources = [
        source("baseModel", "hf://org/tiny", "model"),
        source("dataset", "hf://datasets/org/chat@main", "dataset"),
        source("pretrainedWeights", "org/tiny", "weights"),
    ]
    entries = fetched(finish(start_fetch(sources)))
    hub = tmp_path / "cache" / "huggingface" / "hub"
    assert entries["baseModel"]["path"] == str(hub / "models--org--tiny" / "snapshots" / model)
    assert entries["baseModel"]["revision"] == model
    assert entries["baseModel"]["files"] == 2 and entries["baseModel"]["reused"]
    assert entries["pretrainedWeights"]["path"] == entries["baseModel"]["path"]
    chat = Path(entries["dataset"]["path"])
    assert chat == hub / "datasets--org--chat" / "snapshots" / data
    assert (chat / "data" / "train.jsonl").read_bytes() == b"{}\n" * 9
    assert entries["dataset"]["sizeBytes"] == 27


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("org/absent", "ModelNotFound: org/absent: not in the cache, and HF_HUB_OFFLINE is set"),
        ("random://tiny", "ConfigurationError: baseModel URI 'random://tiny': random:// models "
         "are made by the trainer, not fetched"),
        ("ftp://host/model", "ConfigurationError: baseModel URI 'ftp://host/model': use s3://, "
         "gs://, https:// or hf:// (or a Hub model id, org/name)"),
    ],
)  # fmt: skip
def test_unknown_models_and_bad_uris_fail_for_good(
    start_fetch: Any, uri: str, message: str
) -> None:
    run = start_fetch([source("baseModel", uri, "model")])
    finish(run, EXIT_PERMANENT)
    assert run.message() == message


HF_TOKEN = "hf_not-to-be-seen-7"


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    server = HubServer()
    server.repos |= {
        ("models", "org/tiny"): Repo(
            {"config.json": b"{}", "w/w.bin": os.urandom(50_000)}, HF_TOKEN
        ),
        ("datasets", "org/chat"): Repo({"train.jsonl": b"{}\n" * 20}),
        ("models", "org/gated"): Repo({"config.json": b"{}"}, gated=True),
        ("models", "org/big"): Repo({"model.bin": SLOW}),
    }
    yield server
    server.stop()


def hub_secret(directory: Path, hub: HubServer) -> Path:
    directory.mkdir()
    (directory / "HF_TOKEN").write_text(HF_TOKEN + "\n")
    (directory / "HF_ENDPOINT").write_text(hub.endpoint + "\n")
    return directory


def test_hub_snapshots_download_once_with_the_secrets_token(
    start_fetch: Any, hub: HubServer, tmp_path: Path
) -> None:
    creds = hub_secret(tmp_path / "hf-creds", hub)
    sources = [
        source("baseModel", "hf://org/tiny", "model", creds),
        source("dataset", "hf://datasets/org/chat@main", "dataset", creds),
    ]
    online = {"HF_HUB_OFFLINE": "0"}
    before = hub.downloads()
    first = fetched(finish(start_fetch(sources, online)))
    assert hub.downloads() - before == 3
    commit = hub.repos["models", "org/tiny"].commit
    model = Path(first["baseModel"]["path"])
    assert model == tmp_path / "cache/huggingface/hub/models--org--tiny/snapshots" / commit
    assert (model / "w" / "w.bin").read_bytes() == hub.repos["models", "org/tiny"].files["w/w.bin"]
    assert first["baseModel"] | {"reused": True} == {
        "name": "baseModel", "uri": "hf://org/tiny", "revision": commit, "path": str(model),
        "sizeBytes": 50_002, "files": 2, "reused": True,
    }  # fmt: skip
    assert (Path(first["dataset"]["path"]) / "train.jsonl").read_bytes() == b"{}\n" * 20

    run = start_fetch(sources, online)
    again = fetched(finish(run))
    assert hub.downloads() - before == 3, "the second run downloaded"
    assert all(entry["reused"] for entry in again.values())
    assert HF_TOKEN not in run.output() + json.dumps(run.report())


def test_hub_errors_name_the_source_and_the_secret(
    start_fetch: Any, hub: HubServer, tmp_path: Path
) -> None:
    creds = hub_secret(tmp_path / "hf-creds", hub)
    online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint}
    for entry, message in [
        (source("baseModel", "hf://org/gated", "model", creds),
         "AccessDenied: hf://org/gated: access denied with the credentials of Secret hf-creds"),
        (source("baseModel", "org/absent", "model", creds),
         "ModelNotFound: org/absent: no such repository"),
        (source("dataset", "hf://datasets/org/chat@v9", "dataset", creds),
         "DatasetNotFound: hf://datasets/org/chat@v9: no such revision"),
        (source("baseModel", "hf://org/tiny", "model"),
         "ModelNotFound: hf://org/tiny: no such repository, or it is private to the "
         "environment's default credentials"),
    ]:  # fmt: skip
        run = start_fetch([entry], online)
        finish(run, EXIT_PERMANENT)
        assert run.message() == message


def test_sigterm_stops_a_hub_download_at_once(
    start_fetch: Any, hub: HubServer, tmp_path: Path
) -> None:
    sources = [source("baseModel", "hf://org/big", "model")]
    online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint}
    before = hub.downloads()
    hub.paced.add("model.bin")
    try:
        run = start_fetch(sources, online)
        eventually(lambda: hub.downloads() > before, what="the hub download under way")
        run.stop()
        stopped = time.monotonic()
        finish(run, EXIT_STOPPED)
        assert time.monotonic() - stopped < 10, "the exit waited for the download"
    finally:
        hub.paced.discard("model.bin")
    snapshots = tmp_path / "cache/huggingface/hub/models--org--big/snapshots"
    assert not list(snapshots.glob("*/model.bin"))

    entry = fetched(finish(start_fetch(sources, online)))["baseModel"]
    assert (Path(entry["path"]) / "model.bin").read_bytes() == SLOW
