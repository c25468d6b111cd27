"""A job's trained model onto this machine: from where it was published (spec.output), or
from the job's checkpoint volume through a short-lived Pod.

From a URI the files come through fsspec with this machine's own credentials (the default
chain: environment, profile). From the volume, a small Pod of the operator image in the job's
namespace mounts the claim read-only and waits; the SDK execs ``kubetrain.trainer.fetch
.export`` in it, which writes a header line and a tar of the model to stdout, and the API
server streams that to us (the way ``kubectl cp`` works: no container log, which a kubelet
rotates at 10 MiB, is involved). The tar is unpacked as it arrives, a chunk at a time, into a
staging directory beside the destination that becomes the destination only once the files
are all there, the export exited 0 and they match the digest the trainer reported.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream
from websocket import ABNF, WebSocketConnectionClosedException, WebSocketTimeoutException

from kubetrain import __version__
from kubetrain.api.children import checkpoint_claim_name
from kubetrain.api.job import TrainingJob
from kubetrain.api.report import TRAIN_LOG, tree_digest
from kubetrain.api.status import ModelOutput
from kubetrain.sdk.errors import KubetrainError, NotFoundError, api_errors

Progress = Callable[[int, int], None]
"""Called with (bytes so far, bytes in all)."""
EXPORT_MOUNT = "/model-volume"
CLAIM_ROOT = "/checkpoints"
"""Where the trainers mount the checkpoint claim: the paths status gives are under it."""
DEFAULT_IMAGE = f"ghcr.io/kubetrain/operator:{__version__}"
"""The download Pod's image: the operator's (69 MB), which has the export module."""
EXPORT_MODULE = "kubetrain.trainer.fetch.export"
EXPORT_FORMAT = "kubetrain-export/1"
RESOURCES = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"cpu": "500m", "memory": "128Mi"},
}
"""The download Pod's: the export is ``sendfile`` from the volume to the exec's stdout pipe
(14 MiB resident for a 60 MB model); the CPU limit only bounds throughput."""
HOLD_MARGIN = 60
"""Seconds the download Pod outlives the client's timeout (then exits on its own)."""
STALL_SECONDS = 60.0
"""An exec that sends nothing for this long is abandoned."""
CHUNK = 1 << 20
HEADER_LIMIT = 4096
STDERR_LIMIT = 16 * 1024


def from_uri(uri: str, dest: Path, progress: Progress | None = None) -> int:
    """Download every object under ``uri`` into ``dest``; the bytes downloaded."""
    try:
        import fsspec  # type: ignore[import-untyped]  # noqa: PLC0415 - the fetch extra
    except ImportError:
        raise KubetrainError(
            f"downloading from {uri} needs fsspec and s3fs/gcsfs: pip install 'kubetrain[fetch]'"
        ) from None
    fs, root = fsspec.core.url_to_fs(uri)
    try:
        found: dict[str, Any] = fs.find(root, detail=True)
    except PermissionError as err:
        raise KubetrainError(
            f"{uri}: access denied with this machine's credentials ({err})"
        ) from None
    if not found:
        raise KubetrainError(f"{uri}: nothing there (was the model deleted?)")
    total, done = sum(int(info.get("size") or 0) for info in found.values()), 0
    prefix = root.rstrip("/") + "/"
    for key, info in sorted(found.items()):
        target = dest / key[len(prefix) :] if key.startswith(prefix) else dest / Path(key).name
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(key, str(target))
        done += int(info.get("size") or 0)
        if progress is not None:
            progress(done, total)
    return done


def from_volume(
    core: client.CoreV1Api,
    job: TrainingJob,
    model: ModelOutput,
    dest: Path,
    *,
    image: str = DEFAULT_IMAGE,
    timeout: float = 600.0,
    progress: Progress | None = None,
) -> int:
    """Copy ``model`` (the job's status.model) off the job's volume into ``dest`` (new or
    empty), checked against its reported digest; the bytes copied."""
    name = job.metadata.name or ""
    if not model.claim_name or not model.path:
        raise KubetrainError(f"trainingjob {name!r} reports no volume path for its model")
    return export(
        core, job.metadata.namespace or "default", model.claim_name, model.path, dest,
        image=image, timeout=timeout, expected=model.digest, progress=progress, job_name=name,
    )  # fmt: skip


def train_log(
    core: client.CoreV1Api, job: TrainingJob, *, image: str = DEFAULT_IMAGE, timeout: float
) -> list[Any]:
    """The per-step metrics the trainer writes to the job's volume (``train-log.jsonl``)."""
    namespace, name = job.metadata.namespace or "default", job.metadata.name or ""
    with tempfile.TemporaryDirectory() as tmp:
        export(core, namespace, checkpoint_claim_name(job), f"{CLAIM_ROOT}/{TRAIN_LOG}",
               Path(tmp) / "log", image=image, timeout=timeout, job_name=name)  # fmt: skip
        lines = (Path(tmp) / "log" / TRAIN_LOG).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def export(
    core: client.CoreV1Api,
    namespace: str,
    claim: str,
    path: str,
    dest: Path,
    *,
    image: str = DEFAULT_IMAGE,
    timeout: float = 600.0,
    expected: str | None = None,
    progress: Progress | None = None,
    job_name: str = "",
) -> int:
    """Copy ``path`` (a directory or a file, as the trainers see it, under /checkpoints) off
    ``claim`` into ``dest`` (new or empty) through a short-lived Pod of ``image`` in
    ``namespace``; the bytes copied. ``dest`` appears only when the copy is whole and matches
    ``expected`` (a ``tree_digest``) where that is given. Needs create/get/delete on pods
    and create on pods/exec in ``namespace``."""
    fresh(dest)
    deadline = time.monotonic() + timeout
    hold = math.ceil(timeout) + HOLD_MARGIN
    owner = job_name or claim
    pod_name = f"{owner[:40].rstrip('-.')}-download-{secrets.token_hex(3)}"
    with api_errors():
        core.create_namespaced_pod(namespace, export_pod(pod_name, owner, claim, image, hold))  # type: ignore[arg-type]  # a plain manifest
    try:
        _wait_running(core, namespace, pod_name, image=image, deadline=deadline, timeout=timeout)
        output = ExecOutput.start(core, namespace, pod_name, export_command(path), deadline)
        try:
            return receive(output, dest, expected, progress)
        finally:
            output.disconnect()
    finally:
        with suppress(NotFoundError), api_errors():
            core.delete_namespaced_pod(pod_name, namespace, grace_period_seconds=0)


def receive(
    output: ExecOutput, dest: Path, expected: str | None, progress: Progress | None = None
) -> int:
    """Unpack the export's stdout into ``dest``; it counts only once the export exited 0.
    When unpacking fails, the export's own error (its stderr) is the one raised, if it had one."""
    try:
        with staged(dest) as part:
            size = unpack(io.BufferedReader(output, CHUNK), part, expected, progress)
            output.finish()
    except KubetrainError:
        output.finish(limit=10.0)
        raise
    return size


def export_command(path: str) -> list[str]:
    """What the SDK execs in the download Pod to have ``path`` (as the trainers see it, under
    /checkpoints) written to stdout."""
    inside = path.removeprefix(CLAIM_ROOT).lstrip("/")
    return ["python", "-m", EXPORT_MODULE, f"{EXPORT_MOUNT}/{inside}".rstrip("/")]


def export_pod(pod_name: str, job_name: str, claim: str, image: str, hold: int) -> dict[str, Any]:
    """The download Pod: ``claim`` mounted read-only under /model-volume, a main process that
    waits ``hold`` seconds for the client's exec (and the Pod's deadline a minute after), the
    least privilege and small, bounded resources."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "labels": {"app.kubernetes.io/name": "kubetrain",
                       "app.kubernetes.io/component": "download",
                       "app.kubernetes.io/instance": job_name},
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": hold + HOLD_MARGIN,
            "terminationGracePeriodSeconds": 5,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "export",
                "image": image,
                "command": ["python", "-m", EXPORT_MODULE, "--hold", str(hold)],
                "resources": RESOURCES,
                "volumeMounts": [{"name": "model", "mountPath": EXPORT_MOUNT, "readOnly": True}],
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "model", "persistentVolumeClaim": {
                "claimName": claim, "readOnly": True}}],
        },
    }  # fmt: skip


_CANNOT_START = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
     "CreateContainerError", "RunContainerError"}
)  # fmt: skip


def _wait_running(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    *,
    image: str,
    deadline: float,
    timeout: float,
) -> None:
    """Until the download Pod's container runs; fails at once when it cannot start."""
    delay, waiting = 0.2, "not scheduled yet"
    while True:
        with api_errors():
            pod = core.read_namespaced_pod(name, namespace)
        status = pod.status
        phase = status.phase if status is not None else None
        statuses = (status.container_statuses or []) if status is not None else []
        states = [s.state for s in statuses if s.state is not None]
        if phase == "Running" and states and states[0].running is not None:
            return
        if phase in ("Failed", "Succeeded"):
            reason = (status.reason or status.message or phase) if status else phase
            raise KubetrainError(f"the download Pod {name} ended before the copy: {reason}")
        for state in states:
            if state.waiting is not None and state.waiting.reason:
                waiting = f"{state.waiting.reason}: {state.waiting.message or ''}".rstrip(": ")
                if state.waiting.reason in _CANNOT_START:
                    raise KubetrainError(
                        f"the download Pod {name} cannot start ({waiting}); its image is "
                        f"{image} (--image / image= picks another with kubetrain installed)"
                    )
        for condition in (status.conditions or []) if status else []:
            if condition.type == "PodScheduled" and condition.status == "False":
                waiting = f"unschedulable: {condition.message}"
        if time.monotonic() > deadline:
            raise KubetrainError(
                f"the download Pod {name} was not running within {timeout:g}s ({waiting})"
            )
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 2.0)


class ExecOutput(io.RawIOBase):
    """The stdout of a command exec'd in a Pod, read a websocket frame at a time (never
    buffered whole, unlike the client's ``WSClient.update``, which also keeps a copy of
    everything), with the tail of its stderr and its exit status from the error channel."""

    STDOUT, STDERR, ERROR, CLOSE = 1, 2, 3, 255

    def __init__(self, websocket: Any, what: str, deadline: float) -> None:
        super().__init__()
        self._socket = websocket
        self._what = what
        self._deadline = deadline
        self._pending = memoryview(b"")
        self._stdout_open = True
        self._open = True
        self._status = b""
        self.stderr = b""

    @classmethod
    def start(
        cls, core: client.CoreV1Api, namespace: str, pod: str, command: list[str], deadline: float
    ) -> ExecOutput:
        try:
            ws = stream(
                core.connect_get_namespaced_pod_exec, pod, namespace, command=command,
                stdin=False, stdout=True, stderr=True, tty=False,
                binary=True, _preload_content=False,
            )  # fmt: skip
        except ApiException as err:
            hint = " (exec needs create on pods/exec)" if "403" in str(err.reason) else ""
            raise KubetrainError(
                f"cannot exec into the download Pod {pod}: {err.reason}{hint}"
            ) from None
        return cls(ws.sock, f"the export in the download Pod {pod}", deadline)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and self._stdout_open:
            self._next_frame(self._deadline)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def finish(self, limit: float | None = None) -> None:
        """Read to the end of the exec (within ``limit`` seconds, then give up quietly) and
        raise unless the command exited 0."""
        deadline = self._deadline if limit is None else time.monotonic() + limit
        deadline = min(deadline, self._deadline)
        while self._open:
            self._pending = memoryview(b"")
            try:
                self._next_frame(deadline)
            except KubetrainError:
                if limit is None:
                    raise
                return
        if self._status:
            status = json.loads(self._status)
            if status.get("status") == "Success":
                return
            causes = (status.get("details") or {}).get("causes") or []
            code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), None)
            said = self.stderr.decode(errors="replace").strip()[-2000:]
            raise KubetrainError(
                f"{self._what} failed"
                + (f" (exit {code})" if code else f": {status.get('message', '')}")
                + (f": {said}" if said else "")
            )
        raise KubetrainError(f"{self._what} ended without an exit status (the stream broke)")

    def disconnect(self) -> None:
        """Close the websocket (``close``, which a buffered reader calls when it is dropped,
        leaves it open for ``finish``)."""
        if self._open:
            self._open = self._stdout_open = False
            with suppress(Exception):
                self._socket.close()

    def _next_frame(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KubetrainError(f"{self._what} did not finish in time")
        self._socket.settimeout(min(STALL_SECONDS, remaining))
        try:
            opcode, frame = self._socket.recv_data_frame(True)
        except WebSocketTimeoutException:
            raise KubetrainError(
                f"{self._what} sent nothing for {min(STALL_SECONDS, remaining):.0f}s"
            ) from None
        except (WebSocketConnectionClosedException, OSError):
            opcode, frame = ABNF.OPCODE_CLOSE, None
        if opcode == ABNF.OPCODE_CLOSE:
            self._open = self._stdout_open = False
            return
        data: bytes = frame.data if opcode == ABNF.OPCODE_BINARY else b""  # not a ping
        if len(data) < 2:  # nothing, or a channel's opening frame (its number alone)
            return
        channel, payload = data[0], data[1:]
        if channel == self.CLOSE:  # v5: the channel in payload[0] has no more data
            if payload[0] == self.STDOUT:
                self._stdout_open = False
        elif channel == self.STDOUT:
            self._pending = memoryview(payload)
        elif channel == self.STDERR:
            self.stderr = (self.stderr + payload)[-STDERR_LIMIT:]
        elif channel == self.ERROR:  # the exit status: the command is done, stdout too
            self._status += payload
            self._stdout_open = False


def unpack(
    source: IO[bytes], dest: Path, expected: str | None, progress: Progress | None = None
) -> int:
    """Unpack the export's output (``kubetrain.trainer.fetch.export``: a header line, then a
    tar) from ``source`` into the existing empty directory ``dest`` as it arrives, a chunk at
    a time; the bytes of file content. Refuses an incomplete stream (fewer files or bytes
    than the header said), anything but plain files and paths inside ``dest``, and files that
    do not match ``expected`` (the digest the trainer reported) when that is given."""
    line = source.readline(HEADER_LIMIT)
    try:
        head = json.loads(line) if line.endswith(b"\n") else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != EXPORT_FORMAT:
        raise KubetrainError(
            f"the download's output does not start with a {EXPORT_FORMAT} header "
            f"(got {line[:80]!r}): is the download image's kubetrain older than this SDK's?"
        )
    files, total = int(head["files"]), int(head["bytes"])
    done, count = 0, 0
    if progress is not None:
        progress(0, total)
    try:
        with tarfile.open(fileobj=source, mode="r|") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise KubetrainError(f"the download holds {member.name!r}, not a plain file")
                target = dest / tarfile.data_filter(member, str(dest)).name
                target.parent.mkdir(parents=True, exist_ok=True)
                data = tar.extractfile(member)
                assert data is not None  # a plain file always has its data
                with target.open("xb") as out:
                    while block := data.read(CHUNK):
                        out.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
                count += 1
    except tarfile.TarError as err:
        raise KubetrainError(
            f"the download is damaged or cut short after {done} of {total} bytes: {err}"
        ) from None
    if count != files or done != total:
        raise KubetrainError(
            f"the download is incomplete: {count} of {files} files, {done} of {total} bytes"
        )
    check(dest, expected)
    return done


def check(dest: Path, digest: str | None) -> None:
    """The downloaded files are the ones the trainer published (when it said what those were)."""
    if not digest:
        return
    found, _, _ = tree_digest(dest)
    if found != digest:
        raise KubetrainError(f"the downloaded model's digest {found} is not the reported {digest}")


def fresh(dest: Path) -> Path:
    """``dest`` is new or an empty directory: something to download into."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise KubetrainError(f"{dest} is not empty; download into a new or empty directory")
    return dest


@contextmanager
def staged(dest: Path) -> Iterator[Path]:
    """A fresh directory beside ``dest`` to download into; it becomes ``dest`` when the block
    ends without an error and is removed when it raises, so nothing half-done looks complete."""
    fresh(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield part
        part.chmod(0o755)  # mkdtemp's 0700 is for the staging only
        os.replace(part, dest)  # an empty dest directory is replaced, atomically
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
