"""Building blocks shared by the spec and status models: identity, CEL rules, model bases.

A rule is written once as a ``Cel`` object: the CRD generator emits it as an
``x-kubernetes-validations`` entry and pydantic runs its Python twin (``check``), so the
API server and the operator reject the same objects with the same message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

GROUP: Final = "kubetrain.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "kubetrain.io/v1alpha1"
KIND: Final = "TrainingJob"
LIST_KIND = "TrainingJobList"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ("tj",)
CATEGORIES = ("kubetrain",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# The operator names children after the job (`<name>-worker-<i>` Pods and their hostnames,
# the `<name>-workers` headless Service, `<name>-checkpoints` PVC, label values). Those must
# be DNS-1035 labels of at most 63 characters, so the job name leaves room for the longest
# suffix the operator appends, with a margin for suffixes added later.
DNS_LABEL_MAX = 63
CHILD_SUFFIX_BUDGET = 15
MAX_NAME_LENGTH = DNS_LABEL_MAX - CHILD_SUFFIX_BUDGET
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

_ACRONYMS = {"Usd": "USD"}


def camel(name: str) -> str:
    """The wire name of a Python field: camelCase, with acronyms kept upper case (maxCostUSD)."""
    wire = to_camel(name)
    for word, acronym in _ACRONYMS.items():
        if wire.endswith(word):
            wire = wire[: -len(word)] + acronym
    return wire


NAME_LENGTH_MESSAGE = (
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that the names of the "
    "job's Pods, Service and PVC fit in 63"
)
NAME_FORMAT_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting "
    "with a letter and ending with a letter or digit) because it names Pod hostnames"
)


def name_problems(name: str) -> list[str]:
    """Why ``name`` cannot name a TrainingJob (empty when it can)."""
    problems = []
    if len(name) > MAX_NAME_LENGTH:
        problems.append(NAME_LENGTH_MESSAGE)
    if not re.fullmatch(NAME_PATTERN, name):
        problems.append(NAME_FORMAT_MESSAGE)
    return problems


@dataclass(frozen=True)
class Cel:
    """One validation rule: CEL for the API server, an optional Python twin for pydantic.

    Used as ``Annotated[T, Cel(...)]`` on a field, or listed in a model's ``cel_rules``.
    ``check`` is None for transition rules (``oldSelf``), which only the API server can
    evaluate. ``message`` names the field and the rule: users see it verbatim.
    """

    rule: str
    message: str
    check: Callable[[Any], bool] | None = None
    field_path: str | None = None
    reason: str | None = None

    def to_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry

    def validate(self, value: Any) -> Any:
        """Raise ValueError with the rule's message when ``check`` fails."""
        if self.check is not None and not self.check(value):
            raise ValueError(self.message)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        schema = handler(source)
        if self.check is None:
            return schema
        return core_schema.no_info_after_validator_function(self.validate, schema)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("x-kubernetes-validations", []).append(self.to_schema())
        return json_schema


def immutable(path: str, why: str) -> Cel:
    """A transition rule: the field at ``path`` may not change once the job exists."""
    return Cel(
        rule="self == oldSelf", message=f"{path} is immutable: {why}", reason="FieldValueForbidden"
    )


def emit_model_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    rules = getattr(cls, "cel_rules", ())
    if rules:
        schema.setdefault("x-kubernetes-validations", []).extend(r.to_schema() for r in rules)


class CelChecked(BaseModel):
    """A model whose ``cel_rules`` are enforced by pydantic and emitted into the CRD."""

    cel_rules: ClassVar[tuple[Cel, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        failed = [
            rule.message for rule in type(self).cel_rules if rule.check and not rule.check(self)
        ]
        if failed:
            raise ValueError("; ".join(failed))
        return self


class SpecModel(CelChecked):
    """Base of spec models: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=camel,
        populate_by_name=True,
        protected_namespaces=(),
        json_schema_extra=emit_model_rules,
    )


class StatusModel(BaseModel):
    """Base of status models: camelCase, lenient (fields from newer operators are ignored)."""

    model_config = ConfigDict(
        extra="ignore",
        alias_generator=camel,
        populate_by_name=True,
        protected_namespaces=(),
    )
