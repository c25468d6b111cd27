"""Publishing the trained model to object storage (spec.output), from rank 0 on completion.

Every file of the model directory is uploaded under the output URI, the manifest last, so a
reader that finds the manifest finds the whole model. The digest (``sha256:`` over the
files' relative paths and contents, in order) lets a downloader check what it got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kubetrain.api.report import tree_digest
from kubetrain.trainer.fetch.objects import filesystem
from kubetrain.trainer.fetch.source import Credentials

log = logging.getLogger(__name__)

SCHEMES = ("s3", "gs")


@dataclass(frozen=True)
class Published:
    uri: str
    size_bytes: int
    digest: str
    files: int


def upload(directory: Path, uri: str, credentials_dir: Path | None) -> Published:
    """Upload ``directory`` to ``uri`` (a prefix); raises what the storage library raises."""
    scheme, _, rest = uri.partition("://")
    if scheme not in SCHEMES:
        raise ValueError(f"spec.output.uri {uri}: use s3:// or gs://")
    fs = filesystem(scheme, Credentials(credentials_dir))
    found, size, files = tree_digest(directory)
    base = rest.rstrip("/")
    for path in files:
        fs.put_file(str(path), f"{base}/{path.relative_to(directory).as_posix()}")
    log.info("published %d file(s), %d bytes, to %s (%s)", len(files), size, uri, found)
    return Published(uri=f"{scheme}://{base}/", size_bytes=size, digest=found, files=len(files))
