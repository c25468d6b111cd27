"""Generate the TrainingJob CustomResourceDefinition from the pydantic models.

``python -m kubetrain.api.crd --out crds --chart-out charts/kubetrain/files/crds`` (``make crds``)
writes the CRD to both folders; ``--check`` only reports whether the files are current.
The output is deterministic, so a test can fail whenever the committed files drift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kubetrain.api.base import (
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    LIST_KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from kubetrain.api.job import NAME_RULES
from kubetrain.api.spec import TrainingJobSpec
from kubetrain.api.status import TrainingJobStatus
from kubetrain.api.structural import Schema, schema_problems, structural_schema

CRD_FILENAME = f"{CRD_NAME}.yaml"
HEADER = (
    "# Generated from the pydantic models in operator/kubetrain/api by `make crds`.\n"
    "# Do not edit: change the models and regenerate.\n"
)

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Pending, Queued, Running, Stopping, Stopped, Completed or Failed.",
    },
    {
        "name": "Progress",
        "type": "number",
        "jsonPath": ".status.progress.percentage",
        "description": "Percent of the training steps done.",
    },
    {
        "name": "Epoch",
        "type": "integer",
        "jsonPath": ".status.progress.currentEpoch",
        "description": "Epoch in progress.",
    },
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.metrics.currentLoss",
        "description": "Training loss of the latest step.",
    },
    {
        "name": "GPUs",
        "type": "string",
        "jsonPath": ".status.resourceAllocation.summary",
        "description": "GPU type x workers, e.g. a100x2 (a100:8x4 with 8 GPUs per worker).",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Type",
        "type": "string",
        "jsonPath": ".spec.modelType",
        "priority": 1,
        "description": "llm, vision, multimodal or custom.",
    },
    {
        "name": "Priority",
        "type": "string",
        "jsonPath": ".spec.priority",
        "priority": 1,
        "description": "high, normal or low.",
    },
    {
        "name": "Epochs",
        "type": "integer",
        "jsonPath": ".spec.training.epochs",
        "priority": 1,
        "description": "Epochs the job trains for.",
    },
    {
        "name": "Suspended",
        "type": "boolean",
        "jsonPath": ".spec.suspend",
        "priority": 1,
        "description": "Whether the job is asked to stop.",
    },
    {
        "name": "Checkpoint",
        "type": "string",
        "jsonPath": ".status.latestCheckpoint",
        "priority": 1,
        "description": "Newest checkpoint.",
    },
    {
        "name": "Cost",
        "type": "number",
        "jsonPath": ".status.estimatedCost.totalUSD",
        "priority": 1,
        "description": "Estimated total cost in US dollars.",
    },
    {
        "name": "ETA",
        "type": "string",
        "jsonPath": ".status.estimatedCompletionTime",
        "priority": 1,
        "description": "Expected completion time.",
    },
)

# `kubectl get tj --field-selector status.phase=Running` and the like (Kubernetes >= 1.31).
SELECTABLE_FIELDS = (".spec.modelType", ".spec.priority", ".status.phase")


def root_schema() -> Schema:
    """A TrainingJob's openAPIV3Schema: spec and status from the models, name rules at the root."""
    spec = structural_schema(TrainingJobSpec, "spec")
    spec["description"] = "What to train, on which data and hardware, and how to run it."
    status = structural_schema(TrainingJobStatus, "status", nullable=True, defaults=False)
    status["description"] = "Observed state, written by the operator only."
    return {
        "description": (
            "A TrainingJob trains a model (LoRA or full fine-tuning of a language model, or a "
            "vision model) on GPU workers, with progress, metrics, checkpoints and cost in its "
            "status, and stops and resumes through checkpoints (spec.suspend)."
        ),
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "Versioned schema of this object: kubetrain.io/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": "Kind of this object: TrainingJob.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
        "x-kubernetes-validations": [rule.to_schema() for rule in NAME_RULES],
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a plain dict; raises if its schema is not structural."""
    schema = root_schema()
    problems = schema_problems(schema)
    if problems:
        raise ValueError("the TrainingJob schema is not structural:\n  " + "\n  ".join(problems))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "kubetrain",
                "app.kubernetes.io/part-of": "kubetrain",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": LIST_KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in PRINTER_COLUMNS],
                    "selectableFields": [{"jsonPath": path} for path in SELECTABLE_FIELDS],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with list items indented under their key (as kubectl writes it)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def render_crd() -> str:
    """The CRD file's text: a header comment and deterministic YAML."""
    body = yaml.dump(
        build_crd(),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return HEADER + body


def write_crds(out_dirs: Sequence[Path], *, check: bool = False) -> list[Path]:
    """Write the CRD into each folder (or, with ``check``, list the files that differ)."""
    text = render_crd()
    stale = []
    for directory in out_dirs:
        path = directory / CRD_FILENAME
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    """The ``make crds`` entry point."""
    parser = argparse.ArgumentParser(prog="python -m kubetrain.api.crd", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("crds"), help="folder for the CRD")
    parser.add_argument(
        "--chart-out", type=Path, action="append", default=[], help="also write it here"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    stale = write_crds([args.out, *args.chart_out], check=args.check)
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {path}")
    if args.check and stale:
        print("run `make crds` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
