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
    records = Built(json.loads(BUILT.read_text()))
    for record in records.values():
        oci("podman", "image", "exists", record["tag"])
    return records


class Built(dict[str, dict[str, Any]]):
    """build/images.json by image name; an image it lacks fails the test that needs it."""

    def __missing__(self, name: str) -> dict[str, Any]:
        raise AssertionError(f"make images built no {name}: run 'make images'")


@pytest.fixture
def containers() -> Iterator[list[PodContainer]]:
    """Containers a test started: removed afterwards, whatever happened."""
    started: list[PodContainer] = []
    yield started
    for container in started:
        container.remove()
