"""Downloads off the job's volume without a cluster: the real export module runs as a
subprocess and its output reaches the SDK's reading code as the API server's exec would send
it (websocket frames on channels 1, 2 and 3); and the download Pod is small and locked down."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websocket import ABNF

from kubetrain.api.report import MODEL_MANIFEST, tree_digest
from kubetrain.cli.main import build_parser
from kubetrain.sdk import KubetrainError
from kubetrain.sdk.download import (
    DEFAULT_IMAGE,
    EXPORT_MODULE,
    ExecOutput,
    check,
    export_pod,
    from_uri,
    receive,
    staged,
    unpack,
)
from tests.polling import eventually

BIG = 60 * 1000 * 1000
FRAME = 32 * 1024
SUCCESS = {"metadata": {}, "status": "Success"}


def exporter(path: Path) -> subprocess.Popen[bytes]:
    """``python -m kubetrain.trainer.fetch.export PATH``, as the SDK execs it in the Pod."""
    return subprocess.Popen(
        [sys.executable, "-m", EXPORT_MODULE, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@dataclass
class Frame:
    data: bytes


class PipeExec:
    """Stands for the API server's exec websocket: the export's stdout as channel-1 frames,
    then its stderr (channel 2) and its exit status (channel 3) as the API server sends them,
    then the close; ``cut`` ends it after that many stdout bytes with no status (a broken
    stream)."""

    def __init__(self, process: subprocess.Popen[bytes], cut: int | None = None) -> None:
        self.process, self.cut, self.sent = process, cut, 0
        self.frames: Iterator[tuple[int, bytes]] = self._frames()

    def _frames(self) -> Iterator[tuple[int, bytes]]:
        assert self.process.stdout is not None and self.process.stderr is not None
        yield ABNF.OPCODE_BINARY, b"\x01"  # each channel's opening frame: its number alone
        yield ABNF.OPCODE_PING, b"ping"
        while block := self.process.stdout.read(FRAME):
            if self.cut is not None and self.sent + len(block) >= self.cut:
                yield ABNF.OPCODE_BINARY, b"\x01" + block[: self.cut - self.sent]
                self.process.kill()
                yield ABNF.OPCODE_CLOSE, b""
                return
            self.sent += len(block)
            yield ABNF.OPCODE_BINARY, b"\x01" + block
        if stderr := self.process.stderr.read():
            yield ABNF.OPCODE_BINARY, b"\x02" + stderr
        code = self.process.wait(timeout=60)
        status = SUCCESS if code == 0 else {
            "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: exit code {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }  # fmt: skip
        yield ABNF.OPCODE_BINARY, b"\x03" + json.dumps(status).encode()
        yield ABNF.OPCODE_CLOSE, b""

    def settimeout(self, seconds: float) -> None:
        assert seconds > 0

    def recv_data_frame(self, control_frame: bool) -> tuple[int, Frame]:
        opcode, data = next(self.frames)
        return opcode, Frame(data)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=60)


def output_of(process: subprocess.Popen[bytes], cut: int | None = None) -> ExecOutput:
    return ExecOutput(PipeExec(process, cut), "the export", deadline=float("inf"))


def model_dir(root: Path, big: int = 0) -> Path:
    """A model directory as a trainer publishes it: weights, a nested file, the manifest."""
    model = root / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "adapter_model.safetensors").write_bytes(os.urandom(big or 3 * 1024 * 1024 + 7))
    (model / "tokenizer" / "vocab.json").write_text(json.dumps({"a": 1}))
    (model / "empty.txt").write_bytes(b"")
    (model / MODEL_MANIFEST).write_text(json.dumps({"kind": "lora"}))
    return model


def left_in(root: Path) -> list[str]:
    """What a download left next to its destination (a staging directory would show here)."""
    return sorted(p.name for p in root.iterdir())


def test_a_60_mb_model_streams_in_chunks_with_progress_and_its_digest_checked(
    tmp_path: Path,
) -> None:
    model = model_dir(tmp_path / "volume", big=BIG)
    digest, size, files = tree_digest(model)
    seen: list[tuple[int, int]] = []
    dest = tmp_path / "out" / "downloaded"
    process = exporter(model)
    tracemalloc.start()
    try:
        copied = receive(output_of(process), dest, digest, lambda d, t: seen.append((d, t)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert copied == size > BIG
    assert tree_digest(dest)[0] == digest
    assert sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) == sorted(
        p.relative_to(model) for p in files
    )
    assert peak < 16 * 1024 * 1024, f"the SDK held {peak} bytes at once: the model is streamed"
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert all(t == size for _, t in seen)
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(seen)), "monotonic"
    assert len(seen) > 50, "progress comes as the bytes do, not once at the end"
    assert left_in(tmp_path / "out") == ["downloaded"]
    assert process.wait(timeout=60) == 0


def test_a_digest_that_does_not_match_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "volume")
    dest = tmp_path / "out" / "downloaded"
    with pytest.raises(KubetrainError, match=r"digest sha256:\w+ is not the reported sha256:0+"):
        receive(output_of(exporter(model)), dest, "sha256:" + "0" * 64)
    assert left_in(tmp_path / "out") == []


def _cuts(model: Path) -> list[int]:
    """Where to break the stream: in the header line, right after it, inside the first file's
    tar header, inside its data, and at a file boundary (a whole file missing)."""
    stream = subprocess.run([sys.executable, "-m", EXPORT_MODULE, str(model)],
                            capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    header = stream.index(b"\n") + 1
    first = sorted(p for p in model.rglob("*") if p.is_file())[0].stat().st_size
    boundary = header + 512 + first + -first % 512
    return [10, header, header + 100, header + 512 + first // 2, boundary]


@pytest.mark.parametrize("where", range(5))
def test_a_stream_cut_short_is_refused_and_nothing_is_left(where: int, tmp_path: Path) -> None:
    model = model_dir(tmp_path / "volume")
    cut = _cuts(model)[where]
    dest = tmp_path / "out" / "downloaded"
    with pytest.raises(KubetrainError, match=r"cut short|incomplete|does not start|stream broke"):
        receive(output_of(exporter(model), cut=cut), dest, tree_digest(model)[0])
    assert not dest.exists() and left_in(tmp_path / "out") == []


def test_a_cut_stream_is_refused_by_counting_without_a_digest(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "volume")
    cut = _cuts(model)[-1]
    stream = subprocess.run([sys.executable, "-m", EXPORT_MODULE, str(model)],
                            capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    with (
        pytest.raises(KubetrainError, match=r"incomplete: 1 of 4 files"),
        staged(tmp_path / "out" / "d") as part,
    ):
        unpack(io.BytesIO(stream[:cut]), part, None)
    assert left_in(tmp_path / "out") == []


def test_the_exports_own_error_is_the_one_reported(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "downloaded"
    with pytest.raises(KubetrainError) as raised:
        receive(output_of(exporter(tmp_path / "no-such-model")), dest, None)
    assert str(raised.value) == (
        f"the export failed (exit 2): export: {tmp_path / 'no-such-model'} does not exist on "
        "the volume"
    )
    assert left_in(tmp_path / "out") == []


def test_one_file_comes_as_itself(tmp_path: Path) -> None:
    log = tmp_path / "volume" / "train-log.jsonl"
    log.parent.mkdir()
    log.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0}\n')
    copied = receive(output_of(exporter(log)), tmp_path / "got", None)
    assert copied == log.stat().st_size
    assert (tmp_path / "got" / "train-log.jsonl").read_text() == log.read_text()


def test_an_export_into_a_non_empty_directory_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "mine.txt").write_text("keep")
    with pytest.raises(KubetrainError, match="not empty"), staged(tmp_path / "dest"):
        pass
    assert (tmp_path / "dest" / "mine.txt").read_text() == "keep"


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w|") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    head = {"format": "kubetrain-export/1", "files": 1, "bytes": 2}
    return json.dumps(head).encode() + b"\n" + packed.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 2) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "error"),
    [
        (_member("../outside"), "outside the destination"),
        (_member("/etc/cron.d/x"), ""),  # made relative by the data filter: stays inside
        (_member("link", tarfile.SYMTYPE), "'link', not a plain file"),
        (_member("fifo", tarfile.FIFOTYPE), "'fifo', not a plain file"),
    ],
)
def test_only_plain_files_inside_the_destination_are_written(
    member: tarfile.TarInfo, error: str, tmp_path: Path
) -> None:
    stream = io.BytesIO(_tar((member, b"hi")))
    if not error:
        with staged(tmp_path / "out" / "d") as part:
            assert unpack(stream, part, None) == 2
        assert (tmp_path / "out" / "d" / "etc" / "cron.d" / "x").read_bytes() == b"hi"
        return
    with pytest.raises(KubetrainError, match=error), staged(tmp_path / "out" / "d") as part:
        unpack(stream, part, None)
    assert left_in(tmp_path / "out") == []


def test_output_of_an_older_image_is_refused_by_its_header(tmp_path: Path) -> None:
    legacy = b"BEGIN\nH4sIAAAAAAAA\nEND - 0\n"
    with pytest.raises(KubetrainError, match="older than this SDK"), staged(tmp_path / "d") as p:
        unpack(io.BytesIO(legacy), p, None)


def test_the_export_needs_only_the_standard_library() -> None:
    probe = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"import {EXPORT_MODULE}\n"
        "extra = sorted({m.split('.')[0] for m in set(sys.modules) - before}"
        " - set(sys.stdlib_module_names) - {'kubetrain'})\n"
        "print(','.join(extra))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)  # fmt: skip
    assert run.stdout.strip() == "", f"the operator image lacks {run.stdout.strip()}"


def test_the_download_pod_is_small_read_only_unprivileged_and_bounded_in_time() -> None:
    pod = export_pod("tiny-download-abc123", "tiny", "tiny-checkpoints", DEFAULT_IMAGE, 660)
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == DEFAULT_IMAGE and "operator" in DEFAULT_IMAGE
    resources: dict[str, Any] = container["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound
    assert resources["limits"]["memory"] in ("64Mi", "96Mi", "128Mi")
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    (mount,) = container["volumeMounts"]
    (volume,) = spec["volumes"]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"] == {
        "claimName": "tiny-checkpoints", "readOnly": True}  # fmt: skip
    # It waits for the client's exec, at most its hold; the Pod's own deadline is later still.
    assert container["command"] == ["python", "-m", EXPORT_MODULE, "--hold", "660"]
    assert spec["activeDeadlineSeconds"] > 660 and spec["restartPolicy"] == "Never"


def _catches_sigterm(pid: int) -> bool:
    """The process has its SIGTERM handler, so sending it is no race with its start."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:"))
                 .split()[1], 16)  # fmt: skip
    return bool(caught & 1 << (signal.SIGTERM - 1))


def test_the_pods_main_process_ends_on_sigterm_and_on_its_own_at_the_deadline() -> None:
    held = subprocess.Popen([sys.executable, "-m", EXPORT_MODULE, "--hold", "600"])
    try:
        eventually(lambda: _catches_sigterm(held.pid), timeout=60, what="the hold to wait")
        held.send_signal(signal.SIGTERM)
        assert held.wait(timeout=60) == 0
    finally:
        held.kill()
        held.wait(timeout=60)
    short = subprocess.run(
        [sys.executable, "-m", EXPORT_MODULE, "--hold", "0.1"], check=False, timeout=60
    )
    assert short.returncode == 0


def test_a_published_model_is_staged_too_and_a_bad_digest_leaves_nothing(tmp_path: Path) -> None:
    model = model_dir(tmp_path / "bucket")
    digest, size, _ = tree_digest(model)
    with staged(tmp_path / "out" / "good") as part:
        assert from_uri(model.as_uri(), part) == size
        check(part, digest)
    assert tree_digest(tmp_path / "out" / "good")[0] == digest
    with (
        pytest.raises(KubetrainError, match="is not the reported"),
        staged(tmp_path / "out" / "bad") as part,
    ):
        from_uri(model.as_uri(), part)
        check(part, "sha256:" + "0" * 64)
    assert left_in(tmp_path / "out") == ["good"]


@pytest.mark.parametrize("command", ["download", "plot"])
def test_the_download_pods_image_is_the_operators_unless_image_says(command: str) -> None:
    parser = build_parser()
    assert parser.parse_args([command, "tiny"]).image == DEFAULT_IMAGE
    assert (
        parser.parse_args([command, "tiny", "--image", "my/kubetrain:1"]).image == "my/kubetrain:1"
    )
