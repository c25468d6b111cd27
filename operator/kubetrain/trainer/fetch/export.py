"""``python -m kubetrain.trainer.fetch.export PATH``: a directory (or one file) as text on stdout.

The download Pod that ``kubectl train download`` starts on the job's volume runs this: the
directory as a gzipped tar, base64 in lines between ``BEGIN`` and ``END <digest> <bytes>``,
so it travels through the Pod's log, the one stream every kubelet serves.
"""

from __future__ import annotations

import base64
import io
import sys
import tarfile
from pathlib import Path

from kubetrain.api.report import tree_digest

LINE = 76 * 3 // 4  # bytes per line: 76 base64 characters


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).exists():
        print(f"usage: python -m kubetrain.trainer.fetch.export PATH (got {argv})", file=sys.stderr)
        return 2
    path = Path(argv[0])
    if path.is_dir():
        directory = path
        digest, size, files = tree_digest(directory)
    else:
        directory, files = path.parent, [path]
        digest, size = "-", path.stat().st_size
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.relative_to(directory).as_posix())
    data = packed.getvalue()
    out = sys.stdout
    out.write("BEGIN\n")
    for start in range(0, len(data), LINE):
        out.write(base64.b64encode(data[start : start + LINE]).decode() + "\n")
    out.write(f"END {digest} {size}\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
