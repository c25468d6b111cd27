"""The agent's state directory: what it must remember across restarts, and where.

::

    pods/<uid>/pod.json                      the Pod's sandbox record (IP, node, start time)
    pods/<uid>/volumes/<volume>/             emptyDir, configMap, secret, projected... files
    pods/<uid>/hosts, pods/<uid>/hostname    mounted at /etc/hosts and /etc/hostname
    pods/<uid>/containers/<name>/<n>/        the n-th attempt of a container (see runtime)
    logs/<namespace>_<pod>_<uid>/<name>/<n>.log   stdout and stderr of that attempt
    volumes/<pv-name>/                       data of a provisioned PersistentVolume
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from kubetrain.localcluster.nodeagent.files import read_json, write_json

READY_FILE = "agent.json"  # written by the agent's CLI once it runs: its PID and nodes


@dataclass(frozen=True)
class PodRecord:
    """The sandbox of one Pod: created once, before its first container starts."""

    uid: str
    namespace: str
    name: str
    node: str
    ip: str
    started_at: float
    host_network: bool = False
    grace_seconds: int = 30  # for stopping its containers should the Pod vanish


class Layout:
    """Paths inside one state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def pods(self) -> Path:
        return self.root / "pods"

    @property
    def volumes(self) -> Path:
        """Where provisioned PersistentVolumes keep their data."""
        return self.root / "volumes"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pod_dir(self, uid: str) -> Path:
        return self.pods / uid

    def volume_dir(self, uid: str, volume: str) -> Path:
        return self.pods / uid / "volumes" / volume

    def attempt_dir(self, uid: str, container: str, attempt: int) -> Path:
        return self.pods / uid / "containers" / container / str(attempt)

    def attempts(self, uid: str, container: str) -> list[int]:
        """The attempt numbers of a container, oldest first."""
        directory = self.pods / uid / "containers" / container
        if not directory.is_dir():
            return []
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())

    def log_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.logs / f"{namespace}_{name}_{uid}"

    def log_path(self, record: PodRecord, container: str, attempt: int) -> Path:
        return (
            self.log_dir(record.namespace, record.name, record.uid) / container / f"{attempt}.log"
        )

    # -- pod records -------------------------------------------------------------------

    def save(self, record: PodRecord) -> None:
        write_json(self.pod_dir(record.uid) / "pod.json", asdict(record))

    def load(self, uid: str) -> PodRecord | None:
        data = read_json(self.pod_dir(uid) / "pod.json")
        return PodRecord(**data) if isinstance(data, dict) else None

    def uids(self) -> list[str]:
        """Every Pod with a directory here, with or without a sandbox record."""
        return sorted(p.name for p in self.pods.iterdir()) if self.pods.is_dir() else []

    def remove(self, uid: str) -> None:
        """Forget a Pod: its sandbox, volumes and attempts (its logs are kept)."""
        shutil.rmtree(self.pod_dir(uid), ignore_errors=True)
