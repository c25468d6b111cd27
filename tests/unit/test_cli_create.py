"""``kubectl train create -f`` without a cluster: requests converted, checked, printed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

from kubetrain.cli.main import main
from tests.unit.test_sdk_migrate import VISION_BODY


def _run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def test_a_dry_run_prints_the_converted_job_and_what_was_substituted(tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(VISION_BODY))
    code, out, err = _run("create", "-f", str(request), "--dry-run", "-n", "vision")
    assert code == 0
    job = yaml.safe_load(out)
    assert job["metadata"] == {"name": "custom-object-detection", "namespace": "vision"}
    assert job["spec"]["vision"]["pipeline"] == "yolox"
    assert job["spec"]["vision"]["inputSize"] == {"width": 640, "height": 640}
    assert job["spec"]["resources"] == {"gpuType": "v100", "workers": 4}
    assert err.splitlines() == [
        "warning: datasetId: 'ds_vision_objects_001' is read from PersistentVolumeClaim "
        "'ds-vision-objects-001' (claim names have no capitals or '_')",
        "warning: config.architecture: 'yolov8' is not a kubetrain architecture; the job "
        "trains pipeline yolox (fcos_cspdarknet_s, an anchor-free detector on YOLOX's "
        "CSP-Darknet) instead",
        "warning: vision.pretrained: false: the job trains from random weights, because "
        "kubetrain never downloads published weights; set spec.vision.pretrainedWeights to a "
        "weights file's URI (e.g. RF-DETR's rf-detr-small.pth) to start from them",
    ]


def test_yaml_on_standard_input_and_a_manifest_as_it_is() -> None:
    request = "pipeline_type: classification\ndataset_name: flowers\nconfig: {image_size: 224}\n"
    code, out, _ = _run("create", "-f", "-", "--dry-run", "-o", "json", stdin=request)
    assert code == 0
    job = json.loads(out)
    assert job["metadata"] == {"generateName": "classification-run-"}
    assert job["spec"]["dataset"] == {"pvc": {"claimName": "flowers"}}

    manifest = {
        "apiVersion": "kubetrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "plain"},
        "spec": {
            "modelType": "vision",
            "dataset": {"synthetic": {}},
            "vision": job["spec"]["vision"],
        },
    }
    code, out, _ = _run("create", "-f", "-", "--dry-run", stdin=yaml.safe_dump(manifest))
    assert code == 0 and yaml.safe_load(out) == manifest


def test_a_bad_request_fails_before_connecting(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-kubeconfig")
    bad = json.dumps({**VISION_BODY, "config": {**VISION_BODY["config"], "input_size": [1, 2, 3]}})
    code, out, err = _run("create", "-f", "-", "--kubeconfig", missing, stdin=bad)
    assert code == 1 and out == ""
    assert err.startswith("error: config.input_size: must be [width, height]")
    code, _, err = _run("create", "-f", str(tmp_path / "nothing.json"))
    assert code == 1 and err.startswith(f"error: cannot read {tmp_path / 'nothing.json'}: ")
    code, _, err = _run("create", "-f", "-", stdin="[1, 2]")
    assert code == 1 and err == "error: - holds no object (a TrainingJob or a request)\n"
