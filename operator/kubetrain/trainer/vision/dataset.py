"""The torch side of the data: samples to tensors, per-sample seeded augmentation, batches.

Keys are (epoch, index) pairs, so the augmentation of an image depends only on the seed,
the epoch and the image, never on the loader worker or on where a run was resumed.
Images stay uint8 until they reach the device, where they are scaled (and normalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kubetrain.api import Augmentation, VisionTask
from kubetrain.trainer.vision.augment import Example, augment, one_hot
from kubetrain.trainer.vision.loading import Loader
from kubetrain.trainer.vision.sources import Sample

Key = tuple[int, int]
Item = tuple[Any, ...]
Batch = tuple[Any, ...]


class VisionDataset(Dataset[Item]):
    """Samples of one split; training splits augment when the spec asks for it."""

    def __init__(
        self,
        samples: Sequence[Sample],
        loader: Loader,
        *,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.loader = loader
        self.augmentation = augmentation
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def example(self, key: Key) -> Example:
        epoch, index = key
        example = self.loader.load(self.samples[index])
        if self.augmentation is None:
            return example
        rng = np.random.default_rng([self.seed, epoch, index])

        def partner(generator: np.random.Generator) -> Example:
            return self.loader.load(self.samples[int(generator.integers(len(self.samples)))])

        return augment(
            example,
            rng,
            self.augmentation,
            task=self.loader.task,
            partner=partner,
            num_classes=self.loader.num_classes,
        )

    def __getitem__(self, key: Key) -> Item:
        return to_item(self.example(key), self.loader.task, self.loader.num_classes)


def to_item(example: Example, task: VisionTask, num_classes: int) -> Item:
    """Tensors for one example: uint8 CHW image and the task's targets."""
    image = torch.from_numpy(np.ascontiguousarray(example.image.transpose(2, 0, 1)))
    if task is VisionTask.CLASSIFICATION:
        soft = torch.from_numpy(one_hot(example, num_classes))
        label = example.label if example.label is not None else int(soft.argmax())
        return image, soft, label
    if task is VisionTask.SEMANTIC_SEGMENTATION:
        assert example.semantic is not None
        return image, torch.from_numpy(example.semantic.astype(np.int64))
    target: dict[str, torch.Tensor] = {
        "boxes": torch.from_numpy(example.boxes.astype(np.float32)).reshape(-1, 4),
        "labels": torch.from_numpy(example.labels.astype(np.int64)),
    }
    if example.masks is not None:
        target["masks"] = torch.from_numpy(example.masks.astype(np.uint8))
    return image, target


def collate(task: VisionTask, items: list[Item]) -> Batch:
    """Stack dense tasks' tensors; detectors take lists (their images may hold any objects)."""
    if task is VisionTask.CLASSIFICATION:
        images, soft, labels = zip(*items, strict=True)
        return torch.stack(images), torch.stack(soft), torch.tensor(labels, dtype=torch.int64)
    if task is VisionTask.SEMANTIC_SEGMENTATION:
        images, masks = zip(*items, strict=True)
        return torch.stack(images), torch.stack(masks)
    images, targets = zip(*items, strict=True)
    return list(images), list(targets)


class _Collate:
    """A picklable collate function for one task (loader workers need to pickle it)."""

    def __init__(self, task: VisionTask) -> None:
        self.task = task

    def __call__(self, items: list[Item]) -> Batch:
        return collate(self.task, items)


def loader(
    dataset: VisionDataset,
    batches: list[list[Key]],
    *,
    workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader[Item]:
    """A loader over precomputed batches of keys (its own generator: the global RNG, which
    a checkpoint restores, is left untouched)."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=_Collate(dataset.loader.task),
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
