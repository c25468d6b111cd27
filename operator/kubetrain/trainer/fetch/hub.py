"""Hugging Face Hub repositories, in the Hub's own cache layout (``<cacheDir>/huggingface/hub``).

huggingface_hub already keeps one snapshot per commit and links a file into a snapshot only
once its blob is complete, so the Hub needs no cache entry of ours: the revision is the
commit, the path the snapshot directory. Online, a dry run first resolves the revision to a
commit and tells which files are cached already; with ``HF_HUB_OFFLINE`` the cache alone
answers. A snapshot's bytes count in the progress once it is complete.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import cast

import huggingface_hub
from huggingface_hub import DryRunFileInfo, constants, errors

from kubetrain.api.fetch import FetchSource
from kubetrain.api.report import FetchedSource
from kubetrain.trainer.fetch.progress import Progress
from kubetrain.trainer.fetch.source import (
    Credentials,
    access_denied,
    bad_uri,
    credentials_of,
    not_found,
)
from kubetrain.trainer.runtime import TrainerError


def fetch(
    source: FetchSource, credentials: Credentials, cache_dir: Path, progress: Progress
) -> FetchedSource:
    """Download the snapshot, or find it complete in the cache."""
    uri = _parse(source)
    download = partial(
        huggingface_hub.snapshot_download,
        uri.id,
        repo_type=uri.type,
        cache_dir=cache_dir / "huggingface" / "hub",
        token=credentials.value("HF_TOKEN"),
        endpoint=credentials.value("HF_ENDPOINT"),
    )
    message = f"fetching {source.uri} from the Hub"
    progress.note(source.name, message)
    try:
        if constants.HF_HUB_OFFLINE:
            snapshot, reused = download(revision=uri.revision), True
        else:
            # partial() loses snapshot_download's overloads: a dry run returns the file list
            plan = cast("list[DryRunFileInfo]", download(revision=uri.revision, dry_run=True))
            if not plan:
                raise not_found(source, "the repository has no files")
            size = sum(f.file_size or 0 for f in plan)
            progress.note(source.name, message, size=size, files=len(plan))
            snapshot = download(revision=plan[0].commit_hash)
            reused = not any(f.will_download for f in plan)
    except TrainerError:
        raise
    except Exception as err:
        permanent = _permanent(err, source)
        if permanent is None:
            raise
        raise permanent from err
    files = [p for p in Path(snapshot).rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    progress.add_files(len(files), size)
    return FetchedSource(
        name=source.name,
        uri=source.uri,
        revision=Path(snapshot).name,
        path=snapshot,
        size_bytes=size,
        files=len(files),
        reused=reused,
    )


def _parse(source: FetchSource) -> huggingface_hub.HfUri:
    """``hf://[datasets/]org/name[@revision]``, or a bare ``org/name`` model id."""
    uri = source.uri if source.uri.startswith("hf://") else f"hf://{source.uri}"
    try:
        parsed = huggingface_hub.parse_hf_uri(uri)
    except ValueError as err:
        raise bad_uri(source, str(err)) from None
    if parsed.type not in ("model", "dataset") or parsed.path_in_repo:
        raise bad_uri(source, "expected hf://org/name or hf://datasets/org/name, with @revision")
    return parsed


def _permanent(err: BaseException, source: FetchSource) -> TrainerError | None:
    """The TrainerError for a Hub error no retry cures; None for a transient one.

    A dry run reports the Hub's answer as the cause of its DryRunError.
    """
    if isinstance(err, errors.DryRunError) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, errors.GatedRepoError):
        return access_denied(source)
    if isinstance(err, errors.RevisionNotFoundError):
        return not_found(source, "no such revision")
    if isinstance(err, errors.RepositoryNotFoundError):
        if err.response.status_code == 401:  # the Hub's answer for private repositories too
            detail = f"no such repository, or it is private to {credentials_of(source)}"
            return not_found(source, detail)
        return not_found(source, "no such repository")
    if isinstance(err, errors.HfHubHTTPError) and err.response.status_code in (401, 403):
        return access_denied(source)
    if isinstance(err, errors.LocalEntryNotFoundError) and constants.HF_HUB_OFFLINE:
        return not_found(source, "not in the cache, and HF_HUB_OFFLINE is set")
    return None
