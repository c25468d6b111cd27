"""The trained model on the job's volume: published atomically, with a manifest written last.

A restarted Pod that finds the manifest knows the job already completed and does not train
again; one that finds a directory without it starts the publication over.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from kubetrain.api.report import MODEL_MANIFEST, ReportedModel
from kubetrain.trainer.checkpoints import fsync_dir, fsync_tree, write_synced

__all__ = ["MODEL_MANIFEST", "publish", "published", "staging_dir"]


def staging_dir(output_dir: Path) -> Path:
    """A fresh directory beside ``output_dir`` (same filesystem) to write the model into."""
    staged = output_dir.parent / f".{output_dir.name}.staging"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def publish(
    staged: Path, output_dir: Path, *, format: str, summary: dict[str, Any]
) -> ReportedModel:
    """Move a fully written model into ``output_dir`` and seal it with the manifest."""
    files = fsync_tree(staged)
    manifest = {"format": format, "files": files, **summary}
    try:
        if output_dir.exists():
            trash = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(output_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staged, output_dir)
    except OSError:  # output_dir is a mount point of its own: copy in, manifest last
        shutil.copytree(staged, output_dir, dirs_exist_ok=True)
        shutil.rmtree(staged, ignore_errors=True)
    write_synced(output_dir / MODEL_MANIFEST, json.dumps(manifest, indent=1))
    fsync_dir(output_dir.parent)
    return ReportedModel(path=str(output_dir), format=format)


def published(output_dir: Path) -> tuple[ReportedModel, dict[str, Any]] | None:
    """The model a previous run of this job published, with its manifest, or None."""
    try:
        manifest = json.loads((output_dir / MODEL_MANIFEST).read_text())
        for name, size in manifest["files"].items():
            if (output_dir / name).stat().st_size != size:
                return None
        return ReportedModel(path=str(output_dir), format=str(manifest["format"])), manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
