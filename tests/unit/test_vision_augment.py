"""Augmentations move boxes and masks with the pixels, and are reproducible per generator."""

from __future__ import annotations

import numpy as np
import pytest

from kubetrain.api import Augmentation, VisionTask
from kubetrain.trainer.vision import augment as aug
from kubetrain.trainer.vision.augment import Example, boxes_from_masks


def scene(with_masks: bool = True) -> Example:
    """A 40 x 30 image with two rectangles (one per class), their boxes and masks."""
    image = np.zeros((30, 40, 3), np.uint8)
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 15:28, 20:36] = True
    image[masks[0]] = (255, 0, 0)
    image[masks[1]] = (0, 255, 0)
    return Example(
        image=image,
        boxes=boxes_from_masks(masks),
        labels=np.array([0, 1]),
        masks=masks if with_masks else None,
    )


def assert_boxes_fit_pixels(ex: Example, colour_of: dict[int, tuple[int, int, int]]) -> None:
    """Each box encloses exactly the pixels of its object's colour."""
    for box, label in zip(ex.boxes, ex.labels, strict=True):
        ys, xs = np.nonzero((ex.image == colour_of[int(label)]).all(-1))
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


COLOURS = {0: (255, 0, 0), 1: (0, 255, 0)}


@pytest.mark.parametrize("horizontal", [True, False])
def test_flips_move_boxes_and_masks_with_the_pixels(horizontal: bool) -> None:
    flipped = aug.flip(scene(), horizontal=horizontal)
    assert_boxes_fit_pixels(flipped, COLOURS)
    assert flipped.masks is not None
    assert (boxes_from_masks(flipped.masks) == flipped.boxes).all()
    twice = aug.flip(flipped, horizontal=horizontal)
    assert (twice.image == scene().image).all() and (twice.boxes == scene().boxes).all()


def test_affine_with_masks_gives_boxes_of_the_moved_masks() -> None:
    rng = np.random.default_rng(0)
    moved = aug.affine(scene(), rng, degrees=20, translate=0.1, scale=0.2)
    assert moved.masks is not None and len(moved.masks) == len(moved.labels) > 0
    assert (boxes_from_masks(moved.masks) == moved.boxes).all()
    assert moved.image.shape == (30, 40, 3)


def test_affine_without_masks_encloses_the_moved_box() -> None:
    still = aug.affine(scene(False), np.random.default_rng(0), 0, 0, 0)
    assert np.allclose(still.boxes, scene().boxes, atol=1e-4)
    rng = np.random.default_rng(3)
    moved = aug.affine(scene(False), rng, degrees=0, translate=0.2, scale=0)
    for box, label in zip(moved.boxes, moved.labels, strict=True):
        ys, xs = np.nonzero((moved.image == COLOURS[int(label)]).all(-1))
        assert box[0] <= xs.min() + 1 and box[2] >= xs.max() and box[1] <= ys.min() + 1


def test_objects_pushed_out_of_the_image_are_dropped() -> None:
    ex = scene(False)
    shifted = aug.affine(ex, np.random.default_rng(0), 0, 0, 0)
    assert len(shifted.labels) == 2
    far = Example(image=ex.image, boxes=np.array([[0, 0, 3, 3]], np.float32), labels=np.array([0]))
    assert len(aug.sane(aug.resize(far, (4, 3))).labels) == 0  # under 2 pixels wide


def test_hsv_keeps_the_shape_and_zero_gains_keep_the_colours() -> None:
    ex = scene()
    same = aug.hsv(ex, np.random.default_rng(0), 0, 0, 0)
    assert np.abs(same.image.astype(int) - ex.image).max() <= 3  # HSV round trip
    jittered = aug.hsv(ex, np.random.default_rng(0), 0.5, 0.5, 0.5)
    assert jittered.image.shape == ex.image.shape and (jittered.boxes == ex.boxes).all()


def test_mixup_blends_labels_for_classifiers_and_objects_for_detectors() -> None:
    a = Example(image=np.full((4, 4, 3), 200, np.uint8), label=0)
    b = Example(image=np.zeros((4, 4, 3), np.uint8), label=2)
    mixed = aug.mixup(a, b, 0.75, num_classes=3)
    assert mixed.soft is not None and mixed.soft.tolist() == [0.75, 0.0, 0.25]
    assert (mixed.image == 150).all()
    both = aug.mixup(scene(), scene(), 0.5, num_classes=2)
    assert len(both.labels) == 4 and both.masks is not None and len(both.masks) == 4


def test_copy_paste_with_masks_hides_what_it_covers() -> None:
    base = scene()
    other_masks = np.zeros((1, 30, 40), bool)
    other_masks[0, 0:12, 0:8] = True  # covers the left part of base's first object
    other = Example(
        image=np.full((30, 40, 3), 9, np.uint8),
        boxes=boxes_from_masks(other_masks),
        labels=np.array([1]),
        masks=other_masks,
    )
    pasted = aug.copy_paste(base, other, np.random.default_rng(0))
    assert pasted.labels.tolist() == [0, 1, 1]
    assert pasted.masks is not None
    assert (boxes_from_masks(pasted.masks) == pasted.boxes).all()
    assert pasted.boxes[0].tolist() == [8, 2, 12, 10]  # what is left of the first object
    assert not (pasted.masks[0] & pasted.masks[2]).any()


def test_copy_paste_without_masks_drops_boxes_it_covers() -> None:
    base = scene(False)
    other = Example(
        image=np.full((30, 40, 3), 9, np.uint8),
        boxes=np.array([[0, 0, 14, 12]], np.float32),
        labels=np.array([1]),
    )
    pasted = aug.copy_paste(base, other, np.random.default_rng(0))
    assert pasted.labels.tolist() == [1, 1]  # the first object is hidden, the pasted one added
    assert (pasted.image[0:12, 0:14] == 9).all()


def test_mosaic_tiles_four_examples_into_quarters() -> None:
    tiled = aug.mosaic([scene(), scene(), scene(), scene()])
    assert tiled.image.shape == (30, 40, 3)
    assert len(tiled.labels) == 8 and tiled.masks is not None
    assert (boxes_from_masks(tiled.masks) == tiled.boxes).all()
    assert (tiled.boxes[:, [0, 2]] <= 40).all() and (tiled.boxes[:, [1, 3]] <= 30).all()


def test_semantic_masks_follow_and_fill_with_ignore() -> None:
    plane = np.zeros((30, 40), np.uint8)
    plane[:, 20:] = 1
    ex = Example(image=np.zeros((30, 40, 3), np.uint8), semantic=plane)
    flipped = aug.flip(ex, horizontal=True)
    assert flipped.semantic is not None and flipped.semantic[0, 0] == 1
    moved = aug.affine(ex, np.random.default_rng(1), degrees=30, translate=0.3, scale=0.3)
    assert moved.semantic is not None and set(np.unique(moved.semantic)) <= {0, 1, 255}


def test_the_pipeline_is_reproducible_per_generator() -> None:
    spec = Augmentation(
        mixup=0.5, copy_paste=0.5, mosaic=0.5, hsv_h=0.1, hsv_s=0.3, hsv_v=0.3,
        horizontal_flip=0.5, vertical_flip=0.5, degrees=10, translate=0.1, scale=0.2,
    )  # fmt: skip

    def run(seed: int) -> Example:
        return aug.augment(
            scene(),
            np.random.default_rng(seed),
            spec,
            task=VisionTask.INSTANCE_SEGMENTATION,
            partner=lambda _: scene(),
            num_classes=2,
        )

    first, again = run(7), run(7)
    assert (first.image == again.image).all() and (first.boxes == again.boxes).all()
    assert first.masks is not None
    assert (boxes_from_masks(first.masks) == first.boxes).all()
