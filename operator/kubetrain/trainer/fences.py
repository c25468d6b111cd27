"""Fences on the checkpoint volume: a superseded attempt's checkpoints are never resumed from.

A new attempt may start while a Pod of the old one (on a partitioned node) still writes to
the shared volume. Each starting rank 0 writes a fence, ``<root>/.fences/fence-<generation>.json``,
created atomically with the next generation number and the highest commit sequence it saw.
Every commit records the generation it was made under. A commit counts only if no fence of a
later generation was written before it (its sequence is at most that fence's), so whatever a
superseded attempt commits after a newer one started is ignored, whatever the interleaving;
and a trainer that sees a newer fence refuses to commit (``SupersededError``).

Within one job, the operator's attempt number orders the attempts: a trainer whose attempt
is below the newest fence's (a Pod of an old attempt that started late) is superseded before
it trains. A fence of the trainer's own attempt already there means the job was created again
with the same name on a kept volume: it fences anew.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

FENCES = ".fences"
_FENCE = re.compile(r"^fence-(\d{8,})\.json$")
_POD_ATTEMPT = re.compile(r"-a(\d+)$")
_CREATE_TRIES = 64


class SupersededError(Exception):
    """A newer attempt has started on this volume: this one must stop without committing."""


@dataclass(frozen=True)
class Fence:
    """One starting attempt's claim on the volume."""

    generation: int
    attempt: int
    job: str
    sequence: int
    """The highest commit sequence on the volume when it was written."""
    pod: str = ""

    def describe(self) -> str:
        who = f"attempt {self.attempt}" + (f" (Pod {self.pod})" if self.pod else "")
        return f"{who}, fence generation {self.generation}"


def attempt_from_env(environ: Mapping[str, str]) -> int:
    """The operator's attempt number: ``KUBETRAIN_ATTEMPT``, else the ``-a<n>`` the operator
    puts at the end of a worker Pod's name (``POD_NAME``); 0 outside a Pod."""
    raw = (environ.get("KUBETRAIN_ATTEMPT") or "").strip()
    if raw.isdigit():
        return int(raw)
    found = _POD_ATTEMPT.search(environ.get("POD_NAME") or "")
    return int(found.group(1)) if found else 0


def read_fences(root: Path) -> list[Fence]:
    """Every readable fence on the volume, oldest generation first."""
    found: list[Fence] = []
    folder = root / FENCES
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if (match := _FENCE.match(name)) is None:
            continue
        try:
            raw = json.loads((folder / name).read_text())
            found.append(
                Fence(
                    generation=int(match.group(1)),
                    attempt=int(raw["attempt"]),
                    job=str(raw.get("job", "")),
                    sequence=int(raw["sequence"]),
                    pod=str(raw.get("pod", "")),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring an unreadable fence %s: %s", name, err)
    return sorted(found, key=lambda f: f.generation)


def superseding(fences: Iterable[Fence], generation: int) -> Fence | None:
    """The first fence written after ``generation``'s, if any."""
    later = sorted((f for f in fences if f.generation > generation), key=lambda f: f.generation)
    return later[0] if later else None


def counts(sequence: int, generation: int, fences: Iterable[Fence]) -> bool:
    """Whether a commit (its sequence, the generation it was made under) was made before every
    later generation's fence: only then may a job resume from it."""
    return all(sequence <= f.sequence for f in fences if f.generation > generation)


def write_fence(root: Path, *, attempt: int, job: str, pod: str, sequence: int) -> Fence:
    """Fence the volume for this attempt (the next generation), or raise ``SupersededError``
    when a newer attempt of the same job has fenced it already."""
    folder = root / FENCES
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(_CREATE_TRIES):
        fences = read_fences(root)
        newest = fences[-1] if fences else None
        if (later := _later_attempt(fences, job, attempt)) is not None:
            raise SupersededError(
                f"attempt {attempt} is superseded: {later.describe()} has started on "
                f"{root}; this attempt stops without training or committing"
            )
        fence = Fence(
            generation=(newest.generation if newest else 0) + 1,
            attempt=attempt,
            job=job,
            sequence=max([sequence, *(f.sequence for f in fences)]),
            pod=pod,
        )
        if _create(folder / f"fence-{fence.generation:08d}.json", _encode(fence)):
            return fence
    raise OSError(f"could not write a fence in {folder} ({_CREATE_TRIES} generations taken)")


def _later_attempt(fences: list[Fence], job: str, attempt: int) -> Fence | None:
    """The newest fence of ``job`` when its attempt is later than ``attempt``: this attempt's
    Pod started after a newer one's (a node that was cut off). None when ``attempt`` has a
    fence already: only one rank 0 starts per attempt, so that was the job before it was
    created again under the same name."""
    own = [f for f in fences if f.job == job]
    if not own or own[-1].attempt <= attempt or any(f.attempt == attempt for f in own):
        return None
    return own[-1]


def _encode(fence: Fence) -> str:
    return json.dumps(
        {
            "attempt": fence.attempt,
            "job": fence.job,
            "pod": fence.pod,
            "sequence": fence.sequence,
            "createdAt": datetime.now(UTC).replace(microsecond=0).isoformat(),
        }
    )


def _create(path: Path, text: str) -> bool:
    """Create ``path`` with ``text``, complete or not at all; False when it exists already."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # atomic, and never replaces a fence another trainer wrote
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():  # a volume without hard links: a narrow race, still whole files
            return False
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return True


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (where the filesystem allows)."""
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
