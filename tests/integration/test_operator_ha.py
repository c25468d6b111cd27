"""Two operator replicas elect a leader: one acts, the other stands by and takes over.

Runs on a control plane of its own: the session's operator is standalone and would act
alongside any pair started here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from kubetrain.api.base import GROUP, PLURAL, VERSION
from kubetrain.localcluster import ControlPlane, find_binary
from tests.integration.operator_fixtures import OperatorProcess, operator_config
from tests.polling import eventually

ROOT = Path(__file__).resolve().parents[2]


class Replica(OperatorProcess):
    """An operator replica that takes part in leader election instead of running standalone."""

    def argv(self) -> list[str]:
        argv = [a for a in super().argv() if a != "--standalone"]
        return [*argv, "--lease-namespace", "default"]

    def leading(self) -> bool:
        return "became the leader" in self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("ha-cluster"))
    plane.start()
    kubectl = [str(find_binary("kubectl")), "--kubeconfig", str(plane.kubeconfig)]
    subprocess.run([*kubectl, "apply", "-f", str(ROOT / "crds")], check=True, capture_output=True)
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "crd", "--all"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*kubectl, "apply", "-f", str(ROOT / "config" / "priorityclasses.yaml")],
        check=True,
        capture_output=True,
    )
    try:
        yield plane
    finally:
        plane.stop()


def test_only_the_leader_acts_and_a_standby_takes_over(plane: ControlPlane, tmp_path: Path) -> None:
    api = config.new_client_from_config(config_file=str(plane.kubeconfig))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    coordination = client.CoordinationV1Api(api)
    settings = operator_config(tmp_path)
    os.environ["KUBETRAIN_LEASE_SECONDS"] = "6"
    try:
        replicas = [Replica(plane.kubeconfig, settings, tmp_path / f"r{i}.log") for i in range(2)]
        for replica in replicas:
            replica.start()
    finally:
        del os.environ["KUBETRAIN_LEASE_SECONDS"]
    try:
        leaders = eventually(lambda: [r for r in replicas if r.leading()], what="a leader")
        assert len(leaders) == 1
        leader, standby = leaders[0], next(r for r in replicas if r is not leaders[0])
        lease = coordination.read_namespaced_lease("kubetrain-operator", "default")
        assert lease.spec.holder_identity

        job = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "metadata": {"name": "ha"},
            "spec": {
                "modelType": "llm",
                "dataset": {"synthetic": {}},
                "llm": {"baseModel": "tiny"},
                "resources": {"gpuType": "cpu"},
            },
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, job)
        first = eventually(lambda: core.list_namespaced_pod("default").items, what="a worker Pod")[
            0
        ]
        assert not standby.leading()
        assert "reconcile" not in standby.log.read_text()  # the standby did nothing

        leader.kill()  # no clean shutdown: the Lease must expire
        core.delete_namespaced_pod(first.metadata.name, "default", grace_period_seconds=0)
        replaced = eventually(
            lambda: [
                p
                for p in core.list_namespaced_pod("default").items
                if p.metadata.uid != first.metadata.uid
            ],
            timeout=60,
            what="the standby to take the lease and replace the Pod",
        )
        assert len(replaced) == 1 and standby.leading()
        lease = coordination.read_namespaced_lease("kubetrain-operator", "default")
        assert lease.spec.holder_identity != leaders[0]
    finally:
        for replica in replicas:
            replica.stop()
