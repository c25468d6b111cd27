"""Turn a pydantic JSON Schema into a Kubernetes structural OpenAPI v3 schema.

pydantic writes JSON Schema 2020-12 (``$ref``/``$defs``, ``anyOf`` with ``null``, numeric
``exclusiveMinimum``, titles); a CRD needs every ``$ref`` inlined, ``type`` on every node,
no ``anyOf`` over types and the OpenAPI v3.0 spelling of bounds. ``structural_schema`` does
that translation; ``schema_problems`` lists what still breaks the rules, so the generator
and the tests check the same things.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

# Emitted keys come out in this order (then any others alphabetically), so the YAML reads
# description first and nested properties last, and diffs stay small.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "nullable",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "items",
    "additionalProperties",
    "properties",
    "required",
    "x-kubernetes-validations",
)
_DROPPED = ("title",)


def structural_schema(
    model: type[BaseModel], root: str, *, nullable: bool = False, defaults: bool = True
) -> Schema:
    """The structural schema of ``model``'s wire form (aliases), found at ``root`` (e.g. spec).

    ``nullable`` marks optional fields ``nullable: true``; leave it off for spec models,
    where a null must be pruned so that CEL's ``has()`` sees the field as absent.
    ``defaults`` keeps schema defaults (the API server applies them); status leaves them out.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _Converter(defs, nullable=nullable, defaults=defaults).convert(raw, root)


class _Converter:
    def __init__(self, defs: dict[str, Schema], *, nullable: bool, defaults: bool) -> None:
        self.defs = defs
        self.nullable = nullable
        self.defaults = defaults

    def convert(self, node: Schema, path: str, *, resolving: tuple[str, ...] = ()) -> Schema:
        node = dict(node)
        if "$ref" in node:
            name = node.pop("$ref").rsplit("/", 1)[-1]
            if name in resolving:
                raise ValueError(f"{path}: recursive model {name} cannot be a structural schema")
            node = _merge(self.defs[name], node)
            return self.convert(node, path, resolving=(*resolving, name))
        if "anyOf" in node:
            node = self._drop_null(node, path)
            if "$ref" in node or "anyOf" in node:
                return self.convert(node, path, resolving=resolving)
        if "const" in node:
            node["enum"] = [node.pop("const")]
        for key in _DROPPED:
            node.pop(key, None)
        if "default" in node and (node["default"] is None or not self.defaults):
            del node["default"]
        if node.get("default") not in (None, {}, []) and "description" in node:
            # kubectl explain shows descriptions but not defaults
            node["description"] = f"{node['description']} Defaults to {_plain(node['default'])}."
        for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if bound in node and not isinstance(node[bound], bool):
                node[inclusive] = node[bound]
                node[bound] = True
        if node.get("type") == "number":
            _fractional_bounds_to_cel(node, path)
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        elif isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = self.convert(
                node["additionalProperties"], f"{path}[*]", resolving=resolving
            )
        if "items" in node:
            node["items"] = self.convert(node["items"], f"{path}[*]", resolving=resolving)
        if "x-kubernetes-validations" in node:
            node["x-kubernetes-validations"] = [
                _ordered_rule(rule) for rule in node["x-kubernetes-validations"]
            ]
        if "properties" in node:
            node["properties"] = {
                key: self.convert(value, f"{path}.{key}", resolving=resolving)
                for key, value in node["properties"].items()
            }
        return _ordered(node)

    def _drop_null(self, node: Schema, path: str) -> Schema:
        """``anyOf: [X, {type: null}]`` becomes X (plus ``nullable`` when asked for)."""
        branches = [b for b in node["anyOf"] if b != {"type": "null"}]
        had_null = len(branches) < len(node["anyOf"])
        if len(branches) != 1:
            if _is_int_or_string(node):
                return node
            raise ValueError(f"{path}: a union of {node['anyOf']} has no structural form")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        merged = _merge(branches[0], rest)
        if had_null and self.nullable:
            merged["nullable"] = True
        return merged


def _fractional_bounds_to_cel(node: Schema, path: str) -> None:
    """Check non-integer bounds of a number in CEL instead of OpenAPI.

    The API server compares an integer-valued input (``learningRate: 0`` or ``5``) with a
    bound cast to an integer, so ``minimum: 1e-6`` lets 0 through and ``maximum: 0.1``
    reports "should be less than or equal to 0". CEL compares as doubles.
    """
    bounds = [b for b in ("minimum", "maximum") if b in node]
    if all(float(node[b]).is_integer() for b in bounds):
        return
    checks, words = [], []
    for bound, op, strict_op, word, strict_word in (
        ("minimum", ">=", ">", "at least", "greater than"),
        ("maximum", "<=", "<", "at most", "less than"),
    ):
        if bound not in node:
            continue
        value = float(node.pop(bound))
        strict = node.pop(f"exclusive{bound[0].upper()}{bound[1:]}", False)
        checks.append(f"self {strict_op if strict else op} {value!r}")
        words.append(f"{strict_word if strict else word} {value:g}")
    rule = {"rule": " && ".join(checks), "message": f"{path} must be {' and '.join(words)}"}
    node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), rule]


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _is_int_or_string(node: Schema) -> bool:
    return bool(node.get("x-kubernetes-int-or-string"))


def _merge(base: Schema, override: Schema) -> Schema:
    """``base`` with the use-site keys of ``override`` on top; CEL rules from both are kept."""
    merged = dict(base)
    for key, value in override.items():
        if key == "x-kubernetes-validations":
            merged[key] = [*base.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def _ordered(node: Schema) -> Schema:
    rank = {key: i for i, key in enumerate(_KEY_ORDER)}
    return dict(sorted(node.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _ordered_rule(rule: Schema) -> Schema:
    order = ("rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf")
    return {key: rule[key] for key in order if key in rule}


def walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node under ``node`` with its path (``.a.b``, ``[*]`` for items and maps)."""
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}[*]")


def schema_problems(root: Schema) -> list[str]:
    """What keeps ``root`` from being a structural schema kubectl explain can document."""
    problems = []
    for path, node in walk(root):
        where = path or "<root>"
        for key in ("$ref", "$defs", "title", "allOf", "oneOf", "not"):
            if key in node:
                problems.append(f"{where}: has {key}")
        if "anyOf" in node and not _is_int_or_string(node):
            problems.append(f"{where}: has anyOf")
        if "type" not in node and not _is_int_or_string(node):
            problems.append(f"{where}: has no type")
        if node.get("type") == "null":
            problems.append(f"{where}: has type null")
        if "default" in node and node["default"] is None:
            problems.append(f"{where}: has default null")
        if node.get("additionalProperties") is False:
            problems.append(f"{where}: has additionalProperties: false")
        for key in node.get("properties", {}):
            if path == "" and key == "metadata":
                continue  # the API server documents ObjectMeta and forbids a description here
            if not node["properties"][key].get("description"):
                problems.append(f"{path}.{key}: has no description")
    return problems
