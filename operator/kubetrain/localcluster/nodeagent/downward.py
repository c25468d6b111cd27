"""The downward API: a Pod's own fields and resources, as env values and volume files."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

from kubetrain.localcluster.nodeagent import quantity
from kubetrain.localcluster.nodeagent.kube import Obj

_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_RESOURCE_KINDS = ("cpu", "memory", "ephemeral-storage")


class DownwardError(ValueError):
    """A reference the downward API cannot resolve (an unsupported field or container)."""


@dataclass(frozen=True)
class Addresses:
    """The addresses a Pod learns about itself (its status may not show them yet)."""

    pod_ip: str
    host_ip: str


def field_value(pod: Obj, path: str, addresses: Addresses, *, volume: bool = False) -> str:
    """The value of ``fieldRef.fieldPath`` for ``pod``.

    Whole label and annotation maps are only available in volumes (one ``key="value"``
    line each, sorted), as in a real cluster.
    """
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": addresses.pod_ip,
        "status.podIPs": addresses.pod_ip,
        "status.hostIP": addresses.host_ip,
        "status.hostIPs": addresses.host_ip,
    }
    if path in simple:
        return str(simple[path])
    subscript = _SUBSCRIPT.match(path)
    if subscript:
        return str((meta.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    if volume and path in ("metadata.labels", "metadata.annotations"):
        values: Mapping[str, str] = meta.get(path.split(".")[1]) or {}
        return "\n".join(
            f"{key}={json.dumps(value, ensure_ascii=False)}"
            for key, value in sorted(values.items())
        )
    raise DownwardError(f"unsupported fieldRef fieldPath {path!r}")


def resource_value(
    pod: Obj,
    ref: Mapping[str, str],
    node_allocatable: Mapping[str, str],
    default_container: str | None = None,
) -> str:
    """The value of a ``resourceFieldRef``: a limit or request divided by ``divisor``.

    An unset limit is the node's allocatable amount, as a kubelet reports it.
    """
    container_name = ref.get("containerName") or default_container
    containers = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    container = next((c for c in containers if c["name"] == container_name), None)
    if container is None:
        raise DownwardError(f"resourceFieldRef names no container of the Pod: {container_name!r}")
    kind, _, resource = str(ref["resource"]).partition(".")
    if kind not in ("limits", "requests") or not (
        resource in _RESOURCE_KINDS or resource.startswith("hugepages-")
    ):
        raise DownwardError(f"unsupported resourceFieldRef resource {ref['resource']!r}")
    resources = container.get("resources") or {}
    amount = (resources.get(kind) or {}).get(resource)
    if amount is None and kind == "limits":
        amount = node_allocatable.get(resource)
    if amount is None and kind == "requests":
        amount = (resources.get("limits") or {}).get(resource, "0")
    value = quantity.parse(amount if amount is not None else "0")
    divisor = quantity.parse(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Fraction(1)
    return str(quantity.ceil_div(value, divisor))
