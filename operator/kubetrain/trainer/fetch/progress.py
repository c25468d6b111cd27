"""How far the fetch is: counters the download threads add to and the reporter reads."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from kubetrain.api.report import FetchedSource, FetchProgress, ProgressReport, TrainerState
from kubetrain.trainer.signals import StopFlag


class Stopped(Exception):  # noqa: N818 - a stop, not an error
    """A stop signal arrived during a download: the download is abandoned."""


class Progress:
    """Bytes and files of every source together, and what the fetch is doing now."""

    def __init__(self, stop: StopFlag) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self.source = ""
        self.message = "starting"
        self.bytes_done = self.bytes_total = self.files_done = self.files_total = 0
        self._downloaded = 0
        self._first_byte: float | None = None

    def note(self, source: str, message: str, *, size: int = 0, files: int = 0) -> None:
        """Say what is happening now; ``size`` and ``files`` add to the totals."""
        with self._lock:
            self.source, self.message = source, message
            self.bytes_total += size
            self.files_total += files

    def add_bytes(self, count: int) -> None:
        """Count downloaded bytes; raises ``Stopped`` once a stop was requested."""
        with self._lock:
            if self._first_byte is None:
                self._first_byte = time.monotonic()
            self.bytes_done += count
            self._downloaded += count
        if self._stop.is_set():
            raise Stopped(self._stop.reason)

    def add_files(self, count: int, size: int = 0) -> None:
        """Count finished files (with their bytes, for files found in the cache)."""
        with self._lock:
            self.files_done += count
            self.bytes_done += size

    def report(
        self,
        state: TrainerState = "running",
        message: str = "",
        fetched: list[FetchedSource] | None = None,
    ) -> ProgressReport:
        with self._lock:
            elapsed = time.monotonic() - self._first_byte if self._first_byte else 0.0
            fetch = FetchProgress(
                source=self.source,
                bytes_done=self.bytes_done,
                bytes_total=max(self.bytes_total, self.bytes_done),
                bytes_per_second=round(self._downloaded / elapsed, 1) if elapsed > 0 else 0.0,
                files_done=self.files_done,
                files_total=max(self.files_total, self.files_done),
            )
            return ProgressReport(
                time=datetime.now(UTC),
                state=state,
                message=(message or self.message)[:1024],
                fetch=fetch,
                fetched=fetched or [],
            )
