"""The real node's Pod sandbox image, built here: registries' pause images cannot be pulled.

``images/pause/pause.go`` is compiled with the local Go (standard library only, static) and
packed into a one-layer OCI archive that containerd imports. Both are cached by the digest
of the source, so a changed source is a new image and name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from kubetrain.localcluster.controlplane import ClusterError, repo_root

SOURCE = ("go.mod", "pause.go")


def _source_dir() -> Path:
    return repo_root() / "images" / "pause"


def source_digest() -> str:
    h = hashlib.sha256()
    for name in SOURCE:
        h.update(name.encode() + b"\0" + (_source_dir() / name).read_bytes())
    return h.hexdigest()[:16]


IMAGE_REPO = "localhost/kubetrain/pause"


def image() -> str:
    return f"{IMAGE_REPO}:{source_digest()}"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(layout: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = _sha(data)
    info = tarfile.TarInfo(f"blobs/sha256/{digest.split(':')[1]}")
    info.size = len(data)
    layout.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def _layer(binary: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        info.size, info.mode = len(binary), 0o755
        tar.addfile(info, io.BytesIO(binary))
    return out.getvalue()


def archive(cache: Path) -> Path:
    """The OCI archive of the sandbox image (built into ``cache`` unless already there)."""
    name = image()
    path = cache / f"pause-{source_digest()}.oci.tar"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    binary_path = cache / "pause"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    result = subprocess.run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary_path), "."],
        cwd=_source_dir(), env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise ClusterError(f"building the Pod sandbox (images/pause): {result.stderr.strip()}")
    layer = _layer(binary_path.read_bytes())
    compressed = gzip.compress(layer, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]},
    }
    partial = path.with_suffix(".partial")
    with tarfile.open(partial, "w") as out:
        config_blob = _blob(out, json.dumps(config).encode())
        layer_blob = _blob(out, compressed)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_blob}],
        }
        manifest_blob = _blob(out, json.dumps(manifest).encode())
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **manifest_blob,
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        for member, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    partial.rename(path)
    return path
