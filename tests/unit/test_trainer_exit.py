"""A trainer that finished exits 0 whatever the control plane does at that moment, and its
termination message says it completed, with the model and the final step: the operator can
tell a completed run from a failure even when no report arrived."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetrain.api.report import CHANNEL_PATH, tree_digest
from kubetrain.api.termination import parse_termination
from tests.polling import eventually
from tests.trainer.handwritten import MODULE, TOTAL_STEPS, job

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Channel:
    """A report channel that takes reports while the run trains and, from its final report
    on, answers nothing (an API server whose etcd froze as the run ended)."""

    url: str
    states: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def final_report_held(self) -> bool:
        return "completed" in self.states


@pytest.fixture
def hanging_channel() -> Iterator[Channel]:
    channel = Channel(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state = json.loads(body).get("state", "running")
            channel.states.append(state)
            if state == "completed":
                channel.release.wait(300)  # holds the connection open, never answers
                return
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    channel.url = f"http://127.0.0.1:{server.server_port}{CHANNEL_PATH}"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    yield channel
    channel.release.set()
    server.shutdown()
    server.server_close()


def unreachable_url() -> str:
    """A loopback port nothing listens on: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{CHANNEL_PATH}"


@dataclass
class Finished:
    code: int
    output: str
    termination: str
    checkpoints: Path


def run_trainer(tmp_path: Path, url: str) -> Finished:
    """The hand-written trainer as a Pod runs it, pushing to ``url``; waits for its exit."""
    token = tmp_path / "token"
    token.write_text("report-token")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBETRAIN_", "POD_"))}
    env = base | {
        "KUBETRAIN_CONFIG": json.dumps(job()),
        "KUBETRAIN_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "KUBETRAIN_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "KUBETRAIN_REPORT_URL": url,
        "KUBETRAIN_REPORT_TOKEN_FILE": str(token),
        "KUBETRAIN_REPORT_CHANNEL_INTERVAL_SECONDS": "0.05",
        "POD_NAME": "handwritten-worker-0-a1",
        "POD_NAMESPACE": "team",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)]),
    }
    log = tmp_path / "trainer.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", MODULE], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        code = process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    termination = tmp_path / "termination-log"
    return Finished(
        code=code,
        output=log.read_text(errors="replace"),
        termination=termination.read_text() if termination.exists() else "",
        checkpoints=tmp_path / "checkpoints",
    )


def assert_completed(run: Finished) -> None:
    assert run.code == 0, run.output
    assert "Fatal Python error" not in run.output
    assert "the final progress report was not delivered" in run.output
    done = parse_termination(run.termination)
    assert done is not None, run.termination
    assert (done.state, done.step, done.total_steps, done.epoch) == ("completed", 12, 12, 2)
    assert done.step == TOTAL_STEPS and done.message == f"completed {TOTAL_STEPS} steps"
    output = run.checkpoints / "output"
    assert done.model is not None and done.model.path == str(output)
    assert (done.model.digest, done.model.size_bytes) == tree_digest(output)[:2]
    assert done.latest_checkpoint == "ckpt-00000008"


def test_a_run_that_ends_while_its_report_channel_hangs_exits_0_saying_it_completed(
    hanging_channel: Channel, tmp_path: Path
) -> None:
    finished: list[Finished] = []
    trainer = threading.Thread(
        target=lambda: finished.append(run_trainer(tmp_path, hanging_channel.url))
    )
    trainer.start()
    try:
        eventually(hanging_channel.final_report_held, timeout=120, what="the final report")
        # Written before the final report is tried: a kill now would leave it for the kubelet.
        message = (tmp_path / "termination-log").read_text()
        done = parse_termination(message)
        assert done is not None and done.state == "completed", message
    finally:
        trainer.join(240)
    (run,) = finished
    assert "running" in hanging_channel.states  # the channel took the reports before the last
    assert_completed(run)


def test_a_run_that_ends_with_its_report_channel_unreachable_exits_0_saying_it_completed(
    tmp_path: Path,
) -> None:
    assert_completed(run_trainer(tmp_path, unreachable_url()))
