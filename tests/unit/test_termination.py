"""A completed trainer's termination message: one line of JSON the operator reads strictly,
and anything else (a plain message, a log tail, something malformed) reads as None."""

from __future__ import annotations

import json

import pytest

from kubetrain.api.report import ReportedModel
from kubetrain.api.termination import (
    MAX_TERMINATION_BYTES,
    Termination,
    encode_termination,
    parse_termination,
)

MODEL = ReportedModel(
    path="/checkpoints/output", format="peft-lora", size_bytes=4096, digest="sha256:" + "0" * 64
)


def test_a_termination_reads_back_as_written() -> None:
    done = Termination(
        message="completed 18 steps", step=18, total_steps=18, epoch=2, total_epochs=2,
        model=MODEL, latest_checkpoint="ckpt-00000016",
    )  # fmt: skip
    text = encode_termination(done)
    assert "\n" not in text and json.loads(text)["kubetrain"] == "termination/v1"
    assert parse_termination(text + "\n") == done


@pytest.mark.parametrize(
    "text",
    [
        "completed 18 steps (2.00 epochs)",
        "ConfigurationError: spec.llm.baseModel is missing",
        '{"state": "completed", "step": 3}',  # not marked as a termination
        '{"kubetrain": "termination/v1", "state": "failed"}',
        '{"kubetrain": "termination/v1", "step": -1}',
        '{"kubetrain": "termination/v1", "step": 20, "totalSteps": 18}',
        '{"kubetrain": "termination/v1", "model": {"path": "/x", "sizeBytes": NaN}}',
        '{"kubetrain": "termination/v1", "latestCheckpoint": "../etc"}',
        '{"kubetrain": "termination/v1", "message": "' + "x" * MAX_TERMINATION_BYTES + '"}',
        '["kubetrain"]',
        "{not json",
        "",
    ],
)
def test_anything_else_is_not_a_termination(text: str) -> None:
    assert parse_termination(text) is None


def test_a_long_termination_is_shortened_to_fit_the_kubelets_limit() -> None:
    long = Termination(
        message="m" * 1024,
        model=MODEL.model_copy(update={"uri": "s3://b/" + "k" * 2000, "upload_error": "e" * 1024}),
    )
    text = encode_termination(long)
    assert len(text.encode()) <= MAX_TERMINATION_BYTES
    done = parse_termination(text)
    assert done is not None and done.model is not None and done.model.digest == MODEL.digest
