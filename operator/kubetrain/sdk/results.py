"""Small result types the SDK returns besides TrainingJobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class JobEvent:
    """A Kubernetes Event about a TrainingJob (reasons such as TrainerRunning, WorkerLost)."""

    type: str
    reason: str
    message: str
    count: int
    last_seen: datetime | None

    @classmethod
    def from_api(cls, event: Any) -> JobEvent:
        """From a ``CoreV1Event`` (the newest of its timestamps is when it was last seen)."""
        seen = event.last_timestamp or event.event_time or event.first_timestamp
        if seen is None and event.metadata is not None:
            seen = event.metadata.creation_timestamp
        return cls(
            type=event.type or "Normal",
            reason=event.reason or "",
            message=event.message or "",
            count=event.count or 1,
            last_seen=seen,
        )


@dataclass(frozen=True)
class Cancelled:
    """What ``cancel`` did: the job deleted, and the checkpoint claim kept if asked."""

    name: str
    namespace: str
    kept_claim: str | None
    """The PersistentVolumeClaim left in place with the checkpoints, or None."""
