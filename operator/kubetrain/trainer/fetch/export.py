"""``python -m kubetrain.trainer.fetch.export PATH``: a directory (or one file) as a tar on stdout.

``kubectl train download`` (``kubetrain.sdk.download``) starts a small Pod of the operator
image on the job's volume, its main process ``--hold SECONDS`` (it waits, and exits on its own
at the deadline or on SIGTERM), and execs this in it: the API server streams the exec's
stdout to the client, so nothing passes through the container log (which a kubelet rotates
at 10 MiB). stdout is one header line, ``{"format": "kubetrain-export/1", "files": N,
"bytes": B}``, then an uncompressed tar of the files (models do not compress; gzip would
cost the small Pod's CPU), in path order, each file copied by ``sendfile``. Errors go to
stderr with a non-zero exit. The standard library only: the operator image has no extras.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tarfile
import time
from pathlib import Path

FORMAT = "kubetrain-export/1"
HOLD_FLAG = "--hold"
CHUNK = 1 << 20


def files_of(path: Path) -> tuple[Path, list[Path]]:
    """The directory the tar's names are relative to, and the regular files to send."""
    if path.is_dir():
        return path, sorted(p for p in path.rglob("*") if p.is_file())
    return path.parent, [path]


def header(files: int, size: int) -> bytes:
    """The line before the tar: what the reader should expect (its progress total)."""
    return (json.dumps({"format": FORMAT, "files": files, "bytes": size}) + "\n").encode()


def send(path: Path, out: int) -> int:
    """Write ``path`` (a directory or a file) to the file descriptor ``out`` as the header
    line and the tar; the bytes of file content sent."""
    root, files = files_of(path)
    sizes = [p.stat().st_size for p in files]
    _write(out, header(len(files), sum(sizes)))
    written = 0
    for file, size in zip(files, sizes, strict=True):
        with file.open("rb") as data:
            info = tarfile.TarInfo(file.relative_to(root).as_posix())
            info.size, info.mode = size, 0o644
            info.mtime = int(os.fstat(data.fileno()).st_mtime)
            _write(out, info.tobuf(format=tarfile.PAX_FORMAT))
            _copy(data.fileno(), out, size, file)
        _write(out, bytes(-size % tarfile.BLOCKSIZE))
        written += size + -size % tarfile.BLOCKSIZE
    # The end-of-archive marker (two zero blocks), padded to a whole record as tar(1) does.
    end = 2 * tarfile.BLOCKSIZE
    _write(out, bytes(end + -(written + end) % tarfile.RECORDSIZE))
    return sum(sizes)


def _copy(fd: int, out: int, size: int, name: Path) -> None:
    """``size`` bytes of the open file ``fd`` onto ``out``; raises if the file shrank."""
    done = 0
    while done < size:
        try:
            sent = os.sendfile(out, fd, done, min(CHUNK, size - done))
        except OSError:  # out cannot take sendfile (some terminals): read and write instead
            block = os.pread(fd, min(CHUNK, size - done), done)
            sent = len(block)
            _write(out, block)
        if sent == 0:
            raise OSError(f"{name} shrank while it was being sent ({done} of {size} bytes)")
        done += sent


def _write(out: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(out, view) :]


def hold(seconds: float) -> int:
    """The download Pod's main process: wait for the client's execs, at most ``seconds``, and
    exit at once on SIGTERM (as PID 1 nothing else would end it before the grace period)."""
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _stop)
    time.sleep(seconds)
    return 0


def _stop(signum: int, frame: object) -> None:
    sys.exit(0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubetrain.trainer.fetch.export",
        description="Write PATH (a directory or a file) to stdout as a header line and a tar.",
    )
    parser.add_argument("path", nargs="?", type=Path)
    parser.add_argument(
        HOLD_FLAG,
        type=float,
        metavar="SECONDS",
        help="wait (for execs) until SECONDS have passed or SIGTERM; no export",
    )
    args = parser.parse_args(argv)
    if args.hold is not None:
        return hold(args.hold)
    if args.path is None:
        parser.error("PATH is required (or --hold SECONDS)")
    path: Path = args.path
    if not path.exists():
        print(f"export: {path} does not exist on the volume", file=sys.stderr)
        return 2
    try:
        send(path, sys.stdout.fileno())
    except BrokenPipeError:
        print("export: the reader went away", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"export: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
