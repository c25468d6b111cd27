"""Memory the operator keeps per worker Pod it watches: the cache, and what the watch loop
remembers beside it to tell a deletion between two listings.

Feeds N worker Pods (the golden LLM worker Pod, with the status, managedFields and progress
report a running one carries, and the report channel's CA in its env) through the
operator's own handler into its cache, from a listing and then one report per Pod as watch
events, and prints the memory still allocated afterwards (tracemalloc), for the watch
remembering each Pod whole (as it did) and only its identity (as it does now). The watch's
source is played by this script: what is measured is what stays, not the transport.

    .venv/bin/python bench/bench_watch_memory.py [--pods 2000]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kubernetes import client  # noqa: E402

from kubetrain.api.report import ANNOTATION  # noqa: E402
from kubetrain.listwatch import JSON, ListWatch, whole  # noqa: E402
from kubetrain.operator.controller import Controller  # noqa: E402
from kubetrain.operator.kube import Cluster  # noqa: E402
from kubetrain.operator.settings import Settings  # noqa: E402
from kubetrain.operator.watching import identity  # noqa: E402

CA = "-----BEGIN CERTIFICATE-----\n" + "A" * 1100 + "\n-----END CERTIFICATE-----\n"


def running_pod(template: JSON, i: int, version: int, step: int) -> JSON:
    pod = copy.deepcopy(template)
    meta = pod["metadata"]
    meta.update(name=f"job-{i}-worker-0-a1", namespace="bench", uid=f"uid-{i}",
                resourceVersion=str(version))  # fmt: skip
    meta["labels"]["kubetrain.io/job-name"] = f"job-{i}"
    report = {"step": step, "totalSteps": 10_000, "epoch": 1, "loss": 1.2345, "state": "Running",
              "checkpoints": [{"step": s, "path": f"/checkpoints/step-{s:08d}"}
                              for s in range(0, step, 500)][-5:],
              "metrics": {"learningRate": 0.0002, "gradNorm": 0.8}}  # fmt: skip
    meta.setdefault("annotations", {})[ANNOTATION] = json.dumps(report)
    meta["managedFields"] = [
        {"manager": "kubetrain-operator", "operation": "Apply", "time": "2026-12-01T10:00:00Z",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {}}},
        {"manager": "kubelet", "operation": "Update", "subresource": "status",
         "time": "2026-12-01T10:00:09Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}},
        {"manager": "trainer", "operation": "Update", "time": "2026-12-01T10:03:07Z",
         "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{ANNOTATION}": {}}}}},
    ]  # fmt: skip
    for container in pod["spec"]["containers"]:
        container.setdefault("env", []).append({"name": "KUBETRAIN_REPORT_CA", "value": CA})
    pod["spec"]["nodeName"] = f"node-{i % 50}"
    pod["status"] = {
        "phase": "Running", "podIP": "10.0.0.1", "startTime": "2026-12-01T10:00:05Z",
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-12-01T10:00:05Z"}
                       for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
        "containerStatuses": [{"name": "trainer", "ready": True, "restartCount": 0,
                               "image": "kubetrain/lora:dev", "imageID": "sha256:" + "0" * 64,
                               "containerID": "containerd://" + "1" * 64,
                               "state": {"running": {"startedAt": "2026-12-01T10:00:08Z"}}}],
    }  # fmt: skip
    return pod


class Played:
    """A listing of every Pod, then one watch event per Pod (its next report)."""

    def __init__(self, pods: int, template: JSON) -> None:
        self.pods, self.template = pods, template
        self.watched = threading.Event()

    def list(self) -> JSON:
        items = [running_pod(self.template, i, 1000 + i, 2000) for i in range(self.pods)]
        return {"metadata": {"resourceVersion": "5000"}, "items": items}

    def watch(self, version: str, seconds: int) -> Any:
        return Stream(self)


class Stream:
    def __init__(self, source: Played) -> None:
        self.source, self.closed = source, threading.Event()

    def __iter__(self) -> Iterator[JSON]:
        if not self.source.watched.is_set():
            for i in range(self.source.pods):
                pod = running_pod(self.source.template, i, 6000 + i, 2010)
                yield {"type": "MODIFIED", "object": pod}
            yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9999999"}}}
            self.source.watched.set()
        self.closed.wait(60)

    def close(self) -> None:
        self.closed.set()


def retained(pods: int, template: JSON, remember: Callable[[JSON], JSON]) -> tuple[float, int]:
    """MB still allocated once every Pod is cached and its report event handed on; Pods cached."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    controller = Controller(Cluster(client.ApiClient()), Settings())
    source = Played(pods, template)
    loop = ListWatch(source, lambda kind, obj, _: controller.child_event(
        {"type": kind, "object": obj}, "Pod"), name="Pod", remember=remember)  # fmt: skip
    loop.start()
    source.watched.wait(600)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    cached = sum(len(controller.cache.pods(("bench", f"job-{i}"))) for i in range(pods))
    loop.stop()
    tracemalloc.stop()
    return (after - before) / 1e6, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=2000)
    args = parser.parse_args()
    docs = yaml.safe_load_all((ROOT / "tests/unit/golden/llm-2x4-a100.yaml").read_text())
    template = next(d for d in docs if d["kind"] == "Pod")
    print(f"worker Pods watched: {args.pods} (one listing, then one report event each)")
    figures = {}
    for label, remember in (("whole (before)", whole), ("identity (now)", identity)):
        mb, cached = retained(args.pods, template, remember)
        figures[label] = mb
        print(f"  watch remembers {label:15s}: {mb:7.1f} MB retained, "
              f"{mb * 1e3 / args.pods:5.1f} KB per Pod ({cached} Pods cached)")  # fmt: skip
    before, now = figures["whole (before)"], figures["identity (now)"]
    print(f"  saved: {before - now:.1f} MB ({(before - now) / before:.0%})")


if __name__ == "__main__":
    main()
