"""The image tier: the images ``make images`` built, run in a real container runtime.

``make test-images`` builds the images first (cached by the digest of their inputs), then runs
this folder; ``build/images.json`` says which images those are. A test here never builds
an image and never uses one it did not find there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.images.containers import PodContainer, oci

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "build" / "images.json"
IMAGES = ("operator", "trainer-lora", "trainer-vision")


@pytest.fixture(scope="session")
def built() -> dict[str, dict[str, Any]]:
    """What ``make images`` built: per image its tag, reference, digest and sizes."""
    if not BUILT.exists():
        raise AssertionError(
            f"no {BUILT.relative_to(ROOT)}: run 'make images' (or make test-images)"
        )
    records: dict[str, dict[str, Any]] = json.loads(BUILT.read_text())
    missing = [name for name in IMAGES if name not in records]
    assert not missing, f"make images built no {missing}: run 'make images'"
    for record in records.values():
        oci("podman", "image", "exists", record["tag"])
    return records


@pytest.fixture
def containers() -> Iterator[list[PodContainer]]:
    """Containers a test started: removed afterwards, whatever happened."""
    started: list[PodContainer] = []
    yield started
    for container in started:
        container.remove()
