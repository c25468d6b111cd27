"""Checkpoints on the job's volume: written atomically, found only when complete, kept last-N,
never lost to a crash, never taken from a superseded attempt.

A checkpoint is staged in ``<root>/.staging/attempt-<n>`` (each attempt its own: a new
attempt never wipes what a Pod of an old one is still writing), its files fsynced, a manifest
(the completion marker, listing every file and its size, the commit's sequence and fence
generation) written last, and the directory renamed into place as ``ckpt-<step>``. The same
step committed again first renames the old directory aside (``ckpt-<step>.replaced-<x>``, still
a checkpoint by its manifest), renames the new one in, and only then deletes the old: at every
instant the volume holds a complete copy of the newest commit or of the one before it.

On resume only directories whose manifest is intact, whose files all match it and that no
fence rules out (``fences``) count; of two directories of one id the later commit wins. The
newest is the one committed last (a sequence number), not the highest step, so a run resumed
from an older checkpoint is never overtaken by an abandoned timeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubetrain.api.report import ReportedCheckpoint
from kubetrain.trainer.fences import (
    Fence,
    SupersededError,
    counts,
    fsync_dir,
    read_fences,
    superseding,
    write_fence,
)
from kubetrain.trainer.runtime import TrainerError

MANIFEST = "kubetrain-checkpoint.json"
STAGING = ".staging"
TRASH = ".trash"
PREFIX = "ckpt-"
REPLACED = ".replaced-"

log = logging.getLogger(__name__)

__all__ = [
    "MANIFEST",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "SupersededError",
    "checkpoint_id",
    "fsync_dir",
    "fsync_tree",
    "read_checkpoint",
    "write_synced",
]


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint, as its manifest describes it."""

    id: str
    path: Path
    step: int
    epoch: int
    loss: float | None
    created_at: datetime
    size_bytes: int
    sequence: int
    resume_request: str = ""
    """The RESUME_FROM of the run that wrote it: lets a restarted Pod tell "resume from X" done."""
    generation: int = 0
    """The fence generation it was committed under (0: before fences, or by a custom trainer)."""
    attempt: int = 0

    def to_report(self) -> ReportedCheckpoint:
        return ReportedCheckpoint(
            id=self.id,
            epoch=self.epoch,
            step=self.step,
            loss=self.loss,
            created_at=self.created_at,
            size_bytes=self.size_bytes,
            path=str(self.path),
        )


class CheckpointNotFoundError(TrainerError):
    """RESUME_FROM names a checkpoint that is not (or no longer, or not fully) on the volume."""


def checkpoint_id(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _commit_order(info: CheckpointInfo) -> tuple[int, int, int]:
    return info.sequence, info.generation, info.step


class CheckpointStore:
    """The checkpoints under one directory (the checkpoint volume's mount), as one attempt of
    one job (``attempt``, ``job``) sees and writes them."""

    def __init__(self, root: Path, keep_last: int, *, attempt: int = 0, job: str = "") -> None:
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        self.root = root
        self.keep_last = keep_last
        self.attempt = attempt
        self.job = job
        self.generation = 0
        """The generation of this store's fence (``fence``); 0 until it has fenced."""

    @property
    def staging(self) -> Path:
        return self.root / STAGING / f"attempt-{self.attempt}"

    def clear_staging(self) -> None:
        """Remove what a crashed writer of this attempt left half-done, and what a crash left
        mid-delete (call before anything is staged). Other attempts' staging is left alone:
        a Pod of theirs may still be writing there."""
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.root / TRASH, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def fence(self, pod: str = "") -> Fence:
        """Claim the volume for this attempt (rank 0, before resolving the resume point): from
        now on nothing an older attempt commits counts. ``SupersededError`` when a newer
        attempt of the job has claimed it already."""
        sequence = max((c.sequence for c in self._read_all()), default=0)
        fence = write_fence(
            self.root, attempt=self.attempt, job=self.job, pod=pod, sequence=sequence
        )
        self.generation = fence.generation
        return fence

    def complete(self) -> list[CheckpointInfo]:
        """The complete checkpoints that count, oldest first (by commit order)."""
        return self._scan()[0]

    def latest(self) -> CheckpointInfo | None:
        found = self.complete()
        return found[-1] if found else None

    def get(self, checkpoint: str) -> CheckpointInfo | None:
        return next((c for c in self.complete() if c.id == checkpoint), None)

    def resolve(self, request: str) -> CheckpointInfo | None:
        """The checkpoint a run starts from: ``""`` the latest (or none); an id that checkpoint,
        unless a run started with the same request has already written newer ones (a restart)."""
        latest = self.latest()
        if not request:
            return latest
        if latest is not None and latest.resume_request == request:
            return latest
        named = self.get(request)
        if named is None:
            ids = ", ".join(c.id for c in self.complete()) or "none"
            raise CheckpointNotFoundError(
                f"cannot resume from checkpoint {request!r}: it is not a complete checkpoint "
                f"in {self.root} (complete checkpoints: {ids})"
            )
        return named

    def commit(
        self,
        staged: Path,
        *,
        step: int,
        epoch: int,
        loss: float | None,
        resume_request: str = "",
        now: datetime | None = None,
    ) -> CheckpointInfo:
        """Seal a fully written staging directory and move it into place atomically; an older
        copy of the same step is deleted only once the new one is in place. Raises
        ``SupersededError`` (and drops the staged files) when a newer attempt has fenced the
        volume."""
        files = fsync_tree(staged)
        found = self._read_all()
        fences = read_fences(self.root)
        sequence = max([0, *(c.sequence for c in found), *(f.sequence for f in fences)]) + 1
        info = CheckpointInfo(
            id=checkpoint_id(step),
            path=self.root / checkpoint_id(step),
            step=step,
            epoch=epoch,
            loss=loss,
            created_at=(now or datetime.now(UTC)).replace(microsecond=0),
            size_bytes=sum(files.values()),
            sequence=sequence,
            resume_request=resume_request,
            generation=self.generation,
            attempt=self.attempt,
        )
        manifest = {
            "id": info.id,
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "createdAt": info.created_at.isoformat(),
            "sizeBytes": info.size_bytes,
            "sequence": info.sequence,
            "resumeRequest": resume_request,
            "generation": info.generation,
            "attempt": info.attempt,
            "files": files,
        }
        write_synced(staged / MANIFEST, json.dumps(manifest, indent=1))
        self._refuse_if_superseded(staged)
        aside: Path | None = None
        if info.path.exists():  # the same step again (e.g. resumed and stopped at once)
            aside = self.root / f"{info.id}{REPLACED}{uuid.uuid4().hex[:8]}"
            os.rename(info.path, aside)  # still a complete checkpoint, under another name
            fsync_dir(self.root)
        os.rename(staged, info.path)
        fsync_dir(self.root)
        if aside is not None:
            self._discard(aside)
        return info

    def prune(self) -> list[str]:
        """Delete all but the newest ``keep_last`` checkpoints that count, and directories that
        are only garbage (a replaced copy, a superseded attempt's commit); returns the removed
        ids. A superseded attempt deletes nothing."""
        if superseding(read_fences(self.root), self.generation) is not None:
            return []
        complete, garbage = self._scan()
        doomed = complete[: max(len(complete) - self.keep_last, 0)]
        for path in [*garbage, *(c.path for c in doomed)]:
            self._discard(path)
        return [c.id for c in doomed]

    def _refuse_if_superseded(self, staged: Path) -> None:
        newer = superseding(read_fences(self.root), self.generation)
        if newer is None:
            return
        self._discard(staged)
        raise SupersededError(
            f"attempt {self.attempt} is superseded: {newer.describe()} has started on "
            f"{self.root}; this attempt stops without committing"
        )

    def _read_all(self) -> list[CheckpointInfo]:
        """Every complete checkpoint directory, whether it counts or not."""
        found: list[CheckpointInfo] = []
        if not self.root.is_dir():
            return found
        for entry in self.root.iterdir():
            if entry.name.startswith(PREFIX) and entry.is_dir():
                info = read_checkpoint(entry)
                if info is None:
                    log.warning("ignoring incomplete checkpoint %s", entry)
                else:
                    found.append(info)
        return sorted(found, key=_commit_order)

    def _scan(self) -> tuple[list[CheckpointInfo], list[Path]]:
        """The checkpoints that count, oldest commit first (the later of two copies of an id),
        and the directories that are only garbage."""
        fences = read_fences(self.root)
        best: dict[str, CheckpointInfo] = {}
        garbage: list[Path] = []
        for info in self._read_all():
            if not counts(info.sequence, info.generation, fences):
                log.warning(
                    "ignoring checkpoint %s: attempt %d committed it after a newer attempt "
                    "started",
                    info.path, info.attempt,
                )  # fmt: skip
                garbage.append(info.path)
                continue
            if (older := best.get(info.id)) is not None:
                garbage.append(older.path)
            best[info.id] = info
        return sorted(best.values(), key=_commit_order), garbage

    def _discard(self, path: Path) -> None:
        # Renamed away first, so a crash mid-delete never leaves a directory that looks complete.
        trash = self.root / TRASH
        trash.mkdir(parents=True, exist_ok=True)
        doomed = trash / f"{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return  # gone already
        shutil.rmtree(doomed, ignore_errors=True)


def read_checkpoint(path: Path) -> CheckpointInfo | None:
    """A checkpoint's description, or None when the manifest is missing, broken or a file is off."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        for name, size in files.items():
            if (path / name).stat().st_size != size:
                return None
        loss = manifest.get("loss")
        return CheckpointInfo(
            id=str(manifest["id"]),
            path=path,
            step=int(manifest["step"]),
            epoch=int(manifest["epoch"]),
            loss=float(loss) if loss is not None else None,
            created_at=datetime.fromisoformat(manifest["createdAt"]),
            size_bytes=int(manifest["sizeBytes"]),
            sequence=int(manifest["sequence"]),
            resume_request=str(manifest.get("resumeRequest", "")),
            generation=int(manifest.get("generation", 0)),
            attempt=int(manifest.get("attempt", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def fsync_tree(root: Path) -> dict[str, int]:
    """Flush every file under ``root`` to disk; returns relative path -> size."""
    files: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(root).as_posix()] = path.stat().st_size
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(directory)
    return files


def write_synced(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
