"""Object stores and web servers through fsspec: ``s3://`` (s3fs), ``gs://`` (gcsfs) and one
file over ``https://``.

A source's revision is a digest of its listing: keys, sizes and ETags (S3) or generations
(GCS); for https the ETag, else Last-Modified, with the length. A changed source is therefore
a new cache entry, and a complete entry is reused after one listing (or HEAD) request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientError, ClientResponseError
from fsspec.callbacks import Callback  # type: ignore[import-untyped]
from fsspec.implementations.http import HTTPFileSystem  # type: ignore[import-untyped]

from kubetrain.api.fetch import FetchSource
from kubetrain.api.report import FetchedSource
from kubetrain.trainer.fetch.cache import Entry
from kubetrain.trainer.fetch.progress import Progress, Stopped
from kubetrain.trainer.fetch.source import Credentials, access_denied, bad_uri, not_found
from kubetrain.trainer.runtime import TrainerError

SCHEMES = ("s3", "gs", "https")
_MD5 = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class RemoteFile:
    remote: str
    """The path as the filesystem names it."""
    name: str
    """Its path inside the cache entry."""
    size: int
    version: str
    md5: str | None = None
    """An S3 ETag that is the object's MD5 (single-part uploads)."""


@dataclass(frozen=True)
class Listing:
    files: tuple[RemoteFile, ...]
    single: bool
    """The URI names one object (its path is the file, not the entry directory)."""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def revision(self) -> str:
        versions = [[f.name, f.size, f.version] for f in self.files]
        return hashlib.sha256(json.dumps(versions).encode()).hexdigest()


def fetch(
    source: FetchSource, credentials: Credentials, cache_dir: Path, progress: Progress
) -> FetchedSource:
    """Put the source into its cache entry, unless the entry is there already."""
    scheme, path = _locate(source)
    fs = filesystem(scheme, credentials)
    progress.note(source.name, f"listing {source.uri}")
    listing = _list(fs, scheme, path, source)
    entry = Entry.of(cache_dir, source.kind, source.uri, listing.revision)
    fetching = f"fetching {source.uri}"
    progress.note(source.name, fetching, size=listing.size, files=len(listing.files))
    reused = entry.complete()
    if not reused:
        waiting = f"waiting for another fetch of {source.uri}"
        with entry.locked(lambda: progress.note(source.name, waiting)):
            reused = entry.complete()
            if not reused:
                progress.note(source.name, fetching)
                entry.fill(
                    lambda partial: _download(fs, listing, partial, progress, source),
                    _record(source.uri, listing),
                )
    if reused:
        progress.add_files(len(listing.files), listing.size)
    return FetchedSource(
        name=source.name,
        uri=source.uri,
        revision=listing.revision,
        path=str(entry.path / listing.files[0].name if listing.single else entry.path),
        size_bytes=listing.size,
        files=len(listing.files),
        reused=reused,
    )


def _locate(source: FetchSource) -> tuple[str, str]:
    """The scheme, and the path the scheme's filesystem takes (the URL itself for https)."""
    scheme, _, rest = source.uri.partition("://")
    if scheme == "https":
        url = urlsplit(source.uri)
        if not url.hostname or not PurePosixPath(url.path).name or url.path.endswith("/"):
            raise bad_uri(source, "an https:// URI must name one file")
        return scheme, source.uri
    if not rest.split("/", 1)[0]:
        raise bad_uri(source, f"no bucket (expected {scheme}://<bucket>/<key or prefix>)")
    return scheme, rest


def filesystem(scheme: str, credentials: Credentials) -> Any:
    """The fsspec filesystem of ``scheme`` with a source's credentials (or the defaults)."""
    if scheme == "s3":
        import s3fs  # type: ignore[import-untyped]  # noqa: PLC0415 - only for s3:// sources

        region = credentials.value("AWS_REGION")
        return s3fs.S3FileSystem(
            key=credentials.value("AWS_ACCESS_KEY_ID"),
            secret=credentials.value("AWS_SECRET_ACCESS_KEY"),
            token=credentials.value("AWS_SESSION_TOKEN"),
            endpoint_url=credentials.value("AWS_ENDPOINT_URL"),
            client_kwargs={"region_name": region} if region else {},
        )
    if scheme == "gs":
        import gcsfs  # type: ignore[import-untyped]  # noqa: PLC0415 - only for gs:// sources

        return gcsfs.GCSFileSystem(token=credentials.file("service-account.json"))
    return HTTPFileSystem()


def _list(fs: Any, scheme: str, path: str, source: FetchSource) -> Listing:
    with _translated(source, listing=True):
        if scheme == "https":
            info = fs.info(path)
            if info.get("size") is None:
                raise OSError(f"{path} did not say its length (no Content-Length)")
            version = info.get("ETag") or info.get("Last-Modified") or ""
            name = PurePosixPath(urlsplit(path).path).name
            return Listing((RemoteFile(path, name, int(info["size"]), version),), single=True)
        found: dict[str, dict[str, Any]] = fs.find(path, detail=True)
    root = path.rstrip("/")
    files = []
    for key, info in sorted(found.items()):
        if key.endswith("/"):
            continue  # a "folder" placeholder object, not data
        name = PurePosixPath(root).name if key == root else key[len(root) + 1 :]
        if ".." in PurePosixPath(name).parts:
            raise bad_uri(source, f"object {key!r} would land outside the cache entry")
        etag = str(info.get("ETag", "")).strip('"')
        version = etag or str(info.get("generation", ""))
        md5 = etag if scheme == "s3" and _MD5.fullmatch(etag) else None
        files.append(RemoteFile(key, name, int(info["size"]), version, md5))
    if not files:
        raise not_found(source, "no object by that name, and no objects under it")
    return Listing(tuple(files), single=len(files) == 1 and files[0].remote == root)


def _download(
    fs: Any, listing: Listing, partial: Path, progress: Progress, source: FetchSource
) -> None:
    targets = [str(partial / f.name) for f in listing.files]
    with _translated(source, listing=False):
        fs.get([f.remote for f in listing.files], targets, callback=_Counter(progress))
    for file, target in zip(listing.files, targets, strict=True):
        _verify(Path(target), file)


def _verify(path: Path, file: RemoteFile) -> None:
    """Raise (a transient error: the next attempt downloads again) on a short or bad copy."""
    size = path.stat().st_size
    if size != file.size:
        raise OSError(f"{file.remote}: downloaded {size} bytes, the listing says {file.size}")
    if file.md5 is not None:
        with path.open("rb") as data:
            digest = hashlib.file_digest(data, lambda: hashlib.md5(usedforsecurity=False))
        if digest.hexdigest() != file.md5:
            raise OSError(f"{file.remote}: MD5 {digest.hexdigest()} differs from its ETag")


@contextmanager
def _translated(source: FetchSource, *, listing: bool) -> Iterator[None]:
    """Turn the errors no retry cures into the TrainerError that names them.

    Credentials refused is permanent at any time; "not found" only while listing (an object
    that vanishes between the listing and its download is a changed source: retry).
    fsspec's https ``info`` reports every failure as FileNotFoundError caused by the real
    one; a connection error or a 5xx there is transient and is raised as itself.
    """
    try:
        yield
    except (Stopped, TrainerError):
        raise
    except Exception as err:
        status = _status(err) or (_status(err.__cause__) if err.__cause__ else None)
        if isinstance(err, PermissionError) or status in (401, 403) or _forbidden(err):
            raise access_denied(source) from err
        gone = isinstance(err, FileNotFoundError) and not isinstance(err.__cause__, ClientError)
        missing = gone or status in (404, 410)
        if listing and missing:
            raise not_found(source, "not found") from err
        if isinstance(err, FileNotFoundError) and isinstance(err.__cause__, ClientError):
            raise err.__cause__ from None
        raise


def _status(err: BaseException) -> int | None:
    """The HTTP status of aiohttp's error (https) or gcsfs's ``HttpError``."""
    if isinstance(err, ClientResponseError):
        return err.status
    code = getattr(err, "code", None)
    return code if isinstance(code, int) else None


def _forbidden(err: Exception) -> bool:
    """gcsfs's answer to a 403: an OSError whose message starts "Forbidden"."""
    return type(err) is OSError and str(err).startswith("Forbidden")


class _Counter(Callback):  # type: ignore[misc]
    """fsspec's progress hook for a batch of files: counts each file's bytes and the files."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def relative_update(self, inc: int = 1) -> None:
        self.progress.add_files(inc)

    def branched(self, path_1: str, path_2: str, **kwargs: Any) -> Callback:
        return _Bytes(self.progress)


class _Bytes(Callback):  # type: ignore[misc]
    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def relative_update(self, inc: int = 1) -> None:
        self.progress.add_bytes(inc)


def _record(uri: str, listing: Listing) -> dict[str, Any]:
    """The marker's content: what the entry holds, for people and tools reading the cache."""
    return {
        "uri": uri,
        "revision": listing.revision,
        "sizeBytes": listing.size,
        "files": [{"path": f.name, "size": f.size, "version": f.version} for f in listing.files],
    }
