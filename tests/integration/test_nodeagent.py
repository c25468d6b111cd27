"""The local node agent runs Pods for real: scheduling, status, credentials, volumes, signals."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetrain.localcluster import ControlPlane
from kubetrain.localcluster.nodeagent import GPU_RESOURCE, STORAGE_CLASS, NodeAgent, NodeSpec
from kubetrain.localcluster.nodeagent.shim import proc_starttime
from kubetrain.localcluster.processes import pid_is
from tests.polling import eventually

H100 = "NVIDIA-H100-80GB-HBM3"

# Every test here needs Pods to run: the session's node agent with the default pool.
pytestmark = pytest.mark.usefixtures("node_agent")


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A Pod whose one container runs ``python -c script`` (the image is ignored)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": "example.invalid/unused:1",
        "command": ["python", "-c", script],
    }
    container.update(spec.pop("container", {}))
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def create(core: client.CoreV1Api, namespace: str, body: dict[str, Any]) -> client.V1Pod:
    """Create a Pod once the namespace's ServiceAccount exists (admission needs it)."""
    account = body["spec"].get("serviceAccountName", "default")
    eventually(
        lambda: [
            a
            for a in core.list_namespaced_service_account(namespace).items
            if a.metadata.name == account
        ],
        what=f"ServiceAccount {account}",
    )
    return core.create_namespaced_pod(namespace, body)


def finished(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    found: client.V1Pod = core.read_namespaced_pod(name, namespace)
    return found if found.status.phase in ("Succeeded", "Failed") else None


def running(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    found: client.V1Pod = core.read_namespaced_pod(name, namespace)
    statuses = found.status.container_statuses or []
    return found if statuses and statuses[0].state.running else None


def gone(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return True
        raise
    return False


def alive(pid: int, starttime: int) -> bool:
    return proc_starttime(pid) == starttime


def test_a_gpu_pod_lands_on_the_h100_node_and_reports_how_it_ended(
    core: client.CoreV1Api, namespace: str, gpu_nodes: dict[str, str]
) -> None:
    done = "import sys\nopen('/dev/termination-log', 'w').write('trained 1 epoch')\nsys.exit(0)\n"
    create(
        core,
        namespace,
        pod(
            "train",
            done,
            nodeSelector={"nvidia.com/gpu.product": H100},
            container={"resources": {"limits": {GPU_RESOURCE: "1"}}},
        ),
    )
    crash = "import sys\nprint('loss is nan', file=sys.stderr)\nsys.exit(3)\n"
    create(
        core,
        namespace,
        pod("crash", crash, container={"terminationMessagePolicy": "FallbackToLogsOnError"}),
    )

    train = eventually(lambda: finished(core, namespace, "train"), timeout=60, what="train ends")
    assert train.spec.node_name == gpu_nodes[H100]
    assert train.status.phase == "Succeeded"
    assert train.status.pod_ip.startswith("127.")
    assert train.status.host_ip == "127.0.0.1"
    terminated = train.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    assert terminated.message == "trained 1 epoch"
    assert terminated.started_at is not None and terminated.finished_at is not None
    ready = {c.type: c for c in train.status.conditions}
    assert ready["Ready"].status == "False" and ready["Ready"].reason == "PodCompleted"
    assert ready["PodScheduled"].status == "True"

    failed = eventually(lambda: finished(core, namespace, "crash"), timeout=60, what="crash ends")
    assert failed.status.phase == "Failed"
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    assert terminated.message.strip() == "loss is nan"
    # `kubectl logs`: the API server fetches the log from the agent's log endpoint.
    assert core.read_namespaced_pod_log("crash", namespace) == "loss is nan\n"
    assert core.read_namespaced_pod_log("train", namespace, tail_lines=1) == ""


def test_init_containers_run_in_order_and_on_failure_restarts_the_container(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"lr": "0.01"}}
    )

    def step(name: str) -> dict[str, Any]:
        script = f"open('/tmp/steps/order', 'a').write('{name} ')"
        return {
            "name": name,
            "image": "example.invalid/unused:1",
            "command": ["python", "-c", script],
            "volumeMounts": [{"name": "work", "mountPath": "/tmp/steps"}],
        }

    # Fails on its first run, succeeds on the second: emptyDir data survives restarts.
    main = (
        "import os, sys\n"
        "order = open('/tmp/steps/order').read()\n"
        "lr = open('/tmp/steps-config/lr').read()\n"
        "if not os.path.exists('/tmp/steps/tried'):\n"
        "    open('/tmp/steps/tried', 'w').close()\n"
        "    sys.exit(1)\n"
        "open('/dev/termination-log', 'w').write(f'{order}lr={lr}')\n"
    )
    create(
        core,
        namespace,
        pod(
            "steps",
            main,
            restartPolicy="OnFailure",
            initContainers=[step("first"), step("second")],
            volumes=[
                {"name": "work", "emptyDir": {}},
                {"name": "settings", "configMap": {"name": "settings"}},
            ],
            container={
                "volumeMounts": [
                    {"name": "work", "mountPath": "/tmp/steps"},
                    {"name": "settings", "mountPath": "/tmp/steps-config"},
                ]
            },
        ),
    )
    done = eventually(lambda: finished(core, namespace, "steps"), timeout=60, what="steps")
    assert done.status.phase == "Succeeded"
    assert [s.state.terminated.exit_code for s in done.status.init_container_statuses] == [0, 0]
    status = done.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1
    assert status.state.terminated.message == "first second lr=0.01"
    initialized = next(c for c in done.status.conditions if c.type == "Initialized")
    assert initialized.status == "True"


REPORT = """
import base64, json, os
from kubernetes import client, config

config.load_incluster_config()  # unmodified: env + /var/run/secrets/kubernetes.io/serviceaccount
secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
namespace = open(f"{secrets}/namespace").read()
payload = open(f"{secrets}/token").read().split(".")[1]
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
names = ("POD_NAME", "POD_NAMESPACE", "POD_UID", "POD_IP", "NODE_NAME", "APP", "CPU_MILLIS",
         "MEMORY_MI", "FROM_CONFIGMAP", "FROM_SECRET", "GREETING", "KUBERNETES_SERVICE_HOST")
report = {name: os.environ.get(name) for name in names}
report["claims"] = claims["kubernetes.io"]
report["pytest_env"] = sorted(k for k in os.environ if k.startswith("PYTEST"))
report["namespace_file"] = namespace
client.CoreV1Api().patch_namespaced_pod(
    os.environ["POD_NAME"], namespace,
    {"metadata": {"annotations": {"kubetrain.io/report": json.dumps(report)}}},
)
"""


def test_a_pod_patches_itself_with_its_service_account_token_and_sees_the_downward_api(
    api_client: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reporter"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "self-report"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "self-report"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "self-report",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reporter", "namespace": namespace}],
        },
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"k": "v1"}})
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "sec"}, "data": {"k": base64.b64encode(b"s3cret").decode()}},
    )

    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = [
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_UID", **field("metadata.uid")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "NODE_NAME", **field("spec.nodeName")},
        {"name": "APP", **field("metadata.labels['app']")},
        {
            "name": "CPU_MILLIS",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
        },
        {
            "name": "MEMORY_MI",
            "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}},
        },
        {"name": "FROM_CONFIGMAP", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}},
        {"name": "GREETING", "value": "hello $(POD_NAME), $$(POD_NAME) stays"},
    ]
    resources = {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"memory": "64Mi"}}
    create(
        core,
        namespace,
        pod(
            "reporter",
            REPORT,
            serviceAccountName="reporter",
            labels={"app": "trainer"},
            container={"env": env, "resources": resources},
        ),
    )

    done = eventually(lambda: finished(core, namespace, "reporter"), timeout=60, what="reporter")
    assert done.status.phase == "Succeeded", done.status.container_statuses
    report = json.loads(done.metadata.annotations["kubetrain.io/report"])
    assert report["POD_NAME"] == "reporter"
    assert report["POD_NAMESPACE"] == report["namespace_file"] == namespace
    assert report["POD_UID"] == done.metadata.uid
    assert report["POD_IP"] == done.status.pod_ip
    assert report["NODE_NAME"] == done.spec.node_name
    assert report["APP"] == "trainer"
    assert (report["CPU_MILLIS"], report["MEMORY_MI"]) == ("500", "64")
    assert (report["FROM_CONFIGMAP"], report["FROM_SECRET"]) == ("v1", "s3cret")
    assert report["GREETING"] == "hello reporter, $(POD_NAME) stays"
    assert report["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert report["pytest_env"] == []  # the Pod's env, not the agent's
    # The token came from the TokenRequest API, for this ServiceAccount, bound to this Pod.
    assert report["claims"]["serviceaccount"]["name"] == "reporter"
    assert report["claims"]["pod"] == {"name": "reporter", "uid": done.metadata.uid}


def test_a_claim_is_provisioned_and_its_data_outlives_the_pod_that_wrote_it(
    core: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": "checkpoints"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    claim = core.read_namespaced_persistent_volume_claim("checkpoints", namespace)
    assert claim.spec.storage_class_name == STORAGE_CLASS  # the default class
    # WaitForFirstConsumer: nothing is provisioned before a Pod uses the claim.
    assert claim.status.phase == "Pending"

    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "checkpoints"}}]
    write = (
        "import os\n"
        "os.makedirs('/checkpoints/epoch-1')\n"
        "open('/checkpoints/epoch-1/weights', 'w').write('hello from the writer')\n"
    )
    create(
        core,
        namespace,
        pod(
            "writer",
            write,
            volumes=volumes,
            container={"volumeMounts": [{"name": "data", "mountPath": "/checkpoints"}]},
        ),
    )
    writer = eventually(lambda: finished(core, namespace, "writer"), timeout=60, what="writer")
    assert writer.status.phase == "Succeeded", writer.status.container_statuses

    claim = core.read_namespaced_persistent_volume_claim("checkpoints", namespace)
    assert claim.status.phase == "Bound"
    selected = claim.metadata.annotations["volume.kubernetes.io/selected-node"]
    assert selected == writer.spec.node_name
    volume = core.read_persistent_volume(claim.spec.volume_name)
    data_dir = Path(volume.spec.host_path.path)
    assert data_dir.parent == node_agent.layout.volumes
    assert (data_dir / "epoch-1" / "weights").read_text() == "hello from the writer"

    read = (
        "data = open('/checkpoints/epoch-1/weights').read()\n"
        "open('/dev/termination-log', 'w').write(data)\n"
    )
    create(
        core,
        namespace,
        pod(
            "reader",
            read,
            volumes=volumes,
            container={
                "volumeMounts": [{"name": "data", "mountPath": "/checkpoints", "readOnly": True}]
            },
        ),
    )
    reader = eventually(lambda: finished(core, namespace, "reader"), timeout=60, what="reader")
    terminated = reader.status.container_statuses[0].state.terminated
    assert (reader.status.phase, terminated.message) == ("Succeeded", "hello from the writer")

    # Reclaim policy Delete: once the claim is gone, so are the PV and its data.
    for name in ("writer", "reader"):
        core.delete_namespaced_pod(name, namespace)
    core.delete_namespaced_persistent_volume_claim("checkpoints", namespace)

    def volume_gone() -> bool:
        try:
            core.read_persistent_volume(claim.spec.volume_name)
        except ApiException as err:
            return err.status == 404
        return False

    eventually(volume_gone, timeout=60, what="the released PV to be deleted")
    assert not data_dir.exists()


SIGNALS = """
import os, signal, sys, time
marker = "/tmp/kubetrain-marker"
def on_term(number, frame):
    open(f"{marker}/sigterm", "w").write(str(time.time()))
    if os.environ["ON_TERM"] == "exit":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(f"{marker}/pid", "w").write(f"{os.getpid()}")
while True:
    time.sleep(0.1)
"""


def _signal_pod(name: str, marker: Path, on_term: str, grace: int) -> dict[str, Any]:
    return pod(
        name,
        SIGNALS,
        terminationGracePeriodSeconds=grace,
        volumes=[{"name": "marker", "hostPath": {"path": str(marker)}}],
        container={
            "env": [{"name": "ON_TERM", "value": on_term}],
            "volumeMounts": [{"name": "marker", "mountPath": "/tmp/kubetrain-marker"}],
        },
    )


def _running_pid(core: client.CoreV1Api, namespace: str, name: str, marker: Path) -> int:
    eventually(lambda: running(core, namespace, name), timeout=60, what=f"{name} running")
    return int(eventually(lambda: (marker / "pid").exists() and (marker / "pid").read_text()))


def test_deleting_a_running_pod_delivers_sigterm_and_the_process_exits_in_its_grace_period(
    core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    create(core, namespace, _signal_pod("polite", tmp_path, "exit", grace=20))
    pid = _running_pid(core, namespace, "polite", tmp_path)
    starttime = proc_starttime(pid)
    assert starttime is not None

    deleted_at = time.time()
    core.delete_namespaced_pod("polite", namespace)
    eventually(lambda: gone(core, namespace, "polite"), timeout=20, what="the Pod to be gone")

    assert not alive(pid, starttime)
    got_sigterm = float((tmp_path / "sigterm").read_text())
    assert deleted_at <= got_sigterm < deleted_at + 10  # not SIGKILLed after the grace period


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(
    core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    create(core, namespace, _signal_pod("stubborn", tmp_path, "ignore", grace=2))
    pid = _running_pid(core, namespace, "stubborn", tmp_path)
    starttime = proc_starttime(pid)
    assert starttime is not None

    deleted_at = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    eventually((tmp_path / "sigterm").exists, timeout=10, what="SIGTERM delivered")
    assert alive(pid, starttime)  # it ignored SIGTERM
    eventually(lambda: not alive(pid, starttime), timeout=20, what="the process to be killed")
    killed_after = time.monotonic() - deleted_at
    assert killed_after >= 2.0
    eventually(lambda: gone(core, namespace, "stubborn"), timeout=20, what="the Pod to be gone")


def test_a_pod_asking_for_more_gpus_than_any_node_has_stays_unschedulable(
    core: client.CoreV1Api, namespace: str, node_agent: NodeAgent
) -> None:
    create(
        core,
        namespace,
        pod("greedy", "pass", container={"resources": {"limits": {GPU_RESOURCE: "9"}}}),
    )

    def unschedulable() -> client.V1PodCondition | None:
        found = core.read_namespaced_pod("greedy", namespace)
        return next(
            (
                c
                for c in found.status.conditions or []
                if c.type == "PodScheduled" and c.status == "False"
            ),
            None,
        )

    condition = eventually(unschedulable, what="PodScheduled=False")
    assert condition.reason == "Unschedulable"
    assert f"Insufficient {GPU_RESOURCE}" in condition.message
    found = core.read_namespaced_pod("greedy", namespace)
    assert found.status.phase == "Pending" and found.spec.node_name is None


@pytest.fixture
def own_node(core: client.CoreV1Api) -> Iterator[NodeSpec]:
    """A node of its own for a test that stops and restarts its agent."""
    name = f"restart-{uuid.uuid4().hex[:6]}"
    yield NodeSpec(
        name,
        labels={"kubetrain.io/test-node": name},
        capacity={"cpu": "4", "memory": "8Gi", "pods": "10"},
    )
    try:
        core.delete_node(name)
    except ApiException as err:
        if err.status != 404:
            raise


def _processes_running(token: str) -> list[int]:
    """PIDs of processes whose command line contains ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline and proc_starttime(int(entry.name)) is not None:
                found.append(int(entry.name))
    return found


def test_a_restarted_agent_adopts_running_pods_and_cleans_up_pods_deleted_meanwhile(
    cluster: ControlPlane,
    core: client.CoreV1Api,
    namespace: str,
    own_node: NodeSpec,
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    token = uuid.uuid4().hex
    names = ("survivor", "doomed", "vanished")
    agent = NodeAgent(cluster.kubeconfig, state, [own_node], name=own_node.name)
    agent.start()
    try:
        for name in names:
            script = f"import time\n# {token} {name}\nwhile True:\n    time.sleep(0.1)\n"
            body = pod(name, script, nodeSelector=own_node.labels, terminationGracePeriodSeconds=2)
            create(core, namespace, body)
        for name in names:
            eventually(lambda n=name: running(core, namespace, n), timeout=60, what=name)
        eventually(lambda: len(_processes_running(token)) == 3, what="three containers")
        survivor = core.read_namespaced_pod("survivor", namespace)
        before = {name: _processes_running(f"{token} {name}") for name in names}
    finally:
        agent.stop(stop_pods=False)  # a kubelet restart: containers keep running

    # While no agent runs the node: one Pod is deleted gracefully (it waits, Terminating),
    # another one is force-deleted (it is gone from the API at once).
    core.delete_namespaced_pod("doomed", namespace)
    core.delete_namespaced_pod("vanished", namespace, grace_period_seconds=0)
    assert core.read_namespaced_pod("doomed", namespace).metadata.deletion_timestamp
    assert gone(core, namespace, "vanished")
    assert {name: _processes_running(f"{token} {name}") for name in names} == before

    agent = NodeAgent(cluster.kubeconfig, state, [own_node], name=own_node.name)
    agent.start()
    try:
        eventually(lambda: gone(core, namespace, "doomed"), timeout=30, what="doomed cleaned up")
        eventually(lambda: _processes_running(f"{token} vanished") == [], what="vanished stopped")
        # The survivor's process was adopted: the same one, not lost and not duplicated.
        assert _processes_running(token) == before["survivor"]
        adopted = core.read_namespaced_pod("survivor", namespace)
        status, earlier = (
            adopted.status.container_statuses[0],
            survivor.status.container_statuses[0],
        )
        assert adopted.status.phase == "Running" and status.restart_count == 0
        assert status.container_id == earlier.container_id
        assert status.state.running.started_at == earlier.state.running.started_at

        core.delete_namespaced_pod("survivor", namespace)
        eventually(lambda: gone(core, namespace, "survivor"), timeout=30, what="survivor gone")
        assert _processes_running(token) == []
        eventually(lambda: not any(os.scandir(state / "pods")), what="sandboxes removed")
    finally:
        agent.stop(stop_pods=True)


def test_cluster_up_runs_the_agent_and_cluster_down_stops_every_process(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"

    def command(verb: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "kubetrain.localcluster", verb, "--dir", str(workdir)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)

    up = command("up")
    try:
        assert up.returncode == 0, up.stderr
        assert "gpu-h100-0 (8x NVIDIA-H100-80GB-HBM3)" in up.stdout
        core = client.CoreV1Api(
            config.new_client_from_config(config_file=str(workdir / "kubeconfig"))
        )

        def ready_nodes() -> set[str]:
            return {
                n.metadata.name
                for n in core.list_node().items
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            }

        assert eventually(ready_nodes) == {"gpu-a100-0", "gpu-h100-0", "cpu-0"}
        token = uuid.uuid4().hex
        create(core, "default", pod("left-running", f"import time\n# {token}\ntime.sleep(600)\n"))
        eventually(lambda: running(core, "default", "left-running"), timeout=60, what="a Pod")
        assert len(_processes_running(token)) == 1
        state = json.loads((workdir / "state.json").read_text())
        agent = json.loads((workdir / "nodeagent.json").read_text())
    finally:
        down = command("down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped: nodeagent, 1 pod container(s), kube-scheduler")
    assert _processes_running(token) == []
    assert proc_starttime(agent["pid"]) != agent["starttime"]
    for component in state["processes"]:
        assert not pid_is(component["pid"], component["executable"]), component["name"]
