"""The node agent: nodes, Pods, volumes and heartbeats wired together on a few threads."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kubetrain.localcluster.nodeagent import network
from kubetrain.localcluster.nodeagent.config import NodeSpec, default_pool
from kubetrain.localcluster.nodeagent.events import Events
from kubetrain.localcluster.nodeagent.informer import Informer
from kubetrain.localcluster.nodeagent.kube import ApiError, Kube, Obj
from kubetrain.localcluster.nodeagent.logserver import LogServer
from kubetrain.localcluster.nodeagent.nodes import NodeHeartbeat
from kubetrain.localcluster.nodeagent.pods import PodContext, PodWorker
from kubetrain.localcluster.nodeagent.provisioner import Provisioner, ensure_storage_class
from kubetrain.localcluster.nodeagent.runtime import Runtime
from kubetrain.localcluster.nodeagent.state import Layout
from kubetrain.localcluster.nodeagent.volumes import Volumes

log = logging.getLogger(__name__)

DEFAULT_NAME = "kubetrain-local"


class NodeAgentError(RuntimeError):
    """The agent cannot run here, or could not register with the API server."""


def base_env() -> dict[str, str]:
    """The environment every container starts from (an image's ENV, in a real cluster).

    The agent's own interpreter directory leads PATH, so ``python`` in a Pod's command
    is the interpreter (and virtualenv) the agent runs in.
    """
    interpreter_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if path.split(os.pathsep)[0] != interpreter_dir:
        path = os.pathsep.join([interpreter_dir, path])
    return {
        "PATH": path,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


def service_env(host: str, port: int) -> dict[str, str]:
    """What ``load_incluster_config()`` reads: the API server on loopback, never a ClusterIP."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
    }


class _Loop:
    """A thread that runs ``step`` when woken, and at least every ``interval`` seconds."""

    def __init__(self, name: str, step: Callable[[], None], interval: float) -> None:
        self.step = step
        self.interval = interval
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.wake.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.step()
            except Exception:
                log.exception("%s failed; retrying", self._thread.name)


class NodeAgent:
    """kubetrain's stand-in for a kubelet on the local cluster.

    Registers ``nodes`` and keeps them Ready, runs the Pods bound to them as local
    processes, provisions ``kubetrain-local`` volumes. ``start`` returns once the nodes
    are registered and the caches are filled; ``stop`` ends the agent, and with
    ``stop_pods`` its containers too (otherwise they keep running and a later agent on
    the same state directory adopts them, as containers outlive a kubelet restart).
    """

    def __init__(
        self,
        kubeconfig: Path,
        state_dir: Path,
        nodes: Sequence[NodeSpec] | None = None,
        *,
        name: str = DEFAULT_NAME,
        tick: float = 0.25,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.layout = Layout(state_dir)
        self.nodes = list(nodes) if nodes is not None else default_pool()
        self.name = name
        self.tick = tick
        self.runtime = Runtime()
        self.workers: dict[str, PodWorker] = {}
        self._loops: list[_Loop] = []
        self._informers: list[Informer] = []
        self._kube: Kube | None = None
        self._logs: LogServer | None = None
        self._last_ip: str | None = None
        self._network = network.pod_network(str(self.layout.root))
        self._hosts_memo: dict[tuple[int, int, str, str, str], str] = {}
        self._heartbeat: NodeHeartbeat | None = None
        self._lost: set[str] = set()

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        if os.geteuid() != 0:
            raise NodeAgentError(
                "the node agent runs containers in private mount namespaces, which needs root"
            )
        for directory in (self.layout.pods, self.layout.volumes, self.layout.logs):
            directory.mkdir(parents=True, exist_ok=True)
        kube = self._kube = Kube(self.kubeconfig)
        try:
            host, port = kube.host_port  # before anything connects: loopback only
        except ValueError as err:
            raise NodeAgentError(str(err)) from err
        self._logs = LogServer(self.layout, self._resolve, kube.ca_file)
        kubelet_port = self._logs.start()
        try:
            heartbeat = NodeHeartbeat(kube, self.nodes, self.name, kubelet_port=kubelet_port)
            heartbeat.register(time.time())
            self._heartbeat = heartbeat
            ensure_storage_class(kube)
        except ApiError as err:
            self._logs.stop()
            raise NodeAgentError(f"could not register the nodes: {err}") from err
        events = Events(kube)
        sync = _Loop("nodeagent pods", self._sync, self.tick)
        provisioning = _Loop("nodeagent volumes", lambda: None, 2.0)
        pods = Informer(kube, "/api/v1/pods", sync.wake.set)
        services = Informer(kube, "/api/v1/services", sync.wake.set)
        claims = Informer(kube, "/api/v1/persistentvolumeclaims", provisioning.wake.set)
        volumes = Informer(kube, "/api/v1/persistentvolumes", provisioning.wake.set)
        self._pods, self._services = pods, services
        self._informers = [pods, services, claims, volumes]
        provisioner = Provisioner(
            kube,
            root=self.layout.volumes,
            agent=self.name,
            nodes=self.node_names,
            claims=claims,
            volumes=volumes,
            events=events,
        )
        provisioning.step = provisioner.sync
        self.context = PodContext(
            kube=kube,
            layout=self.layout,
            runtime=self.runtime,
            volumes=Volumes(kube, self.layout.volume_dir, self._allocatable),
            events=events,
            base_env=base_env(),
            service_env=service_env(host, port),
            node_allocatable=self._allocatable,
            hosts=self._hosts,
            allocate_ip=self._allocate_ip,
        )
        for informer in self._informers:
            informer.start()
        deadline = time.monotonic() + timeout
        for informer in self._informers:
            if not informer.wait_synced(max(0.0, deadline - time.monotonic())):
                self.stop(stop_pods=False)
                raise NodeAgentError(f"could not list {informer.path} in {timeout}s")
        for uid in self.layout.uids():  # Pods of an earlier run: adopted or cleaned up
            self.workers[uid] = PodWorker(self.context, uid, self.layout.load(uid))
        self._loops = [
            sync,
            provisioning,
            _Loop("nodeagent heartbeat", lambda: heartbeat.beat(time.time()), 1.0),
        ]
        for loop in self._loops:
            loop.start()
        sync.wake.set()
        log.info("node agent %s running nodes %s", self.name, ", ".join(self.node_names))

    def stop(self, *, stop_pods: bool = True, grace_seconds: float = 5.0) -> None:
        """Stop the agent; with ``stop_pods`` SIGTERM every container, SIGKILL after
        ``grace_seconds``."""
        for loop in self._loops:
            loop.stop()
        self._loops = []
        for informer in self._informers:
            informer.stop()
        self._informers = []
        if self._logs is not None:
            self._logs.stop()
            self._logs = None
        if stop_pods:
            self._stop_pods(grace_seconds)
        if self._kube is not None:
            self._kube.close()
            self._kube = None

    def lose_node(self, node: str) -> None:
        """The node dies, as far as the cluster can tell: its heartbeat stops, its
        containers are killed (no SIGTERM, no checkpoint) and nothing more is reported
        about its Pods. The control plane notices after its node-monitor grace period."""
        assert self._heartbeat is not None, "the agent is not running"
        self._lost.add(node)
        self._heartbeat.silent.add(node)
        for pod in self._pods.snapshot():
            worker = self.workers.get(str(pod["metadata"]["uid"]))
            if worker is not None and pod.get("spec", {}).get("nodeName") == node:
                worker.stop_all(signal.SIGKILL)

    def restore_node(self, node: str) -> None:
        """The node is back: heartbeats resume, and its Pods are served again."""
        assert self._heartbeat is not None, "the agent is not running"
        self._lost.discard(node)
        self._heartbeat.silent.discard(node)
        self._heartbeat.beat(time.time(), force=True)

    def __enter__(self) -> NodeAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stop_pods(self, grace_seconds: float) -> None:
        attempts = [d for w in self.workers.values() for d in w.stop_all(signal.SIGTERM)]

        def all_ended() -> bool:
            return not any(self.runtime.inspect(d).active for d in attempts)

        if not _wait(all_ended, grace_seconds):
            for worker in self.workers.values():
                worker.stop_all(signal.SIGKILL)
            _wait(all_ended, 5.0)
        self.runtime.reap()

    # -- the Pod loop -----------------------------------------------------------------

    def _sync(self) -> None:
        now = time.time()
        nodes = set(self.node_names) - self._lost
        bound = {
            str(p["metadata"]["uid"]): p
            for p in self._pods.snapshot()
            if p.get("spec", {}).get("nodeName") in nodes
        }
        for uid in bound:
            if uid not in self.workers:
                self.workers[uid] = PodWorker(self.context, uid, self.layout.load(uid))
        for uid, worker in list(self.workers.items()):
            try:
                if worker.sync(bound.get(uid), now):
                    del self.workers[uid]
            except Exception:
                log.exception("syncing pod %s failed; retrying", uid)
        self.runtime.reap()

    def _resolve(self, namespace: str, pod: str) -> str | None:
        """The UID of a Pod this agent runs (for the log server's thread)."""
        for worker in list(self.workers.values()):
            record = worker.record
            if record is not None and (record.namespace, record.name) == (namespace, pod):
                return record.uid
        return None

    def _allocatable(self, node: str) -> Mapping[str, str]:
        spec = next((n for n in self.nodes if n.name == node), None)
        if spec is None:
            return {}
        return spec.allocatable if spec.allocatable is not None else spec.capacity

    def _allocate_ip(self) -> str:
        used = {w.record.ip for w in self.workers.values() if w.record is not None}
        self._last_ip = network.allocate_ip(used, self._last_ip, self._network)
        return self._last_ip

    def _hosts(self, pod: Obj, ip: str) -> str:
        """The Pod's /etc/hosts, recomputed only when Pods or Services changed."""
        meta = pod["metadata"]
        key = (
            self._pods.version,
            self._services.version,
            str(meta["uid"]),
            ip,
            str(meta.get("resourceVersion", "")),
        )
        if key not in self._hosts_memo:
            if len(self._hosts_memo) > 1000:
                self._hosts_memo.clear()
            self._hosts_memo[key] = network.hosts_file(
                pod, ip, self._pods.snapshot(), self._services.snapshot()
            )
        return self._hosts_memo[key]

    # -- for people and tests ---------------------------------------------------------

    def log_path(self, namespace: str, pod: str, container: str) -> Path | None:
        """The log file of the latest attempt of a container (None if it never ran)."""
        candidates = sorted(
            self.layout.logs.glob(f"{namespace}_{pod}_*/{container}/*.log"),
            key=lambda p: (p.stat().st_mtime, int(p.stem)),
        )
        return candidates[-1] if candidates else None

    def logs(self, namespace: str, pod: str, container: str) -> str:
        path = self.log_path(namespace, pod, container)
        return path.read_text(errors="replace") if path else ""


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
