"""Samples decoded at the input size: synthetic data, COCO outlines, YOLO fractions, masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kubetrain.api import VisionTask
from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.vision import synthetic
from kubetrain.trainer.vision.augment import boxes_from_masks
from kubetrain.trainer.vision.loading import Loader
from kubetrain.trainer.vision.sources import DataError, ObjectAnn, Sample


def test_synthetic_shapes_are_deterministic_with_exact_masks() -> None:
    loader = Loader(VisionTask.INSTANCE_SEGMENTATION, (64, 48), num_classes=3, seed=1)
    first, again = loader.load(Sample(synthetic=4)), loader.load(Sample(synthetic=4))
    assert (first.image == again.image).all() and (first.boxes == again.boxes).all()
    assert first.image.shape == (48, 64, 3) and first.masks is not None
    assert 1 <= len(first.labels) <= 3 and set(first.labels.tolist()) <= {0, 1, 2}
    assert (boxes_from_masks(first.masks) == first.boxes).all()
    other = Loader(VisionTask.INSTANCE_SEGMENTATION, (64, 48), num_classes=3, seed=2)
    assert not (other.load(Sample(synthetic=4)).image == first.image).all()


def test_synthetic_semantic_masks_use_zero_for_background() -> None:
    loader = Loader(VisionTask.SEMANTIC_SEGMENTATION, (32, 32), num_classes=3, seed=0)
    ex = loader.load(Sample(synthetic=0))
    assert ex.semantic is not None
    assert 0 in ex.semantic and set(np.unique(ex.semantic)) <= {0, 1, 2}


def test_synthetic_digits_stay_below_num_classes() -> None:
    loader = Loader(VisionTask.CLASSIFICATION, (16, 16), num_classes=4, seed=0)
    labels = {loader.load(Sample(synthetic=i)).label for i in range(40)}
    assert labels == {0, 1, 2, 3}


def test_synthetic_class_limits_are_explained() -> None:
    assert synthetic.class_names(VisionTask.SEMANTIC_SEGMENTATION, 3)[0] == "background"
    assert len(synthetic.class_names(VisionTask.DETECTION, None)) == 3
    with pytest.raises(ConfigError, match="at most 10 classes"):
        synthetic.class_names(VisionTask.CLASSIFICATION, 11)
    with pytest.raises(ConfigError, match="2 to 9 classes"):
        synthetic.class_names(VisionTask.SEMANTIC_SEGMENTATION, 1)


def test_a_coco_outline_is_rasterised_at_the_input_size(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (100, 50)).save(path)
    obj = ObjectAnn((10, 10, 30, 30), 1, polygons=((10, 10, 30, 10, 30, 30, 10, 30),))
    ex = Loader(VisionTask.INSTANCE_SEGMENTATION, (50, 25), 2).load(
        Sample(image=path, objects=(obj,))
    )
    assert ex.masks is not None and ex.masks.shape == (1, 25, 50)
    assert ex.boxes.tolist() == [[5, 5, 15, 15]]
    assert ex.labels.tolist() == [1]


def test_yolo_fractions_and_pixel_boxes_scale_alike(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    Image.new("RGB", (200, 100)).save(path)
    loader = Loader(VisionTask.DETECTION, (100, 50), 2)
    fractions = loader.load(
        Sample(image=path, objects=(ObjectAnn((0.1, 0.2, 0.5, 0.6), 0),), normalized=True)
    )
    pixels = loader.load(Sample(image=path, objects=(ObjectAnn((20, 20, 100, 60), 0),)))
    assert fractions.boxes.tolist() == pixels.boxes.tolist() == [[10, 10, 50, 30]]
    assert fractions.masks is None


def test_mask_values_beyond_the_classes_are_ignored(tmp_path: Path) -> None:
    image, mask = tmp_path / "a.png", tmp_path / "a-mask.png"
    Image.new("RGB", (4, 2)).save(image)
    Image.fromarray(np.array([[0, 1, 2, 255], [7, 1, 1, 0]], np.uint8)).save(mask)
    ex = Loader(VisionTask.SEMANTIC_SEGMENTATION, (4, 2), 3).load(Sample(image=image, mask=mask))
    assert ex.semantic is not None
    assert ex.semantic.tolist() == [[0, 1, 2, 255], [255, 1, 1, 0]]


def test_an_unreadable_image_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"cannot read image {broken}"):
        Loader(VisionTask.CLASSIFICATION, (8, 8), 2).load(Sample(image=broken, label=0))


def test_colour_masks_are_refused_with_the_reason(tmp_path: Path) -> None:
    image, mask = tmp_path / "a.png", tmp_path / "a-mask.png"
    Image.new("RGB", (4, 2)).save(image)
    Image.new("RGB", (4, 2), (255, 0, 0)).save(mask)
    with pytest.raises(DataError, match="is a RGB image; semantic segmentation needs index PNGs"):
        Loader(VisionTask.SEMANTIC_SEGMENTATION, (4, 2), 3).load(Sample(image=image, mask=mask))
