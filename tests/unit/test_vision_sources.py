"""Dataset layouts indexed without torch: ImageFolder, COCO, YOLO, VOC, image + mask pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kubetrain.api import DatasetFormat, VisionTask
from kubetrain.trainer.vision.sources import (
    DataError,
    DatasetIndex,
    Sample,
    class_count,
    infer_format,
    read_dataset,
    require_enough,
    skipped_note,
    split,
)


def image(path: Path, size: tuple[int, int] = (20, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


def test_imagefolder_classes_are_sorted_directory_names(tmp_path: Path) -> None:
    for name in ("dog/a.jpg", "cat/b.png", "cat/sub/c.jpeg", "cat/.hidden.jpg"):
        image(tmp_path / name)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    index = read_dataset(tmp_path, VisionTask.CLASSIFICATION, None, None)
    assert index.classes == ["cat", "dog"]
    assert [(s.image.name, s.label) for s in index.train if s.image] == [
        ("b.png", 0),
        ("c.jpeg", 0),
        ("a.jpg", 1),
    ]
    assert index.val is None


def test_imagefolder_uses_its_own_validation_split(tmp_path: Path) -> None:
    image(tmp_path / "train/cat/a.jpg")
    image(tmp_path / "train/dog/b.jpg")
    image(tmp_path / "val/dog/c.jpg")
    image(tmp_path / "val/bird/d.jpg")
    index = read_dataset(tmp_path, VisionTask.CLASSIFICATION, DatasetFormat.IMAGEFOLDER, None)
    assert index.classes == ["cat", "dog"]
    assert [(s.image.name, s.label) for s in index.val or [] if s.image] == [("c.jpg", 1)]
    assert index.skipped == 1 and "bird" in index.notes[0]


def coco(tmp_path: Path, name: str = "instances_train.json") -> Path:
    image(tmp_path / "images/one.jpg", (100, 50))
    image(tmp_path / "images/two.jpg", (100, 50))
    data = {
        "images": [
            {"id": 1, "file_name": "one.jpg", "width": 100, "height": 50},
            {"id": 2, "file_name": "two.jpg", "width": 100, "height": 50},
            {"id": 3, "file_name": "missing.jpg", "width": 100, "height": 50},
        ],
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 10],
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 20, 10, 10],
             "segmentation": {"size": [50, 100], "counts": [1020, 10, 40, 10, 3920]}},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 9, "bbox": [0, 0, 5, 5]},
        ],
    }  # fmt: skip
    path = tmp_path / "annotations" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_coco_maps_category_ids_to_contiguous_classes(tmp_path: Path) -> None:
    coco(tmp_path)
    index = read_dataset(tmp_path, VisionTask.INSTANCE_SEGMENTATION, None, None)
    assert index.classes == ["person", "car"]  # sorted by category id
    assert [s.image.name for s in index.train if s.image] == ["one.jpg", "two.jpg"]
    first = index.train[0].objects
    assert [(o.label, o.box) for o in first] == [(1, (10, 5, 30, 15)), (0, (50, 20, 60, 30))]
    assert first[0].polygons and first[1].rle is not None
    assert index.train[1].objects == ()  # the crowd region is left out, silently
    assert index.skipped == 2  # the missing image and the unknown category


def test_coco_validation_file_is_picked_by_name(tmp_path: Path) -> None:
    coco(tmp_path)
    coco(tmp_path, "instances_val.json")
    index = read_dataset(tmp_path, VisionTask.DETECTION, DatasetFormat.COCO, None)
    assert index.val is not None and len(index.val) == 2


def test_yolo_data_yaml_with_boxes_and_outlines(tmp_path: Path) -> None:
    for split_name in ("train", "val"):
        image(tmp_path / f"images/{split_name}/a.jpg")
        labels = tmp_path / f"labels/{split_name}/a.txt"
        labels.parent.mkdir(parents=True, exist_ok=True)
        labels.write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.3 0.3\n5 0.5 0.5 0.1 0.1\nx y\n")
    (tmp_path / "data.yaml").write_text(
        "path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n"
    )
    index = read_dataset(tmp_path, VisionTask.DETECTION, None, None)
    assert index.classes == ["cat", "dog"]
    sample = index.train[0]
    assert sample.normalized
    box, outline = sample.objects
    assert box.label == 0 and box.box == pytest.approx((0.4, 0.3, 0.6, 0.7))
    assert outline.label == 1 and outline.box == pytest.approx((0.1, 0.1, 0.3, 0.3))
    assert outline.polygons
    assert index.val is not None and len(index.val) == 1
    assert index.skipped == 4  # class 5 and the non-numbers, in both splits
    masks = read_dataset(tmp_path, VisionTask.INSTANCE_SEGMENTATION, None, None)
    assert [o.label for o in masks.train[0].objects] == [1]  # only outlines make masks


def test_voc_detection_and_segmentation(tmp_path: Path) -> None:
    image(tmp_path / "JPEGImages/0001.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/0001.xml").write_text(
        "<annotation><filename>0001.jpg</filename>"
        "<object><name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax>"
        "<ymax>8</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )
    index = read_dataset(tmp_path, VisionTask.DETECTION, DatasetFormat.VOC, None)
    assert index.classes == ["dog"]
    assert index.train[0].objects[0].box == (1, 2, 9, 8)
    mask = tmp_path / "SegmentationClass/0001.png"
    mask.parent.mkdir()
    Image.fromarray(np.array([[0, 2], [255, 1]], np.uint8)).save(mask)
    seg = read_dataset(tmp_path, VisionTask.SEMANTIC_SEGMENTATION, None, None)
    assert seg.classes == ["0", "1", "2"]  # from the masks' values, 255 ignored
    assert seg.train[0].mask == mask


def test_mask_pairs_match_by_name_and_read_class_names(tmp_path: Path) -> None:
    image(tmp_path / "images/a.jpg")
    image(tmp_path / "images/b.jpg")
    (tmp_path / "masks").mkdir()
    Image.new("L", (20, 10), 1).save(tmp_path / "masks/a.png")
    (tmp_path / "classes.txt").write_text("background\nroad\n")
    index = read_dataset(tmp_path, VisionTask.SEMANTIC_SEGMENTATION, None, 7)
    assert index.classes == ["background", "road"]
    assert [s.image.name for s in index.train if s.image] == ["a.jpg"]
    assert index.skipped == 1 and "no mask" in index.notes[0]


def test_layouts_are_inferred_and_checked_against_the_task(tmp_path: Path) -> None:
    coco(tmp_path)
    assert infer_format(tmp_path, VisionTask.DETECTION) is DatasetFormat.COCO
    assert infer_format(tmp_path, VisionTask.CLASSIFICATION) is DatasetFormat.IMAGEFOLDER
    with pytest.raises(DataError, match="format yolo cannot train task semanticSegmentation"):
        read_dataset(tmp_path, VisionTask.SEMANTIC_SEGMENTATION, DatasetFormat.YOLO, None)
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope", VisionTask.DETECTION, None, None)


def test_detection_needs_at_least_one_object(tmp_path: Path) -> None:
    image(tmp_path / "images/a.jpg")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [cat]\n")
    with pytest.raises(DataError, match="has no annotated objects"):
        read_dataset(tmp_path, VisionTask.DETECTION, None, None)


def test_too_few_images_say_how_many_and_why() -> None:
    require_enough(5, "x")
    with pytest.raises(DataError) as err:
        require_enough(3, "/data", "2 entries were left out, e.g. a; b")
    assert str(err.value) == (
        "dataset /data has 3 usable images; at least 5 are required "
        "(2 entries were left out, e.g. a; b)"
    )
    index = DatasetIndex([], None, [], "d", skipped=4, notes=["one", "two", "three", "four"])
    assert skipped_note(index) == "4 entries were left out, e.g. one; two; three"


def test_split_is_seeded_and_keeps_both_sides() -> None:
    samples = [Sample(synthetic=i) for i in range(10)]
    train, val = split(samples, 0.2, seed=5)
    assert (len(train), len(val)) == (8, 2)
    assert split(samples, 0.2, seed=5) == (train, val)
    assert {s.synthetic for s in train} | {s.synthetic for s in val} == set(range(10))
    assert [len(part) for part in split(samples[:2], 0.9, seed=0)] == [1, 1]


def test_num_classes_may_exceed_but_not_undercut_the_data() -> None:
    index = DatasetIndex([], None, ["a", "b", "c"], "d")
    assert class_count(index, None) == 3
    assert class_count(index, 5) == 5
    with pytest.raises(DataError, match="numClasses is 2 but dataset d has 3 classes"):
        class_count(index, 2)
