"""The Argo CD health check (Lua) maps TrainingJob statuses to Argo CD health."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = Path(__file__).resolve().parents[2] / "config" / "argocd" / "trainingjob-health.lua"


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([convert(v) for v in value])
        return value

    lua.globals().obj = convert(obj)
    result = lua.execute(SCRIPT.read_text())
    return str(result["status"]), str(result["message"])


def job(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "j", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = {"observedGeneration": generation, **status}
    return obj


def _condition(type_: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": "X", "message": message}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, ("Progressing", "Waiting for the kubetrain operator")),
        ({"phase": "Pending"}, ("Progressing", "Pending")),
        (
            {"phase": "Running", "progress": {"percentage": 42.5}},
            ("Progressing", "Running (42.5%)"),
        ),
        (
            {
                "phase": "Queued",
                "conditions": [_condition("Queued", "0/3 nodes: Insufficient nvidia.com/gpu")],
            },
            ("Progressing", "Queued: 0/3 nodes: Insufficient nvidia.com/gpu"),
        ),
        ({"phase": "Completed"}, ("Healthy", "Training completed")),
        (
            {
                "phase": "Failed",
                "conditions": [_condition("Failed", "worker 0 exited with code 1")],
            },
            ("Degraded", "worker 0 exited with code 1"),
        ),
        (
            {"phase": "Stopped", "conditions": [_condition("Suspended", "spec.suspend is true")]},
            ("Suspended", "spec.suspend is true"),
        ),
    ],
)
def test_statuses_map_to_argo_health(
    status: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    assert health(job(status)) == expected


def test_a_spec_the_operator_has_not_seen_yet_is_progressing() -> None:
    obj = job({"phase": "Completed"}, generation=2)
    obj["status"]["observedGeneration"] = 1
    assert health(obj)[0] == "Progressing"
