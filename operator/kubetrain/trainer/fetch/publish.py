"""Publishing the trained model (spec.output), from rank 0 on completion.

To object storage (``s3://``, ``gs://``) every file of the model directory is uploaded under
the output URI, the manifest last, so a reader that finds the manifest finds the whole model.
To a Hugging Face Hub model repository (``hf://org/name[@branch]``), created private if it is
missing, the directory is one commit, and the published URI names that commit. The digest
(``sha256:`` over the files' relative paths and contents, in order) lets a downloader check
what it got.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi, constants, errors

from kubetrain.api.report import tree_digest
from kubetrain.trainer.fetch.objects import filesystem
from kubetrain.trainer.fetch.source import Credentials

log = logging.getLogger(__name__)

SCHEMES = ("s3", "gs", "hf")
COMMIT_MESSAGE = "Publish the trained model (kubetrain)"


@dataclass(frozen=True)
class Published:
    uri: str
    size_bytes: int
    digest: str
    files: int


def upload(directory: Path, uri: str, credentials_dir: Path | None) -> Published:
    """Upload ``directory`` to ``uri`` (a prefix, or a Hub repository); raises what the storage
    library raises, except the Hub's refusal of the token: a PermissionError naming ``uri``."""
    scheme, _, rest = uri.partition("://")
    if scheme not in SCHEMES:
        raise ValueError(f"spec.output.uri {uri}: use s3://, gs:// or hf://")
    credentials = Credentials(credentials_dir)
    repo = _hub_repo(uri) if scheme == "hf" else None
    found, size, files = tree_digest(directory)
    if repo is not None:
        target = _commit(directory, uri, repo, credentials)
    else:
        fs, base = filesystem(scheme, credentials), rest.rstrip("/")
        for path in files:
            fs.put_file(str(path), f"{base}/{path.relative_to(directory).as_posix()}")
        target = f"{scheme}://{base}/"
    log.info("published %d file(s), %d bytes, to %s (%s)", len(files), size, target, found)
    return Published(uri=target, size_bytes=size, digest=found, files=len(files))


def _hub_repo(uri: str) -> huggingface_hub.HfUri:
    try:
        repo = huggingface_hub.parse_hf_uri(uri)
    except ValueError as err:
        raise ValueError(f"spec.output.uri {uri}: {err}") from None
    if repo.type != "model" or repo.path_in_repo:
        raise ValueError(f"spec.output.uri {uri}: use hf://org/name or hf://org/name@branch")
    return repo


def _commit(
    directory: Path, uri: str, repo: huggingface_hub.HfUri, credentials: Credentials
) -> str:
    """Commit the directory to the repository's branch (main unless named), creating either
    if missing; ``hf://org/name@<commit>``. The token is HF_TOKEN's, else the environment's."""
    api = HfApi(endpoint=credentials.value("HF_ENDPOINT"), token=credentials.value("HF_TOKEN"))
    try:
        with _online():
            api.create_repo(repo.id, repo_type="model", private=True, exist_ok=True)
            if repo.revision:
                api.create_branch(repo.id, branch=repo.revision, exist_ok=True)
            # one commit: huggingface_hub (with hf_xet) splits only folders of over 250 files
            commit = api.upload_folder(
                repo_id=repo.id,
                folder_path=directory,
                revision=repo.revision,
                commit_message=COMMIT_MESSAGE,
            )
    except errors.HfHubHTTPError as err:
        status = err.response.status_code
        if status not in (401, 403):
            raise
        raise PermissionError(
            f"{uri}: the Hub refused the token (HTTP {status}); it needs write access to {repo.id}"
        ) from err
    return f"hf://{repo.id}@{commit.oid}"


@contextmanager
def _online() -> Iterator[None]:
    """Lift HF_HUB_OFFLINE for the upload: a trainer runs with it once the fetch stage has
    done the downloads, yet the upload the spec asks for must reach the Hub."""
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
