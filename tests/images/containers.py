"""Pods run as containers: a rendered Pod's container started by podman (runc) the way a
kubelet would start it, from the image ``make images`` built.

What the Pod says about the container is what the container gets: its user and groups, a
read-only root filesystem, no capabilities, no privilege escalation, its env (field refs
resolved as the kubelet would), its CPU and memory limits, and each volume mounted where the
Pod mounts it (a PVC or a Secret from a host folder the test names, an ``emptyDir`` from a
fresh folder, ``medium: Memory`` as tmpfs), plus the kubelet's termination-message file.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OCI = ROOT / "hack" / "oci.sh"
TERMINATION_LOG = "/dev/termination-log"

JSON = dict[str, Any]


def oci(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``hack/oci.sh`` (podman or buildah on the project's own store); fails with its stderr."""
    result = subprocess.run(
        [str(OCI), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr}")
    return result


def image_config(ref: str) -> JSON:
    """The image's OCI config (entrypoint, user, env, labels) as podman reports it."""
    inspected: JSON = json.loads(oci("podman", "image", "inspect", ref).stdout)[0]
    return inspected


def run_in_image(ref: str, *argv: str, timeout: float = 300, user: str = "") -> str:
    """Run ``argv`` in the image (network off, read-only, as the image's user or ``user``);
    its stdout."""
    result = oci(
        "podman", "run", "--rm", "--pull=never", "--passwd=false", "--network=none", "--read-only",
        *([f"--user={user}"] if user else []), "--entrypoint", argv[0], ref, *argv[1:],
        timeout=timeout,
    )  # fmt: skip
    return result.stdout


def _field(pod: JSON, path: str) -> str:
    meta = pod["metadata"]
    values = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": "local-podman",
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
    }
    if path not in values:
        raise AssertionError(f"the test runner cannot resolve the field ref {path}")
    return values[path]


def _env(pod: JSON, container: JSON, extra: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = _field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise AssertionError(f"the test runner cannot resolve env {var['name']}")
    return env | dict(extra)


def _quantity_bytes(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def _cpus(value: str) -> str:
    return f"{int(value[:-1]) / 1000:g}" if value.endswith("m") else value


@dataclass
class PodContainer:
    """One container of ``pod`` (a rendered manifest) as a podman container of ``image``.

    ``volumes`` maps a Pod volume name to the host folder that stands for it (PVCs, Secrets,
    ConfigMaps); ``emptyDir`` volumes get a fresh folder under ``scratch``. ``entrypoint``
    False runs the image's own ENTRYPOINT instead of the container's ``command``; ``command``
    replaces both."""

    pod: JSON
    image: str
    scratch: Path
    volumes: Mapping[str, Path] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    network: str = "none"
    use_command: bool = True
    command: Sequence[str] | None = None
    args: Sequence[str] | None = None
    container_name: str = ""
    name: str = field(default_factory=lambda: f"kubetrain-test-{uuid.uuid4().hex[:10]}")

    def __post_init__(self) -> None:
        containers = self.pod["spec"]["containers"]
        self.container: JSON = next(
            (c for c in containers if c["name"] == self.container_name), containers[0]
        )
        self.termination_log = self.scratch / f"{self.name}.termination-log"

    @property
    def grace_seconds(self) -> int:
        return int(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def argv(self) -> list[str]:
        """``podman run`` for this container, detached."""
        spec, container = self.pod["spec"], self.container
        pod_security, security = (
            spec.get("securityContext", {}),
            container.get("securityContext", {}),
        )
        hostname = spec.get("hostname", self.pod["metadata"]["name"])
        # No /etc/passwd entry is added for the user (containerd adds none either).
        argv = ["podman", "run", "--detach", "--pull=never", "--passwd=false",
                f"--name={self.name}", f"--network={self.network}",
                f"--hostname={hostname}"]  # fmt: skip
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        gid = security.get("runAsGroup", pod_security.get("runAsGroup"))
        if uid is not None:
            argv.append(f"--user={uid}:{gid if gid is not None else 0}")
        if pod_security.get("fsGroup") is not None:
            argv.append(f"--group-add={pod_security['fsGroup']}")
        if security.get("readOnlyRootFilesystem"):
            argv += ["--read-only", "--read-only-tmpfs=false"]
        for cap in security.get("capabilities", {}).get("drop", []):
            argv.append(f"--cap-drop={cap}")
        if security.get("allowPrivilegeEscalation") is False:
            argv.append("--security-opt=no-new-privileges")
        limits = container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            argv.append(f"--cpus={_cpus(str(limits['cpu']))}")
        if "memory" in limits:
            argv.append(f"--memory={_quantity_bytes(str(limits['memory']))}")
        for name, value in _env(self.pod, container, self.env).items():
            argv += ["--env", f"{name}={value}"]
        argv += self._mounts()
        self.termination_log.write_text("")
        self.termination_log.chmod(0o666)
        argv.append(f"--volume={self.termination_log}:{TERMINATION_LOG}:rw")
        command = self.command or (container.get("command") if self.use_command else None)
        if command:
            argv.append(f"--entrypoint={json.dumps(command)}")
        argv.append(self.image)
        argv += list(self.args if self.args is not None else container.get("args", []))
        return argv

    def _mounts(self) -> list[str]:
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        binds: dict[str, tuple[Path, str]] = {}
        argv: list[str] = []
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            mode = "ro" if mount.get("readOnly") else "rw"
            target = mount["mountPath"]
            if "emptyDir" in volume and volume["emptyDir"].get("medium") == "Memory":
                argv.append(f"--tmpfs={target}:rw,mode=1777")
                continue
            if "emptyDir" in volume:
                source = self.scratch / f"{self.name}-{mount['name']}"
                source.mkdir(parents=True, exist_ok=True)
                source.chmod(0o777)  # the kubelet's emptyDir mode
            elif mount["name"] in self.volumes:
                source = self.volumes[mount["name"]]
            else:
                raise AssertionError(f"no host folder stands for the Pod's volume {mount['name']}")
            if mount.get("subPath"):
                source = source / mount["subPath"]
            binds[target] = (source, mode)
        # A mount inside another (a Secret under a ConfigMap's folder) needs its mount point
        # in the outer volume, which may be read-only in the container: made on the host.
        for target in binds:
            for outer, (source, _) in binds.items():
                if target.startswith(outer.rstrip("/") + "/"):
                    (source / target[len(outer) :].lstrip("/")).mkdir(parents=True, exist_ok=True)
        for target, (source, mode) in sorted(binds.items()):
            argv.append(f"--volume={source}:{target}:{mode}")
        return argv

    def start(self) -> PodContainer:
        oci(*self.argv())
        return self

    def state(self) -> JSON:
        inspected = json.loads(oci("podman", "inspect", self.name).stdout)[0]
        state: JSON = inspected["State"]
        return state

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def wait(self, timeout: float) -> int:
        """Wait for the container to exit; its exit code."""
        result = oci("podman", "wait", self.name, timeout=timeout)
        return int(result.stdout.strip().splitlines()[-1])

    def stop(self) -> int:
        """What the kubelet does on deletion: SIGTERM, SIGKILL after the grace period."""
        oci("podman", "stop", f"--time={self.grace_seconds}", self.name,
            timeout=self.grace_seconds + 60)  # fmt: skip
        return int(self.state()["ExitCode"])

    def exec(self, *argv: str) -> subprocess.Popen[bytes]:
        """``argv`` run in the running container as its user (``podman exec``, which stands
        for the API server's exec), its stdout and stderr pipes to read."""
        return subprocess.Popen(
            [str(OCI), "podman", "exec", self.name, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def logs(self) -> str:
        result = oci("podman", "logs", self.name, check=False)
        return result.stdout + result.stderr

    def termination_message(self) -> str:
        return self.termination_log.read_text().strip()

    def remove(self) -> None:
        oci("podman", "rm", "--force", "--time=0", self.name, check=False)
