"""Files the agent writes: atomically, so a process (or a restarted agent) never sees half."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode())


def read_json(path: Path) -> Any:
    """The decoded file, or None when it does not exist (or is not JSON yet)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def safe_relative(path: str) -> PurePosixPath:
    """A volume item path: relative, without ``..``."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ValueError(f"invalid volume item path {path!r}")
    return pure


def sync_tree(root: Path, files: Mapping[str, tuple[bytes, int]]) -> bool:
    """Make ``root`` hold exactly ``files`` (relative path -> content, mode).

    Changed files are replaced atomically, vanished ones removed; returns whether
    anything changed (a configMap or secret volume being updated in place).
    """
    root.mkdir(parents=True, exist_ok=True)
    changed = False
    wanted = {safe_relative(name): content for name, content in files.items()}
    for relative, (data, mode) in wanted.items():
        target = root / relative
        try:
            same = target.read_bytes() == data and (target.stat().st_mode & 0o7777) == mode
        except OSError:
            same = False
        if not same:
            write_atomic(target, data, mode)
            changed = True
    for dirpath, _dirs, names in os.walk(root, topdown=False):
        directory = Path(dirpath)
        for name in names:
            relative_path = PurePosixPath((directory / name).relative_to(root).as_posix())
            if relative_path not in wanted:
                (directory / name).unlink()
                changed = True
        if directory != root and not any(directory.iterdir()):
            directory.rmdir()
    return changed
