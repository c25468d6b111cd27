"""The chart's images: pinned by digest when digests are given, the tags as before otherwise.

Renders the chart with the real helm (`helm template`, as Argo CD does) and follows the trainer
images on to where users meet them: the operator reads the ConfigMap into its settings and
starts trainer Pods from them.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetrain.api.job import TrainingJob
from kubetrain.localcluster import find_binary
from kubetrain.operator.placement import Placement
from kubetrain.operator.render import fetch_pod, worker_pod
from kubetrain.operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetrain"
OPERATOR, LORA, VISION = ("sha256:" + c * 64 for c in "abc")
DIGESTS = (
    f"image.digest={OPERATOR}",
    f"trainer.llmImageDigest={LORA}",
    f"trainer.visionImageDigest={VISION}",
)
PINNED = re.compile(r"^[^@:\s]+(:[0-9]+)?(/[^@:\s]+)*@sha256:[0-9a-f]{64}$")  # no tag beside


def _helm_template(*settings: str) -> subprocess.CompletedProcess[str]:
    argv = [str(find_binary("helm")), "template", "t", str(CHART), "--kube-version", "1.36.3"]
    for setting in settings:
        argv += ["--set", setting]
    return subprocess.run(argv, check=False, capture_output=True, text=True)


def _render(*settings: str) -> list[dict[str, Any]]:
    result = _helm_template(*settings)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _images(node: Any) -> Iterator[str]:
    """Every string under an ``image`` key, at any depth (containers, initContainers, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def _workload_images(documents: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every image in every object the chart renders, by object."""
    found = {f"{d['kind']}/{d['metadata']['name']}": list(_images(d)) for d in documents}
    return {name: images for name, images in found.items() if images}


def _settings(documents: list[dict[str, Any]]) -> Settings:
    """The operator's settings, read from the ConfigMap the chart renders for it."""
    config = next(
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kubetrain-config"
    )
    return Settings.model_validate(yaml.safe_load(config["data"]["config.yaml"]))


def _trainer_pod_images(settings: Settings) -> dict[str, list[str]]:
    """The images of the worker and fetch Pods the operator starts for each example job."""
    found: dict[str, list[str]] = {}
    for example in ("tiny-lora-cpu", "tiny-multimodal-cpu", "tiny-vision-cpu"):
        manifest = yaml.safe_load((ROOT / "examples" / f"{example}.yaml").read_text())
        manifest["metadata"] |= {"namespace": "ml", "uid": "uid-1", "generation": 1}
        manifest["spec"]["dataset"] = {"uri": "s3://data/train"}  # remote: a fetch Pod too
        job = TrainingJob.model_validate(manifest)
        entry = settings.catalogue.get(job.spec.resources.gpu_type or "cpu")
        assert entry is not None
        placement = Placement.resolve(job.spec, job.spec.resources.gpu_type or "cpu", entry)
        pods = (
            worker_pod(job, 0, attempt=1, resume_from="", placement=placement, settings=settings),
            fetch_pod(job, 1, placement=placement, settings=settings, cache_claim=None),
        )
        for pod in pods:
            found[pod["metadata"]["name"]] = list(_images(pod))
    return found


def test_with_digests_every_image_the_chart_and_the_operator_run_is_pinned() -> None:
    documents = _render(*DIGESTS)
    workloads = _workload_images(documents)
    assert workloads == {"Deployment/t-kubetrain": [f"ghcr.io/kubetrain/operator@{OPERATOR}"]}
    images = _settings(documents).images
    assert (images.llm, images.multimodal, images.vision) == (
        f"ghcr.io/kubetrain/trainer-lora@{LORA}",
        f"ghcr.io/kubetrain/trainer-lora@{LORA}",
        f"ghcr.io/kubetrain/trainer-vision@{VISION}",
    )
    trainers = _trainer_pod_images(_settings(documents))
    assert len(trainers) == 6
    everything = [i for group in (*workloads.values(), *trainers.values()) for i in group]
    assert everything and all(PINNED.match(image) for image in everything), everything


def test_without_digests_the_tags_render_as_before() -> None:
    documents = _render()
    assert _workload_images(documents) == {
        "Deployment/t-kubetrain": ["ghcr.io/kubetrain/operator:0.1.0"]  # the appVersion
    }
    images = _settings(documents).images
    assert (images.llm, images.multimodal, images.vision) == (
        "ghcr.io/kubetrain/trainer-lora:0.1.0",
        "ghcr.io/kubetrain/trainer-lora:0.1.0",
        "ghcr.io/kubetrain/trainer-vision:0.1.0",
    )
    tagged = _render("image.tag=0.2.0", "trainer.llmImage=registry.local:5000/lora:dev")
    assert _workload_images(tagged)["Deployment/t-kubetrain"] == [
        "ghcr.io/kubetrain/operator:0.2.0"
    ]
    assert _settings(tagged).images.llm == "registry.local:5000/lora:dev"


@pytest.mark.parametrize(
    ("settings", "llm", "vision"),
    [
        # A digest replaces the tag, not a registry's port.
        (
            ("trainer.llmImage=registry.local:5000/ml/lora:dev", f"trainer.llmImageDigest={LORA}"),
            f"registry.local:5000/ml/lora@{LORA}",
            "ghcr.io/kubetrain/trainer-vision:0.1.0",
        ),
        # An image without a tag gets the digest appended.
        (
            (
                "trainer.visionImage=registry.local:5000/vision",
                f"trainer.visionImageDigest={VISION}",
            ),
            "ghcr.io/kubetrain/trainer-lora:0.1.0",
            f"registry.local:5000/vision@{VISION}",
        ),
        # The image value may carry its digest itself.
        (
            (f"trainer.llmImage=ghcr.io/kubetrain/trainer-lora@{LORA}",),
            f"ghcr.io/kubetrain/trainer-lora@{LORA}",
            "ghcr.io/kubetrain/trainer-vision:0.1.0",
        ),
    ],
)
def test_a_trainer_digest_replaces_the_tag_of_any_image_reference(
    settings: tuple[str, ...], llm: str, vision: str
) -> None:
    images = _settings(_render(*settings)).images
    assert (images.llm, images.multimodal, images.vision) == (llm, llm, vision)


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("image.digest=sha256:abc", "/image/digest"),
        ("image.digest=" + "a" * 64, "/image/digest"),  # the algorithm is missing
        ("image.digest=sha256:" + "A" * 64, "/image/digest"),  # digests are lowercase hex
        ("trainer.llmImageDigest=sha256:" + "a" * 63, "/trainer/llmImageDigest"),
        ("trainer.visionImageDigest=md5:" + "a" * 32, "/trainer/visionImageDigest"),
        ("trainer.llmImage=ghcr.io/kubetrain/trainer-lora@sha256:abc", "/trainer/llmImage"),
        ("trainer.visionImage=ghcr.io/kubetrain/trainer-vision@latest", "/trainer/visionImage"),
    ],
)
def test_the_schema_refuses_a_malformed_digest_naming_the_value(
    setting: str, complaint: str
) -> None:
    result = _helm_template(setting)
    assert result.returncode != 0, setting
    assert complaint in result.stderr and setting.split("=", 1)[1] in result.stderr, result.stderr


def test_a_digest_in_both_the_image_and_its_digest_value_is_refused() -> None:
    result = _helm_template(
        f"trainer.llmImage=ghcr.io/kubetrain/trainer-lora@{LORA}", f"trainer.llmImageDigest={LORA}"
    )
    assert result.returncode != 0
    assert "trainer.llmImage" in result.stderr and "not both" in result.stderr, result.stderr
