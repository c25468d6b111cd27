"""Requests written for the managed-training APIs users migrate from, as TrainingJobs; pure.

Two shapes are read: the pipeline call (``dataset_name``, ``export_name``,
``pipeline_type``, ``config={"epochs": ...}``, ``gpu_type``, ``wait``...) and the job body
(``modelType``, ``datasetId``, ``config.training``, ``config.parameters``, ``gpuType``,
``maxWorkers``...), as REST JSON in camelCase or as Python keywords in snake_case. Every key
either becomes a TrainingJob field or fails naming its path in the request: nothing that
changes training is dropped. docs/migrating.md lists the mapping.
"""

from __future__ import annotations

import copy
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin

import pydantic
from pydantic.alias_generators import to_snake

from kubetrain.api import (
    API_VERSION,
    KIND,
    PIPELINES,
    InputSize,
    LLMConfig,
    LoRAConfig,
    ModelType,
    OptimizationConfig,
    TrainingJob,
    TrainingJobSpec,
    TrainingParams,
    VisionConfig,
    VisionPipeline,
)
from kubetrain.api.spec import DNS_SUBDOMAIN, REMOTE_URI
from kubetrain.sdk import build
from kubetrain.sdk.errors import Cause, ValidationError


class ConversionWarning(UserWarning):
    """A request was converted with a substitution the user should know about."""


@dataclass(frozen=True)
class ConvertedRequest:
    """A request as a validated TrainingJob, plus what it asked of the client (waiting)."""

    job: TrainingJob
    wait: bool | None = None
    timeout: float | None = None
    poll_interval: float | None = None
    notes: tuple[str, ...] = ()
    """Substitutions made on the way (an architecture kubetrain lacks, a renamed claim)."""

    @property
    def manifest(self) -> dict[str, Any]:
        """The TrainingJob as the API server gets it: camelCase, only what the request set."""
        return build.wire(self.job)


def _invalid(path: str, rule: str) -> ValidationError:
    return ValidationError(f"{path}: {rule}", [Cause(path, rule)], reason="Invalid")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


# -- any section, key by key, against its model -------------------------------------------------


def _spellings(model: type[pydantic.BaseModel]) -> dict[str, str]:
    """Each accepted spelling of the model's fields (snake_case and camelCase) to the field."""
    found: dict[str, str] = {}
    for name, info in model.model_fields.items():
        found[name] = name
        found[info.alias or name] = name
    return found


def _wire(model: type[pydantic.BaseModel], field: str) -> str:
    return model.model_fields[field].alias or field


def _nested(annotation: Any) -> tuple[type[pydantic.BaseModel] | None, bool]:
    """The model a field holds (or holds a list of), if any."""
    origin = get_origin(annotation)
    if origin is list:
        inner, _ = _nested(get_args(annotation)[0])
        return inner, inner is not None
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            inner, many = _nested(arg)
            if inner is not None:
                return inner, many
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation, False
    return None, False


def _section(model: type[pydantic.BaseModel], value: object, path: str) -> dict[str, Any]:
    """``value`` with every key checked against ``model`` and spelt as the API spells it."""
    if model is InputSize:
        return input_size(value, path)
    if not isinstance(value, Mapping):
        raise _invalid(path, f"must be a mapping, not {_kind(value)}")
    fields = _spellings(model)
    out: dict[str, Any] = {}
    for key, item in value.items():
        where = f"{path}.{key}"
        field = fields.get(str(key))
        if field is None:
            known = ", ".join(sorted(_wire(model, f) for f in model.model_fields))
            raise _invalid(where, f"kubetrain has no such setting here (it has: {known})")
        wire = _wire(model, field)
        if wire in out:
            raise _invalid(where, f"is given twice (as {wire} too)")
        out[wire] = _value(model.model_fields[field].annotation, item, where)
    return out


def _value(annotation: Any, item: object, path: str) -> Any:
    inner, many = _nested(annotation)
    if inner is None or item is None:
        return copy.deepcopy(item)
    if not many:
        return _section(inner, item, path)
    if not isinstance(item, list | tuple):
        raise _invalid(path, f"must be a list, not {_kind(item)}")
    return [_section(inner, each, f"{path}[{i}]") for i, each in enumerate(item)]


def input_size(value: object, path: str = "inputSize") -> dict[str, Any]:
    """``[w, h]``, ``[n]``, ``n`` or ``{width, height}`` as ``{width, height}``."""
    if isinstance(value, Mapping):
        fields = _spellings(InputSize)
        unknown = [str(k) for k in value if str(k) not in fields]
        if unknown:
            raise _invalid(f"{path}.{unknown[0]}", "an input size has only width and height")
        return {_wire(InputSize, fields[str(k)]): v for k, v in value.items()}
    numbers = list(value) if isinstance(value, list | tuple) else [value]
    if len(numbers) in (1, 2) and all(type(n) is int for n in numbers):
        return {"width": numbers[0], "height": numbers[-1]}
    raise _invalid(
        path,
        f"must be [width, height], [size], a size in pixels or {{width, height}}, not {value!r}",
    )


# -- where each key of a request goes ------------------------------------------------------------

CLIENT_KEYS = ("wait", "timeout", "poll_interval")
"""Keys that tell the client how to wait; they map to ``Client.submit``'s own options."""

RESPONSE_KEYS = frozenset(
    {
        "id",
        "status",
        "progress",
        "metrics",
        "checkpoints",
        "resource_allocation",
        "resource_usage",
        "estimated_cost",
        "estimated_completion",
        "created_at",
        "updated_at",
        "started_at",
    }
)
"""Fields of a job the old API returned; pasted into a request they are refused, not ignored."""

_YOLO = re.compile(r"^yolo(?:v?\d+|x)?(?:[-_]?(?P<size>nano|tiny|[nsmlxt]))?$", re.IGNORECASE)
_YOLOX_SIZES = {"s", "m", "l", "x"}


class _Spec:
    """The spec being assembled; each field remembers the request path that set it."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def put(self, section: str | None, key: str, value: Any, path: str) -> None:
        target = self.fields if section is None else self.fields.setdefault(section, {})
        where = key if section is None else f"{section}.{key}"
        if key in target:
            raise _invalid(path, f"sets spec.{where}, which {self.origin[where]} already set")
        target[key] = value
        self.origin[where] = path

    def merge(self, section: str, values: Mapping[str, Any], path: str) -> None:
        for key, value in values.items():
            self.put(section, key, value, f"{path}.{key}")


def _routes() -> dict[str, tuple[str, type[pydantic.BaseModel]]]:
    """Keys a request's ``config`` may hold flat, to the spec section that has them."""
    routes: dict[str, tuple[str, type[pydantic.BaseModel]]] = {}
    for section, model in (
        ("training", TrainingParams),
        ("optimization", OptimizationConfig),
        ("llm", LLMConfig),
        ("vision", VisionConfig),
    ):
        for spelling in _spellings(model):
            routes.setdefault(spelling, (section, model))
    return routes


_CONFIG_SECTIONS: dict[str, tuple[str, str | None, type[pydantic.BaseModel]]] = {
    "training": ("training", None, TrainingParams),
    "optimization": ("optimization", None, OptimizationConfig),
    "parameters": ("llm", "lora", LoRAConfig),
}
"""Sections a request's ``config`` holds: where each goes (a whole section, or one field)."""
_CONFIG_ALIASES = {"image_size": "input_size", "imageSize": "input_size"}


def _config(spec: _Spec, config: object, model_type: str | None, notes: list[str]) -> None:
    if not isinstance(config, Mapping):
        raise _invalid("config", f"must be a mapping, not {_kind(config)}")
    routes = _routes()
    for key, value in config.items():
        path = f"config.{key}"
        if key in _CONFIG_SECTIONS:
            section, field_key, model = _CONFIG_SECTIONS[key]
            values = _section(model, value, path)
            if field_key is None:
                spec.merge(section, values, path)
            else:
                spec.put(section, field_key, values, path)
            continue
        name = _CONFIG_ALIASES.get(key, key)
        if name == "credentials":  # both model sections have one: the job's kind decides
            section = "vision" if model_type == ModelType.VISION else "llm"
            model = VisionConfig if section == "vision" else LLMConfig
        elif name in routes:
            section, model = routes[name]
        else:
            raise _invalid(
                path,
                "kubetrain has no such setting; config takes the keys of spec.training, "
                "spec.optimization, spec.llm and spec.vision, and training, optimization, "
                "parameters (LoRA) sections",
            )
        field = _spellings(model)[name]
        if section == "vision" and field == "architecture":
            _architecture(spec, value, path, notes)
            continue
        item = _value(model.model_fields[field].annotation, value, path)
        spec.put(section, _wire(model, field), item, path)


def _architecture(spec: _Spec, value: object, path: str, notes: list[str]) -> None:
    """A YOLO detector name trains the yolox pipeline; any other name is kept as given."""
    found = _YOLO.match(value) if isinstance(value, str) else None
    if found is None:
        spec.put("vision", "architecture", value, path)
        return
    size = (found["size"] or "").lower()
    architecture = PIPELINES[VisionPipeline.YOLOX].architecture
    if size in _YOLOX_SIZES:
        architecture = f"fcos_cspdarknet_{size}"
        spec.put("vision", "architecture", architecture, path)
    if spec.fields.get("vision", {}).get("pipeline") != VisionPipeline.YOLOX:
        spec.put("vision", "pipeline", VisionPipeline.YOLOX.value, path)
    notes.append(
        f"{path}: {value!r} is not a kubetrain architecture; the job trains pipeline yolox "
        f"({architecture}, an anchor-free detector on YOLOX's CSP-Darknet) instead"
    )


def dataset(reference: object, export: object, path: str, notes: list[str]) -> dict[str, Any]:
    """``spec.dataset`` for a dataset id or name (and export): a URI, else a claim's name."""
    if not isinstance(reference, str) or not reference:
        raise _invalid(path, f"must be a non-empty string, not {_kind(reference)}")
    if export is not None and (not isinstance(export, str) or not export.strip("/")):
        raise _invalid("export_name", f"must be a non-empty string, not {_kind(export)}")
    if re.match(REMOTE_URI, reference):
        uri = f"{reference.rstrip('/')}/{export.strip('/')}" if export else reference
        return {"uri": uri}
    claim = reference.lower().replace("_", "-")
    if not re.match(DNS_SUBDOMAIN, claim) or len(claim) > 253:
        raise _invalid(
            path,
            f"{reference!r} is neither a dataset URI (s3://, gs://, https://, hf://) nor the "
            "name of a PersistentVolumeClaim holding the data",
        )
    if claim != reference:
        notes.append(
            f"{path}: {reference!r} is read from PersistentVolumeClaim {claim!r} "
            "(claim names have no capitals or '_')"
        )
    pvc: dict[str, Any] = {"claimName": claim}
    if export:
        pvc["subPath"] = export.strip("/")
    return {"pvc": pvc}


def _dataset_keys(spec: _Spec, keys: dict[str, Any], notes: list[str]) -> None:
    """``datasetId``, or ``dataset_name`` and ``export_name``, as ``spec.dataset``."""
    references = [keys.pop(k) for k in ("dataset_id", "dataset_name") if k in keys]
    export_key, export = keys.pop("export_name", ("export_name", None))
    if len(references) > 1:
        raise _invalid(references[1][0], f"give {references[0][0]} or this, not both")
    if export is not None and not references:
        raise _invalid(export_key, "names an export of a dataset_name, which is missing")
    if references:
        path, reference = references[0]
        spec.put(None, "dataset", dataset(reference, export, path, notes), path)


def _normalised(request: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Request body and keywords together, keyed snake_case; each key once."""
    merged: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for source in (request, fields):
        for key, value in source.items():
            name = to_snake(str(key))
            if name in merged:
                raise _invalid(str(key), f"is given twice (as {spelt[name]} too)")
            merged[name], spelt[name] = value, str(key)
    return {k: (spelt[k], v) for k, v in merged.items()}


def _client_options(options: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, (spelt, value) in options.items():
        if value is None:
            continue
        if key == "wait" and not isinstance(value, bool):
            raise _invalid(spelt, f"must be true or false, not {_kind(value)}")
        if key != "wait" and (type(value) not in (int, float) or value <= 0):
            raise _invalid(spelt, f"must be a positive number of seconds, not {value!r}")
        found[key] = value
    return found


def _from_scratch(spec: _Spec, notes: list[str]) -> None:
    """The old APIs started vision runs from their published weights, which kubetrain never
    downloads: without weights named, the converted job trains from scratch, and says so."""
    vision = spec.fields.get("vision")
    if not isinstance(vision, dict) or {"pretrained", "pretrainedWeights"} & set(vision):
        return
    vision["pretrained"] = False
    notes.append(
        "vision.pretrained: false: the job trains from random weights, because kubetrain "
        "never downloads published weights; set spec.vision.pretrainedWeights to a weights "
        "file's URI (e.g. RF-DETR's rf-detr-small.pth) to start from them"
    )


def convert_request(request: Mapping[str, Any] | None = None, /, **fields: Any) -> ConvertedRequest:
    """A managed-training request (a JSON body, keywords, or both) as a validated TrainingJob.

    ``ValidationError`` names the request's key (``config.training.nesterov``) when it has
    no TrainingJob equivalent, or the spec's field when the converted job is invalid.
    """
    if request is not None and not isinstance(request, Mapping):
        raise _invalid("request", f"must be a mapping, not {_kind(request)}")
    keys = _normalised(request or {}, fields)
    spec = _Spec()
    notes: list[str] = []
    metadata: dict[str, Any] = {}
    taken = {k: keys.pop(k) for k in list(keys) if k in CLIENT_KEYS}

    type_key, model_type = keys.pop("model_type", ("modelType", None))
    pipeline_key, pipeline = keys.pop("pipeline_type", ("pipeline_type", None))
    if pipeline is not None:
        if model_type not in (None, ModelType.VISION, ModelType.CUSTOM):
            raise _invalid(pipeline_key, f"trains a vision model, not modelType {model_type}")
        spec.put("vision", "pipeline", pipeline, pipeline_key)
        model_type = model_type or ModelType.VISION.value
    if model_type is not None:
        spec.put(None, "modelType", model_type, type_key)

    name = keys.pop("name", (None, None))[1]
    if name is not None:
        metadata["name"] = name
    elif isinstance(pipeline, str):
        metadata["generateName"] = f"{pipeline.replace('_', '-')}-run-"

    _dataset_keys(spec, keys, notes)

    shortcuts = {"gpu_type": "gpuType", "max_workers": "workers"}
    for key, wire in shortcuts.items():
        if key in keys:
            spelt, value = keys.pop(key)
            spec.put("resources", wire, value, spelt)

    if "config" in keys:
        _config(spec, keys.pop("config")[1], model_type, notes)

    _from_scratch(spec, notes)

    spec_fields = _spellings(TrainingJobSpec)
    for key, (spelt, value) in keys.items():
        if key in RESPONSE_KEYS:
            raise _invalid(
                spelt, "belongs to a job the old API returned, not to a request: leave it out"
            )
        field = spec_fields.get(spelt) or spec_fields.get(key)
        if field is None:
            raise _invalid(spelt, "has no TrainingJob equivalent (see docs/migrating.md)")
        wire = _wire(TrainingJobSpec, field)
        item = _value(TrainingJobSpec.model_fields[field].annotation, value, spelt)
        if wire == "tags" and isinstance(item, list):
            item = build.tags(item)
        if isinstance(item, dict):
            spec.merge(wire, item, spelt)
        else:
            spec.put(None, wire, item, spelt)

    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata}
    job = build.validated({**manifest, "spec": spec.fields})
    return ConvertedRequest(job=job, notes=tuple(notes), **_client_options(taken))
