"""A container's environment and command line, resolved as a kubelet resolves them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kubetrain.localcluster.nodeagent.downward import (
    Addresses,
    DownwardError,
    field_value,
    resource_value,
)
from kubetrain.localcluster.nodeagent.kube import Obj

# (kind, name) -> the object's decoded data, or None when it does not exist
Lookup = Callable[[str, str], Mapping[str, str] | None]


class ConfigError(Exception):
    """The container references something that is missing (CreateContainerConfigError)."""


def expand(text: str, mapping: Callable[[str], str | None]) -> str:
    """Expand ``$(VAR)`` references; ``$$`` is a literal ``$``; unknown references stay."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char != "$" or i + 1 >= n:
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            value = mapping(name) if name else None
            out.append(value if value is not None else text[i : end + 1])
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _data(lookup: Lookup, kind: str, name: str, optional: bool) -> Mapping[str, str] | None:
    data = lookup(kind, name)
    if data is None and not optional:
        raise ConfigError(f'{kind.lower()} "{name}" not found')
    return data


def _value_from(
    source: Mapping[str, Any],
    pod: Obj,
    container: str,
    *,
    addresses: Addresses,
    lookup: Lookup,
    allocatable: Mapping[str, str],
) -> str | None:
    """One ``valueFrom``; None means an optional reference that is absent (var skipped)."""
    try:
        if "fieldRef" in source:
            return field_value(pod, source["fieldRef"]["fieldPath"], addresses)
        if "resourceFieldRef" in source:
            return resource_value(pod, source["resourceFieldRef"], allocatable, container)
    except DownwardError as err:
        raise ConfigError(str(err)) from err
    for ref_key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        if ref_key in source:
            ref = source[ref_key]
            optional = bool(ref.get("optional", False))
            data = _data(lookup, kind, ref["name"], optional)
            if data is None:
                return None
            if ref["key"] not in data:
                if optional:
                    return None
                namespace = pod["metadata"]["namespace"]
                raise ConfigError(
                    f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}"
                )
            return data[ref["key"]]
    raise ConfigError(f"unsupported valueFrom source: {sorted(source)}")


def container_env(
    pod: Obj,
    container: Obj,
    *,
    addresses: Addresses,
    lookup: Lookup,
    service_env: Mapping[str, str],
    node_allocatable: Mapping[str, str],
) -> dict[str, str]:
    """``envFrom`` then ``env`` (later wins), over the service variables.

    ``$(VAR)`` in a value may name a variable defined earlier in the list or a service
    variable, as in a real cluster.
    """
    env: dict[str, str] = {}

    def mapping(name: str) -> str | None:
        return env.get(name, service_env.get(name))

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for ref_key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if ref_key in source:
                ref = source[ref_key]
                data = _data(lookup, kind, ref["name"], bool(ref.get("optional", False)))
                for key, text in (data or {}).items():
                    if "=" not in prefix + key:
                        env[prefix + key] = text
    for var in container.get("env") or []:
        value: str | None
        if "valueFrom" in var:
            value = _value_from(
                var["valueFrom"],
                pod,
                container["name"],
                addresses=addresses,
                lookup=lookup,
                allocatable=node_allocatable,
            )
        else:
            value = expand(str(var.get("value", "")), mapping)
        if value is not None:
            env[var["name"]] = value
    return {**service_env, **env}


def command_line(container: Obj, env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; images are not run, so a command
    is required."""
    command = [str(part) for part in container.get("command") or []]
    if not command:
        raise ConfigError(
            "the kubetrain node agent runs no images: the container needs a `command` "
            "that exists on this machine"
        )
    args = [str(part) for part in container.get("args") or []]
    return [expand(part, env.get) for part in command + args]
