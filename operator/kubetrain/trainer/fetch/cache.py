"""Cache entries on the shared claim: one directory per (source URI, revision), complete or absent.

A fetch downloads into a sibling ``<entry>.partial-<random>`` directory, renames it into place,
then writes ``<entry>.json``, the marker that says the entry is complete. The marker sits beside
the entry rather than in it because the trainers read every data file of a dataset directory,
``.json`` included. Fetchers of one entry (two jobs on one cache) take turns on an flock of
``<entry>.lock``; whoever holds it clears what a killed fetch left behind.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubetrain.api.fetch import SourceKind

_KIND_DIRS = {
    SourceKind.DATASET: "datasets",
    SourceKind.MODEL: "models",
    SourceKind.WEIGHTS: "weights",
}


@dataclass(frozen=True)
class Entry:
    path: Path

    @classmethod
    def of(cls, cache_dir: Path, kind: SourceKind, uri: str, revision: str) -> Entry:
        digest = hashlib.sha256(f"{uri}\0{revision}".encode()).hexdigest()[:16]
        return cls(cache_dir / _KIND_DIRS[kind] / f"{_slug(uri)}-{digest}")

    @property
    def marker(self) -> Path:
        return self.path.with_name(f"{self.path.name}.json")

    def complete(self) -> bool:
        return self.marker.is_file()

    @contextmanager
    def locked(self, on_wait: Callable[[], None]) -> Iterator[None]:
        """Hold the entry's lock; ``on_wait`` is called first if another fetcher holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(f"{self.path.name}.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def fill(self, download: Callable[[Path], None], record: dict[str, Any]) -> None:
        """Download into a fresh partial directory, move it into place and mark it complete.

        Call with the lock held: it first removes a killed fetch's partial directories, and an
        entry that was renamed into place but never marked.
        """
        for leftover in self.path.parent.glob(f"{glob.escape(self.path.name)}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)
        partial = self.path.with_name(f"{self.path.name}.partial-{secrets.token_hex(4)}")
        partial.mkdir()
        try:
            download(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(self.path)
        record = {**record, "fetchedAt": datetime.now(UTC).isoformat()}
        tmp = self.marker.with_name(f".{self.marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(self.marker)


def _slug(uri: str) -> str:
    """A readable name for the entry: the URI's bucket and path, less its scheme and query."""
    words = uri.partition("://")[2].partition("?")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", words)[:48].strip("-.") or "source"
