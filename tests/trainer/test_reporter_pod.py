"""Progress reports reach a real Pod's annotation on the local control plane."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client

from kubetrain.api.report import ANNOTATION, ProgressReport, ReportedCheckpoint, decode
from kubetrain.trainer.reporter import PodAnnotationSink, Reporter
from tests.polling import eventually

pytestmark = pytest.mark.cluster


def test_reports_land_in_the_pods_annotation(core: client.CoreV1Api, namespace: str) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="job-worker-0", annotations={"keep": "me"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="trainer", image="trainer")]),
    )
    core.create_namespaced_pod(namespace, pod)
    reporter = Reporter(
        PodAnnotationSink(core, namespace, "job-worker-0", ANNOTATION), interval=0.05
    )
    now = datetime.now(UTC).replace(microsecond=0)
    checkpoint = ReportedCheckpoint(
        id="ckpt-00000010", epoch=1, step=10, loss=1.5, created_at=now, size_bytes=4096,
        path="/checkpoints/ckpt-00000010",
    )  # fmt: skip
    for step in range(1, 11):
        reporter.submit(ProgressReport(time=now, step=step, total_steps=20, loss=2.0 / step))

    def annotation() -> str | None:
        meta = core.read_namespaced_pod("job-worker-0", namespace).metadata
        return (meta.annotations or {}).get(ANNOTATION)

    eventually(lambda: (text := annotation()) and decode(text).step == 10, what="step 10 reported")
    final = ProgressReport(
        time=now, state="completed", step=20, total_steps=20, checkpoints=[checkpoint]
    )
    assert reporter.close(final, timeout=30)

    meta = core.read_namespaced_pod("job-worker-0", namespace).metadata
    assert meta.annotations["keep"] == "me"  # a merge patch touches only its own key
    report = decode(meta.annotations[ANNOTATION])
    assert (report.state, report.step, report.checkpoints) == ("completed", 20, [checkpoint])
