"""Timestamps in the two formats the Kubernetes API uses."""

from __future__ import annotations

import datetime


def rfc3339(epoch: float) -> str:
    """``metav1.Time``: seconds precision, UTC."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(epoch: float) -> str:
    """``metav1.MicroTime``: microseconds precision, UTC (Lease renew times)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """Epoch seconds from an RFC 3339 timestamp as the API writes it."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
