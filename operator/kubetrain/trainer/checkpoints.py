"""Checkpoints on the job's volume: written atomically, found only when complete, kept last-N.

A checkpoint is staged in ``<root>/.staging``, its files fsynced, a manifest (the completion
marker, listing every file and its size) written last, and the directory renamed into
place. On resume only directories whose manifest is intact and whose files all match it
count; the newest is the one committed last (a sequence number), not the highest step, so
a run resumed from an older checkpoint is never overtaken by an abandoned timeline.
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
from kubetrain.trainer.runtime import TrainerError

MANIFEST = "kubetrain-checkpoint.json"
STAGING = ".staging"
PREFIX = "ckpt-"

log = logging.getLogger(__name__)


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


class CheckpointStore:
    """The checkpoints under one directory (the checkpoint volume's mount)."""

    def __init__(self, root: Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError("keep_last must be at least 1")
        self.root = root
        self.keep_last = keep_last

    @property
    def staging(self) -> Path:
        return self.root / STAGING

    def clear_staging(self) -> None:
        """Remove what a crashed writer left half-done (call before anything is staged)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True, exist_ok=True)

    def complete(self) -> list[CheckpointInfo]:
        """The complete checkpoints, oldest first (by commit order)."""
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
        return sorted(found, key=lambda c: (c.sequence, c.step))

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
        """Seal a fully written staging directory and move it into place atomically."""
        files = fsync_tree(staged)
        previous = self.complete()
        info = CheckpointInfo(
            id=checkpoint_id(step),
            path=self.root / checkpoint_id(step),
            step=step,
            epoch=epoch,
            loss=loss,
            created_at=(now or datetime.now(UTC)).replace(microsecond=0),
            size_bytes=sum(files.values()),
            sequence=max((c.sequence for c in previous), default=0) + 1,
            resume_request=resume_request,
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
            "files": files,
        }
        write_synced(staged / MANIFEST, json.dumps(manifest, indent=1))
        if info.path.exists():  # the same step again (e.g. resumed and stopped at once)
            self._discard(info.path)
        os.rename(staged, info.path)
        fsync_dir(self.root)
        return info

    def prune(self) -> list[str]:
        """Delete all but the newest ``keep_last`` complete checkpoints; returns the removed ids."""
        complete = self.complete()
        doomed = complete[: max(len(complete) - self.keep_last, 0)]
        for checkpoint in doomed:
            self._discard(checkpoint.path)
        return [c.id for c in doomed]

    def _discard(self, path: Path) -> None:
        # Renamed away first, so a crash mid-delete never leaves a directory that looks complete.
        self.staging.mkdir(parents=True, exist_ok=True)
        trash = self.staging / f"trash-{path.name}-{uuid.uuid4().hex[:8]}"
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


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


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)
