"""Integration fixtures: the operator, its CRD, PriorityClasses and fake GPU nodes."""

from tests.integration.operator_fixtures import (  # noqa: F401 (re-exported fixtures)
    crds,
    fake_gpu_nodes,
    operator,
    priority_classes,
)
