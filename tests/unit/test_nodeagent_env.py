"""Container environment and command line, resolved as a kubelet resolves them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from kubetrain.localcluster.nodeagent import downward, quantity
from kubetrain.localcluster.nodeagent.downward import Addresses, DownwardError
from kubetrain.localcluster.nodeagent.env import (
    ConfigError,
    command_line,
    container_env,
    expand,
)

ADDRESSES = Addresses(pod_ip="127.1.0.7", host_ip="127.0.0.1")
OBJECTS: dict[tuple[str, str], dict[str, str]] = {
    ("ConfigMap", "settings"): {"lr": "0.001", "epochs": "3", "bad=key": "x"},
    ("Secret", "hub"): {"token": "hf_abc"},
}


def lookup(kind: str, name: str) -> Mapping[str, str] | None:
    return OBJECTS.get((kind, name))


def make_pod(container: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "job-worker-0",
            "namespace": "team-a",
            "uid": "1234",
            "labels": {"app": "trainer", "tier": "gpu"},
            "annotations": {"note": 'say "hi"'},
        },
        "spec": {
            "nodeName": "gpu-h100-0",
            "serviceAccountName": "trainer",
            "containers": [container],
        },
    }


def resolve(container: dict[str, Any], service: Mapping[str, str] | None = None) -> dict[str, str]:
    container.setdefault("name", "main")
    return container_env(
        make_pod(container),
        container,
        addresses=ADDRESSES,
        lookup=lookup,
        service_env=service or {},
        node_allocatable={"cpu": "96", "memory": "1152Gi"},
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-2"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$(MISSING)", "$(MISSING)"),
        ("$(A", "$(A"),
        ("cost $5", "cost $5"),
        ("$()", "$()"),
        ("tail$", "tail$"),
    ],
)
def test_expand_follows_the_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}.get) == expected


def test_field_refs_give_the_pods_own_metadata_and_addresses() -> None:
    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    env = resolve(
        {
            "env": [
                {"name": "NAME", **field("metadata.name")},
                {"name": "NS", **field("metadata.namespace")},
                {"name": "UID", **field("metadata.uid")},
                {"name": "APP", **field("metadata.labels['app']")},
                {"name": "NOTE", **field("metadata.annotations['note']")},
                {"name": "NODE", **field("spec.nodeName")},
                {"name": "SA", **field("spec.serviceAccountName")},
                {"name": "IP", **field("status.podIP")},
                {"name": "HOST", **field("status.hostIP")},
            ]
        }
    )
    assert env == {
        "NAME": "job-worker-0",
        "NS": "team-a",
        "UID": "1234",
        "APP": "trainer",
        "NOTE": 'say "hi"',
        "NODE": "gpu-h100-0",
        "SA": "trainer",
        "IP": "127.1.0.7",
        "HOST": "127.0.0.1",
    }


def test_whole_label_maps_are_only_for_volumes() -> None:
    pod = make_pod({"name": "main"})
    with pytest.raises(DownwardError):
        downward.field_value(pod, "metadata.labels", ADDRESSES)
    text = downward.field_value(pod, "metadata.labels", ADDRESSES, volume=True)
    assert text == 'app="trainer"\ntier="gpu"'


@pytest.mark.parametrize(
    ("resource", "divisor", "expected"),
    [
        ("limits.cpu", "1m", "500"),
        ("limits.cpu", "1", "1"),  # rounded up
        ("requests.cpu", "1m", "250"),
        ("limits.memory", "1Mi", "128"),
        ("requests.memory", "1Mi", "128"),  # defaults to the limit
        ("limits.ephemeral-storage", "1Gi", "2048"),  # unset: the node's allocatable
    ],
)
def test_resource_field_refs_divide_and_round_up(
    resource: str, divisor: str, expected: str
) -> None:
    container = {
        "name": "main",
        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m"}},
    }
    pod = make_pod(container)
    ref = {"resource": resource, "divisor": divisor}
    assert downward.resource_value(pod, ref, {"ephemeral-storage": "2Ti"}, "main") == expected


def test_config_map_and_secret_refs_env_from_and_precedence() -> None:
    env = resolve(
        {
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "CFG_lr", "value": "overridden"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}},
                {
                    "name": "EPOCHS",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "epochs"}},
                },
                {
                    "name": "ABSENT",
                    "valueFrom": {
                        "configMapKeyRef": {"name": "nope", "key": "k", "optional": True}
                    },
                },
                {"name": "URL", "value": "https://$(KUBERNETES_SERVICE_HOST):$(PORT)/$(EPOCHS)"},
                {"name": "KUBERNETES_SERVICE_HOST", "value": "pod-wins"},
            ],
        },
        service={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"},
    )
    assert env == {
        "CFG_lr": "overridden",
        "CFG_epochs": "3",  # "bad=key" is not a valid name: skipped
        "TOKEN": "hf_abc",
        "EPOCHS": "3",
        "URL": "https://127.0.0.1:$(PORT)/3",
        "KUBERNETES_SERVICE_HOST": "pod-wins",
        "KUBERNETES_SERVICE_PORT": "6443",
    }


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"configMapKeyRef": {"name": "nope", "key": "k"}}, 'configmap "nope" not found'),
        (
            {"configMapKeyRef": {"name": "settings", "key": "missing"}},
            "couldn't find key missing in ConfigMap team-a/settings",
        ),
        ({"secretKeyRef": {"name": "gone", "key": "k"}}, 'secret "gone" not found'),
        ({"fieldRef": {"fieldPath": "spec.unknown"}}, "unsupported fieldRef"),
    ],
)
def test_missing_references_are_config_errors(var: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve({"env": [{"name": "X", "valueFrom": var}]})


def test_command_and_args_are_expanded_and_a_command_is_required() -> None:
    container = {"command": ["python", "-m", "train"], "args": ["--lr=$(LR)", "$$(LR)"]}
    assert command_line(container, {"LR": "0.1"}) == ["python", "-m", "train", "--lr=0.1", "$(LR)"]
    with pytest.raises(ConfigError, match="needs a `command`"):
        command_line({"args": ["--lr=1"]}, {})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", quantity.Fraction(1, 2)),
        ("2", 2),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1.5Ki", 1536),
        ("1e3", 1000),
        ("100M", 10**8),
    ],
)
def test_quantities_parse_exactly(text: str, value: quantity.Fraction | int) -> None:
    assert quantity.parse(text) == value


def test_bad_quantities_are_refused() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        quantity.parse("12parsecs")
