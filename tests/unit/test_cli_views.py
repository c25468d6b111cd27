"""What the plugin prints for jobs: list rows, describe, checkpoints, estimates, watch frames."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest

from kubetrain.api import TrainingJob
from kubetrain.api.catalogue import Catalogue
from kubetrain.cli import live, views
from kubetrain.cli.term import FULL, Style
from kubetrain.sdk import STOP_REASON_ANNOTATION, JobEvent, NotFoundError
from kubetrain.sdk.cost import estimate

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
PLAIN = Style()
TERMINAL = Style(colour=True, bars=True)


def job(name: str = "llama", **status: Any) -> TrainingJob:
    defaults: dict[str, Any] = {
        "phase": "Running",
        "progress": {
            "currentEpoch": 1,
            "totalEpochs": 3,
            "currentStep": 40,
            "totalSteps": 100,
            "percentage": 40.0,
            "elapsedSeconds": 120.0,
            "remainingSeconds": 180.0,
        },
        "metrics": {
            "currentLoss": 1.23456,
            "bestLoss": 1.2,
            "learningRate": 2e-4,
            "throughput": 1500.0,
            "throughputUnit": "tokens/s",
            "evaluation": {"perplexity": 3.4},
        },
        "checkpoints": [
            {"id": "step-20", "epoch": 1, "step": 20, "loss": 1.5, "sizeBytes": 2048},
            {"id": "step-40", "epoch": 1, "step": 40, "loss": 1.3, "sizeBytes": 4096},
        ],
        "latestCheckpoint": "step-40",
        "resourceAllocation": {"summary": "a100:2x2"},
        "estimatedCost": {"hourlyUSD": 12.0, "totalUSD": 1.0},
        "resourceUsage": {"costUSD": 0.4},
        "conditions": [
            {
                "type": "Running",
                "status": "True",
                "reason": "TrainerRunning",
                "message": "attempt 1 is training",
                "lastTransitionTime": "2026-05-01T11:58:00Z",
            }
        ],
        "attempt": 1,
    }
    return TrainingJob.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "creationTimestamp": "2026-05-01T11:55:00Z",
            },
            "spec": {
                "modelType": "llm",
                "dataset": {"pvc": {"claimName": "data", "subPath": "train.jsonl"}},
                "llm": {"baseModel": "meta-llama/Llama-2-7b-hf"},
                "resources": {"gpuType": "a100"},
            },
            "status": defaults | status,
        }
    )


def test_list_rows_are_whitespace_separated_tokens() -> None:
    lines = views.list_table([job(), job("fresh", phase=None, progress=None)], NOW, PLAIN)
    assert [line.split() for line in lines] == [
        ["NAME", "PHASE", "PROGRESS", "EPOCH", "LOSS", "ETA", "COST", "AGE"],
        ["llama", "Running", "40.0%", "1/3", "1.235", "3m00s", "$0.40", "5m"],
        ["fresh", "-", "-", "-", "1.235", "-", "$0.40", "5m"],
    ]


def test_wide_lists_and_namespaces() -> None:
    header, row = views.list_table([job()], NOW, PLAIN, wide=True, namespaces=True)
    assert header.split()[:2] == ["NAMESPACE", "NAME"] and header.split()[-1] == "CHECKPOINT"
    assert row.split()[-6:] == ["llm", "a100:2x2", "normal", "-", "$1.00", "step-40"]


def test_a_job_waiting_for_kueue_shows_its_queue_place_and_kueues_reason() -> None:
    said = "insufficient unused quota for nvidia.com/gpu in flavor a100, 4 more needed"
    queued = job(
        phase="Queued",
        queue={"name": "gpus", "clusterQueue": "team-a", "position": 2, "message": said,
               "workload": "trainingjob-llama", "preemptions": 1},
    )  # fmt: skip
    _, row = views.list_table([queued], NOW, PLAIN)
    assert "queued gpus #2" in row
    _, wide = views.list_table([queued], NOW, PLAIN, wide=True)
    assert "gpus #2" in wide
    text = "\n".join(views.describe(queued, [], NOW, PLAIN))
    assert "Queue:          LocalQueue gpus (ClusterQueue team-a), waiting, position 2" in text
    assert "preempted 1 time(s)" in text and said in text
    admitted = job(queue={"name": "gpus", "admitted": True, "flavors": {"nvidia.com/gpu": "a100"}})
    text = "\n".join(views.describe(admitted, [], NOW, PLAIN))
    assert "LocalQueue gpus, admitted (nvidia.com/gpu: a100)" in text


def test_finished_jobs_have_no_eta() -> None:
    assert views.eta(job(phase="Completed")) == "-"
    assert views.eta(job(phase="Stopped")) == "-"


EVENTS = [
    JobEvent("Normal", "Created", "creating 2 worker Pod(s), attempt 1", 1, NOW),
    JobEvent("Warning", "InvalidProgressReport", "report is not valid JSON", 2, NOW),
]


def test_describe_in_a_pipe_is_plain() -> None:
    text = "\n".join(views.describe(job(), EVENTS, NOW, PLAIN))
    assert "\x1b" not in text and FULL not in text
    for expected in (
        "Name:           llama",
        "Created:        2026-05-01T11:55:00Z (5m ago)",
        "Model:          llm: meta-llama/Llama-2-7b-hf (lora)",
        "Dataset:        pvc data/train.jsonl",
        "Resources:      a100:2x2, priority normal",
        "Phase:          Running (TrainerRunning: attempt 1 is training)",
        "Progress:       40.0%",
        "                epoch 1/3, step 40/100",
        "Time:           elapsed 2m00s, remaining 3m00s, ETA -",
        "Cost:           $0.40 so far, $12.00/h, estimated total $1.00",
        "  Loss:           1.235 (best 1.2, validation -)",
        "  Throughput:     1500 tokens/s",
        "  perplexity:     3.4",
        "Checkpoints:    2 (latest step-40)",
        "  Warning   InvalidProgressReport   0s    report is not valid JSON",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"
    checkpoint_lines = [line.split() for line in text.splitlines() if "step-" in line]
    assert checkpoint_lines[1][:3] == ["step-20", "1", "20"]
    assert checkpoint_lines[2][:3] == ["*step-40", "1", "40"]


def test_describe_on_a_terminal_draws_a_bar_and_the_stop_reason() -> None:
    stopped = job(phase="Stopped").model_copy(deep=True)
    stopped.spec.suspend = True
    stopped.metadata.annotations[STOP_REASON_ANNOTATION] = "out of quota"
    text = "\n".join(views.describe(stopped, [], NOW, TERMINAL))
    progress = next(line for line in text.splitlines() if line.startswith("Progress:"))
    assert progress.count(FULL) == 8 and "40.0%" in progress
    assert "Stop reason:    out of quota" in text
    assert "\x1b[35mStopped\x1b[0m" in text
    assert "Events:\n  -" in text


def test_checkpoint_table_marks_the_latest() -> None:
    assert [line.split() for line in views.checkpoints_table(job(), NOW)] == [
        ["ID", "EPOCH", "STEP", "LOSS", "SIZE", "AGE"],
        ["step-20", "1", "20", "1.5", "2.0KiB", "-"],
        ["*step-40", "1", "40", "1.3", "4.0KiB", "-"],
    ]


def test_estimate_text() -> None:
    lines = views.estimate_text(estimate(Catalogue(), "h100", 2, 8, 1.5, source="defaults"))
    assert lines == [
        "GPU type:       h100",
        "Workers:        2 x 8 GPU(s)",
        "Price:          $4.50 per GPU-hour (16 GPU(s) billed)",
        "Hourly:         $72.00",
        "Total:          $108.00 for 1.5 h",
        "Prices from:    defaults",
    ]
    cpu = views.estimate_text(estimate(Catalogue(), "cpu", 2))
    assert cpu[1] == "Workers:        2" and "per worker-hour (2 worker(s) billed)" in cpu[2]


def test_watch_settles_on_completed_failed_or_a_requested_stop() -> None:
    assert live.settled(job(phase="Completed")) and live.settled(job(phase="Failed"))
    assert not live.settled(job(phase="Running")) and not live.settled(job(phase=None))
    stopped = job(phase="Stopped")
    assert not live.settled(stopped)  # resumed, the operator has not acted yet
    stopped.spec.suspend = True
    assert live.settled(stopped)


def test_a_piped_watch_prints_changed_lines_only() -> None:
    out = io.StringIO()
    snapshots = [
        {"ns/llama": job()},
        {"ns/llama": job()},  # a resync with nothing new
        {"ns/llama": job(progress={"currentStep": 90, "totalSteps": 100, "percentage": 90.0})},
        {"ns/llama": job(phase="Completed")},
    ]
    code = live.run(snapshots, out, PLAIN, name="llama", where="namespace ns", namespaces=False)
    assert code == 0
    assert [line.split() for line in out.getvalue().splitlines()] == [
        ["NAME", "PHASE", "PROGRESS", "EPOCH", "STEP", "LOSS", "ETA"],
        ["llama", "Running", "40.0%", "1/3", "40/100", "1.235", "3m00s"],
        ["llama", "Running", "90.0%", "-", "90/100", "1.235", "-"],
        ["llama", "Completed", "40.0%", "1/3", "40/100", "1.235", "-"],
    ]


def test_a_terminal_watch_redraws_in_place_and_fails_when_a_job_failed() -> None:
    out = io.StringIO()
    snapshots = [
        {"a/one": job("one"), "b/two": job("two")},
        {"a/one": job("one", phase="Completed"), "b/two": job("two", phase="Failed")},
    ]
    code = live.run(
        snapshots,
        out,
        Style(bars=True),
        name=None,
        where="all namespaces",
        namespaces=True,
        clock=lambda: NOW,
    )
    assert code == 1
    frames = out.getvalue().split("\x1b[J")
    assert frames[0].count("\x1b[2K") == 5 and "\x1b[5F" not in frames[0]
    assert frames[1].startswith("\x1b[5F")  # back over the 5 lines of the first frame
    assert "ns/one" in frames[0] and "ns/two" in frames[0]
    assert "2 of 2 job(s) active in all namespaces at 12:00:00" in frames[0]
    assert "0 of 2 job(s) active" in frames[1]


def test_a_watch_with_no_jobs_says_so_and_a_missing_job_is_an_error() -> None:
    out = io.StringIO()
    assert live.run([{}], out, PLAIN, name=None, where="namespace ns", namespaces=False) == 0
    assert out.getvalue() == "No TrainingJobs in namespace ns.\n"
    with pytest.raises(NotFoundError, match='"ghost" not found in namespace ns'):
        live.run([{}], out, PLAIN, name="ghost", where="namespace ns", namespaces=False)
    assert live.run([], out, PLAIN, name=None, where="x", namespaces=False) is None  # timed out


def test_frames_fit_the_terminal_width() -> None:
    narrow = live.frame([job()], Style(bars=True), 80, namespaces=False)
    wide = live.frame([job()], Style(bars=True), 200, namespaces=False)
    assert max(len(line) for line in narrow) <= 80
    assert narrow[1].count(FULL) < wide[1].count(FULL) == 16  # 40% of the widest bar (40)


def fetching_job() -> TrainingJob:
    return job(
        phase="Initializing",
        progress=None,
        conditions=[],
        initialization={
            "state": "Fetching",
            "attempts": 1,
            "source": "baseModel",
            "bytesDone": 256 << 20,
            "bytesTotal": 1 << 30,
            "bytesPerSecond": float(64 << 20),
            "percentage": 25.0,
            "remainingSeconds": 12.0,
        },
    )


def test_a_fetching_job_shows_the_download_where_training_progress_will_be() -> None:
    row = views.list_row(fetching_job(), NOW, PLAIN)
    assert row[1:3] == ["Initializing", "25.0%"] and row[5] == "12s"
    described = "\n".join(views.describe(fetching_job(), [], NOW, TERMINAL))
    assert "Fetch:          " in described and "25.0%" in described
    assert "baseModel 256.0MiB/1.0GiB at 64.0MiB/s, 12s left (attempt 1)" in described
    assert "Progress:       -" in described


def test_a_fetched_job_lists_its_sources_with_their_revisions() -> None:
    done = job(
        initialization={
            "state": "Complete",
            "attempts": 1,
            "sources": [
                {"name": "dataset", "uri": "s3://corpus/train.jsonl",
                 "revision": "0123456789abcdef", "path": "/cache/datasets/train-01/train.jsonl",
                 "sizeBytes": 2048, "reused": True},
            ],
        }
    )  # fmt: skip
    described = "\n".join(views.describe(done, [], NOW, PLAIN))
    assert "Fetch:          Complete" in described
    assert (
        "  dataset: s3://corpus/train.jsonl @ 0123456789ab -> "
        "/cache/datasets/train-01/train.jsonl (2.0KiB, reused)"
    ) in described


def test_describe_names_a_vision_job_s_pipeline_and_the_model_it_chose() -> None:
    vision = TrainingJob.model_validate(
        {"apiVersion": "kubetrain.io/v1alpha1", "kind": "TrainingJob",
         "metadata": {"name": "signs", "creationTimestamp": "2026-05-01T11:55:00Z"},
         "spec": {"modelType": "vision", "dataset": {"synthetic": {"samples": 8}},
                  "vision": {"pipeline": "rfdetr_detection"}}}
    )  # fmt: skip
    text = "\n".join(views.describe(vision, [], NOW, PLAIN))
    assert "Model:          vision: rfdetr_small (detection, pipeline rfdetr_detection)" in text
