"""Publishing a trained model (spec.output) to a Hugging Face Hub model repository and to S3,
through the stand-ins on 127.0.0.1: what arrives, under which commit, with which token."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from kubetrain.api.report import MODEL_MANIFEST, tree_digest
from kubetrain.trainer.fetch.publish import Published, upload
from tests.trainer.hubserver import HubServer, Repo
from tests.trainer.s3server import S3Server

pytestmark = pytest.mark.timeout(60)

TOKEN = "hf_write-token-not-to-be-seen-3"
MODEL = {
    "adapter_config.json": b'{"r": 8}',
    "weights/adapter_model.safetensors": os.urandom(30_000),
    MODEL_MANIFEST: b'{"format": "peft-lora"}',
}


@pytest.fixture(scope="module")
def hub() -> Iterator[HubServer]:
    server = HubServer()
    server.writers.add(TOKEN)
    server.repos["models", "org/public"] = Repo({"README.md": b"# a public model\n"})
    yield server
    server.stop()


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def credentials(directory: Path, values: dict[str, str]) -> Path:
    directory.mkdir()
    return write_files(directory, {key: f"{value}\n".encode() for key, value in values.items()})


def hub_credentials(tmp_path: Path, hub: HubServer, token: str = TOKEN) -> Path:
    return credentials(tmp_path / "hf-creds", {"HF_TOKEN": token, "HF_ENDPOINT": hub.endpoint})


def check_digest(published: Published, model: Path) -> None:
    digest, size, files = tree_digest(model)
    assert (published.digest, published.size_bytes, published.files) == (digest, size, len(files))


def test_a_model_is_committed_to_a_new_private_repo_then_updated(
    hub: HubServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = write_files(tmp_path / "model", MODEL)
    creds = hub_credentials(tmp_path, hub)
    caplog.set_level(logging.DEBUG)
    before = len(hub.requests)
    published = upload(model, "hf://org/name", creds)

    repo = hub.repos["models", "org/name"]
    assert repo.private and repo.files == MODEL
    assert published.uri == f"hf://org/name@{repo.commit}"
    check_digest(published, model)
    [commit] = [c for c in hub.commits if c.repo == ("models", "org/name")]
    assert (commit.revision, commit.files, commit.token) == ("main", MODEL, TOKEN)
    assert {token for _, _, token in hub.requests[before:]} == {TOKEN}
    assert TOKEN not in caplog.text

    # the repository exists now: a changed model is a second commit of what changed
    changed = {"adapter_config.json": b'{"r": 16}', "tokenizer.json": b"{}"}
    again = upload(write_files(model, changed), "hf://org/name", creds)
    assert repo.files == MODEL | changed and again.uri == f"hf://org/name@{repo.commit}"
    assert again.uri != published.uri and hub.commits[-1].files == changed
    check_digest(again, model)

    # the same model once more: nothing to commit, the URI names the repository's last commit
    commits = len(hub.commits)
    assert upload(model, "hf://org/name", creds) == again
    assert len(hub.commits) == commits


def test_a_branch_is_created_in_an_existing_repo_even_offline(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_files(tmp_path / "model", MODEL)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as the trainer runs, after a fetch
    published = upload(model, "hf://org/public@v1", hub_credentials(tmp_path, hub))
    assert constants.HF_HUB_OFFLINE

    repo = hub.repos["models", "org/public"]
    assert not repo.private and repo.branches == {"main", "v1"}
    assert repo.files == {"README.md": b"# a public model\n", **MODEL}
    assert (hub.commits[-1].repo, hub.commits[-1].revision) == (("models", "org/public"), "v1")
    assert published.uri == f"hf://org/public@{repo.commit}"
    check_digest(published, model)


def test_a_refused_token_fails_naming_the_uri_not_the_token(hub: HubServer, tmp_path: Path) -> None:
    model = write_files(tmp_path / "model", MODEL)
    refused = "hf_refused-token-4"
    commits = len(hub.commits)
    with pytest.raises(PermissionError) as raised:
        upload(model, "hf://org/other", hub_credentials(tmp_path, hub, refused))
    assert str(raised.value) == (
        "hf://org/other: the Hub refused the token (HTTP 401); it needs write access to org/other"
    )
    assert refused not in "".join(traceback.format_exception(raised.value))
    assert ("models", "org/other") not in hub.repos and len(hub.commits) == commits


@pytest.mark.parametrize(
    ("uri", "detail"),
    [
        ("ftp://host/model", "use s3://, gs:// or hf://"),
        ("hf://datasets/org/name", "use hf://org/name or hf://org/name@branch"),
        ("hf://org/name@main/sub", "use hf://org/name or hf://org/name@branch"),
    ],
)
def test_other_uris_are_refused(uri: str, detail: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as raised:
        upload(write_files(tmp_path / "model", MODEL), uri, None)
    assert str(raised.value) == f"spec.output.uri {uri}: {detail}"


def test_a_model_is_uploaded_under_an_s3_prefix(tmp_path: Path) -> None:
    s3 = S3Server()
    try:
        client = s3.client()
        client.create_bucket(Bucket="models")
        model = write_files(tmp_path / "model", MODEL)
        creds = credentials(
            tmp_path / "s3-creds",
            {
                "AWS_ACCESS_KEY_ID": s3.key,
                "AWS_SECRET_ACCESS_KEY": s3.secret,
                "AWS_ENDPOINT_URL": s3.endpoint,
                "AWS_REGION": "us-east-1",
            },
        )
        published = upload(model, "s3://models/runs/one", creds)
        assert published.uri == "s3://models/runs/one/"
        check_digest(published, model)
        listed = client.list_objects_v2(Bucket="models", Prefix="runs/one/")["Contents"]
        objects = {
            entry["Key"]: client.get_object(Bucket="models", Key=entry["Key"])["Body"].read()
            for entry in listed
        }
        assert objects == {f"runs/one/{name}": data for name, data in MODEL.items()}
    finally:
        s3.stop()
