"""What a pass does once: a report's text is decoded once however many passes see it, and a
Kueue job's Workload is rendered again only when what it is made of changes."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from kubetrain.api.job import TrainingJob
from kubetrain.api.report import ANNOTATION
from kubetrain.operator.kube import Cluster
from kubetrain.operator.placement import placement_for
from kubetrain.operator.reconcile.cache import Cache
from kubetrain.operator.reconcile.facts import Facts
from kubetrain.operator.settings import Settings
from kubetrain.operator.status import observe_pod

REPORT = json.dumps({"version": 1, "time": "2026-12-08T10:00:00Z", "step": 3, "totalSteps": 9})


def pod(report: str) -> dict[str, Any]:
    labels = {"kubetrain.io/worker-index": "0", "kubetrain.io/attempt": "1"}
    meta = {"name": "j-worker-0-a1", "uid": "p", "labels": labels}
    return {"metadata": {**meta, "annotations": {ANNOTATION: report}}, "status": {}}


def test_each_distinct_report_text_is_decoded_once() -> None:
    first, again = observe_pod(pod(REPORT)), observe_pod(pod(REPORT))
    assert first.decoded is not None and first.decoded.step == 3
    assert again.decoded is first.decoded  # the same model: not decoded a second time
    bad = observe_pod(pod('{"version": 1, "step": -1}'))
    assert bad.decoded is None and bad.problem is not None


def job(generation: int = 1, workers: int = 1) -> TrainingJob:
    return TrainingJob.model_validate({
        "metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": generation,
                     "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
        "spec": {"modelType": "llm", "dataset": {"synthetic": {}},
                 "llm": {"baseModel": "random://llama-tiny"},
                 "resources": {"gpuType": "a100", "workers": workers}},
    })  # fmt: skip


def test_a_kueue_jobs_workload_is_rendered_again_only_when_its_spec_changes() -> None:
    settings = Settings(kueue_enabled=True, kueue_priority_classes={})  # nothing to read
    facts = Facts(Cluster(client.ApiClient()), Cache(), settings)  # no request is sent
    key, first = ("ns", "j"), job()
    placement = placement_for(first.spec, settings)
    rendered = facts._desired_workload(key, first, "team-a", placement)
    assert rendered is not None
    assert facts._desired_workload(key, job(), "team-a", placement) is rendered
    resized = job(generation=2, workers=2)
    again = facts._desired_workload(key, resized, "team-a", placement_for(resized.spec, settings))
    assert again is not rendered and again != rendered
