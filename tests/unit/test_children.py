"""Comparing a job's children with their desired state: what the watch saw against the render."""

from __future__ import annotations

import copy
from typing import Any

from kubetrain.operator.reconcile.children import controller_uid, holds

DESIRED: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "j-workers", "namespace": "ns", "labels": {"kubetrain.io/job-name": "j"}},
    "spec": {
        "clusterIP": "None",
        "selector": {"kubetrain.io/job-name": "j"},
        "ports": [{"name": "rendezvous", "port": 29500, "protocol": "TCP"}],
    },
}


def observed() -> dict[str, Any]:
    """DESIRED as the API server stores it: defaults and server metadata added."""
    seen = copy.deepcopy(DESIRED)
    seen["metadata"] |= {"uid": "s1", "resourceVersion": "7", "managedFields": [{"manager": "x"}]}
    seen["metadata"]["labels"]["extra"] = "kept"
    seen["metadata"]["ownerReferences"] = [
        {"uid": "other", "controller": False},
        {"uid": "job-uid", "controller": True},
    ]
    seen["spec"] |= {"type": "ClusterIP", "sessionAffinity": "None", "clusterIPs": ["None"]}
    seen["spec"]["ports"][0]["targetPort"] = 29500
    seen["status"] = {"loadBalancer": {}}
    return seen


def test_server_defaults_and_metadata_are_not_differences() -> None:
    assert holds(observed(), DESIRED)


def test_a_changed_or_missing_desired_field_is_a_difference() -> None:
    changed = observed()
    changed["spec"]["ports"][0]["port"] = 1234
    assert not holds(changed, DESIRED)
    relabelled = observed()
    del relabelled["metadata"]["labels"]["kubetrain.io/job-name"]
    assert not holds(relabelled, DESIRED)
    more_ports = observed()
    more_ports["spec"]["ports"].append({"name": "x", "port": 1})
    assert not holds(more_ports, DESIRED)


def test_the_controller_owner_is_the_one_marked_controller() -> None:
    assert controller_uid(observed()) == "job-uid"
    assert controller_uid(DESIRED) is None
