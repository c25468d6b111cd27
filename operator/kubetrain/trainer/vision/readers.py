"""Dataset layouts: ImageFolder, COCO JSON, YOLO txt + data.yaml, VOC and image + mask pairs.

Each reader returns a ``DatasetIndex``; entries that cannot be used (an image listed but
missing, a malformed label line) are counted and noted rather than failing the run.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kubetrain.trainer.vision.sources import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    DataError,
    DatasetIndex,
    ObjectAnn,
    Sample,
)

MAX_NOTES = 5
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation")}


class _Notes:
    """Counts left-out entries and keeps the first few reasons."""

    def __init__(self) -> None:
        self.count = 0
        self.items: list[str] = []

    def add(self, note: str) -> None:
        self.count += 1
        if len(self.items) < MAX_NOTES:
            self.items.append(note)


def images_under(root: Path) -> list[Path]:
    """Image files below ``root``, sorted, hidden ones left out."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _split_dir(root: Path, split: str) -> Path | None:
    return next((root / n for n in SPLIT_NAMES[split] if (root / n).is_dir()), None)


# -- classification ---------------------------------------------------------------------------


def read_imagefolder(root: Path) -> DatasetIndex:
    """``<root>/<class>/<image>``, or ``<root>/train/<class>/...`` with ``<root>/val/...``."""
    if not root.is_dir():
        raise DataError(f"dataset {root} is not a directory (imagefolder: <root>/<class>/<image>)")
    train_root, val_root = _split_dir(root, "train"), _split_dir(root, "val")
    if train_root is None:
        train_root, val_root = root, None
    classes = sorted(
        d.name for d in train_root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not classes:
        raise DataError(
            f"dataset {train_root} has no class directories (imagefolder: <root>/<class>/<image>)"
        )
    notes = _Notes()

    def collect(base: Path) -> list[Sample]:
        out: list[Sample] = []
        for directory in sorted(d for d in base.iterdir() if d.is_dir()):
            if directory.name.startswith("."):
                continue
            if directory.name not in classes:
                notes.add(f"{directory}: class not in {train_root}")
                continue
            label = classes.index(directory.name)
            out.extend(Sample(image=p, label=label) for p in images_under(directory))
        return out

    train = collect(train_root)
    val = collect(val_root) if val_root is not None else None
    return DatasetIndex(train, val or None, classes, str(root), notes.count, notes.items)


# -- COCO -------------------------------------------------------------------------------------


def read_coco(path: Path, *, masks: bool) -> DatasetIndex:
    """A COCO annotation file, or a directory with ``*.json`` or ``annotations/*.json`` (the
    one named *train* trains, the one named *val* validates)."""
    if path.is_file():
        files, root = [path], path.parent
    else:
        files = sorted(path.glob("annotations/*.json")) + sorted(path.glob("*.json"))
        root = path
    if not files:
        raise DataError(f"dataset {path} has no COCO .json annotation file")
    train_file = next((f for f in files if "train" in f.name), files[0])
    val_file = next((f for f in files if "val" in f.name and f != train_file), None)
    notes = _Notes()
    train_data = _load_json(train_file)
    categories = sorted(
        {
            int(c["id"]): str(c.get("name", c["id"])) for c in train_data.get("categories", [])
        }.items()
    )
    if not categories:
        raise DataError(f"COCO file {train_file} has no categories")
    labels = {cid: i for i, (cid, _) in enumerate(categories)}
    train = _coco_samples(
        train_data, train_file, root=root, labels=labels, masks=masks, notes=notes
    )
    val = (
        _coco_samples(
            _load_json(val_file), val_file, root=root, labels=labels, masks=masks, notes=notes
        )
        if val_file
        else None
    )
    return DatasetIndex(
        train, val or None, [n for _, n in categories], str(path), notes.count, notes.items
    )


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read COCO file {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"COCO file {path} has no images list")
    return data


def _coco_samples(
    data: dict[str, Any],
    file: Path,
    *,
    root: Path,
    labels: dict[int, int],
    masks: bool,
    notes: _Notes,
) -> list[Sample]:
    split = file.stem.rsplit("_", 1)[-1]
    bases = [file.parent, file.parent.parent, root, root / "images", root / "images" / split]
    bases.append(root / split)
    objects: dict[int, list[ObjectAnn]] = {}
    for ann in data.get("annotations", []):
        made = _coco_object(ann, labels, masks)
        if isinstance(made, str):
            notes.add(f"{file.name} annotation {ann.get('id')}: {made}")
        elif made is not None:
            objects.setdefault(int(ann["image_id"]), []).append(made)
    samples: list[Sample] = []
    for image in data["images"]:
        name = str(image.get("file_name", ""))
        found = next((b / name for b in bases if name and (b / name).is_file()), None)
        if found is None:
            notes.add(f"{file.name}: image {name or image.get('id')} not found")
            continue
        samples.append(Sample(image=found, objects=tuple(objects.get(int(image["id"]), ()))))
    return samples


def _coco_object(
    ann: dict[str, Any], labels: dict[int, int], masks: bool
) -> ObjectAnn | str | None:
    if ann.get("iscrowd"):
        return None  # crowd regions are neither trained on nor scored, as in COCO's own tools
    label = labels.get(int(ann.get("category_id", -1)))
    if label is None:
        return f"unknown category {ann.get('category_id')}"
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        return "no bbox [x, y, width, height]"
    if w < 1 or h < 1:
        return "box smaller than a pixel"
    segmentation = ann.get("segmentation")
    polygons: tuple[tuple[float, ...], ...] = ()
    rle: dict[str, Any] | None = None
    if isinstance(segmentation, list):
        polygons = tuple(tuple(float(v) for v in p) for p in segmentation if len(p) >= 6)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
    if masks and not polygons and rle is None:
        return "no segmentation (instance segmentation needs masks)"
    return ObjectAnn((x, y, x + w, y + h), label, polygons, rle)


# -- YOLO -------------------------------------------------------------------------------------


def read_yolo(path: Path, *, masks: bool) -> DatasetIndex:
    """A YOLO ``data.yaml`` (path/train/val/names), or a directory with ``images/`` and
    ``labels/``; one ``class cx cy w h`` (or ``class x1 y1 x2 y2 ...`` outline) per line."""
    config = path if path.is_file() else _yaml_in(path)
    notes = _Notes()
    if config is not None:
        cfg = _load_yaml(config)
        base = Path(str(cfg.get("path") or config.parent))
        base = base if base.is_absolute() else config.parent / base
        names = _yolo_names(cfg, config)
        train = _yolo_split(cfg.get("train"), base, names, masks, notes)
        val = _yolo_split(cfg.get("val"), base, names, masks, notes) if cfg.get("val") else None
        if not train:
            raise DataError(f"YOLO config {config}: train lists no images")
        return DatasetIndex(train, val or None, names, str(path), notes.count, notes.items)
    images = path / "images"
    if not images.is_dir():
        raise DataError(f"dataset {path} has neither a data.yaml nor an images/ directory (YOLO)")
    train_dir, val_dir = _split_dir(images, "train"), _split_dir(images, "val")
    found = _yolo_images([train_dir or images], notes, None, masks)
    val = _yolo_images([val_dir], notes, None, masks) if val_dir else None
    top = max((o.label for s in found + (val or []) for o in s.objects), default=-1)
    names = [str(i) for i in range(top + 1)]
    return DatasetIndex(found, val or None, names, str(path), notes.count, notes.items)


def _yaml_in(path: Path) -> Path | None:
    preferred = path / "data.yaml"
    if preferred.is_file():
        return preferred
    return next(iter(sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))), None)


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"cannot read YOLO config {path}: {err}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"YOLO config {path} is not a mapping")
    return cfg


def _yolo_names(cfg: dict[str, Any], config: Path) -> list[str]:
    names = cfg.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(cfg.get("nc"), int):
        return [str(i) for i in range(cfg["nc"])]
    raise DataError(f"YOLO config {config} has neither names nor nc")


def _yolo_split(
    entry: Any, base: Path, names: list[str], masks: bool, notes: _Notes
) -> list[Sample]:
    entries = entry if isinstance(entry, list) else [entry] if entry else []
    files: list[Path] = []
    dirs: list[Path] = []
    for item in entries:
        where = Path(str(item))
        where = where if where.is_absolute() else base / where
        if where.is_dir():
            dirs.append(where)
        elif where.is_file() and where.suffix == ".txt":
            listed = [line.strip() for line in where.read_text().splitlines() if line.strip()]
            files.extend(p if p.is_absolute() else base / p for p in map(Path, listed))
        else:
            notes.add(f"{where}: no such directory or image list")
    return _yolo_images(dirs, notes, len(names), masks, files)


def _yolo_images(
    dirs: Iterable[Path | None],
    notes: _Notes,
    classes: int | None,
    masks: bool,
    files: Iterable[Path] = (),
) -> list[Sample]:
    paths = [p for d in dirs if d is not None for p in images_under(d)] + list(files)
    samples = []
    for image in paths:
        if not image.is_file():
            notes.add(f"{image}: image not found")
            continue
        objects = _yolo_labels(_label_file(image), classes, masks, notes)
        samples.append(Sample(image=image, objects=objects, normalized=True))
    return samples


def _label_file(image: Path) -> Path:
    """``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the YOLO convention)."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_labels(
    file: Path, classes: int | None, masks: bool, notes: _Notes
) -> tuple[ObjectAnn, ...]:
    if not file.is_file():
        return ()  # an image without a label file has no objects (a negative)
    objects: list[ObjectAnn] = []
    for number, line in enumerate(file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            label, values = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            notes.add(f"{file}:{number}: not numbers")
            continue
        if label < 0 or (classes is not None and label >= classes):
            notes.add(f"{file}:{number}: class {label} out of range")
            continue
        if len(values) == 4 and not masks:
            cx, cy, w, h = values
            objects.append(ObjectAnn((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), label))
        elif len(values) >= 6 and len(values) % 2 == 0:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            objects.append(ObjectAnn(box, label, polygons=(tuple(values),)))
        else:
            what = "an outline (instance segmentation)" if masks else "cx cy w h or an outline"
            notes.add(f"{file}:{number}: expected {what}")
    return tuple(objects)


# -- VOC --------------------------------------------------------------------------------------


def _voc_ids(root: Path, kind: str, split: str) -> list[str] | None:
    listing = root / "ImageSets" / kind / f"{split}.txt"
    if not listing.is_file():
        return None
    return [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]


def read_voc_detection(root: Path) -> DatasetIndex:
    """``Annotations/*.xml`` with ``JPEGImages/``; ``ImageSets/Main/{train,val}.txt`` split.
    Objects marked difficult are left out, as VOC's own evaluation leaves them out."""
    notes = _Notes()
    parsed: dict[str, tuple[Path, list[tuple[str, tuple[float, float, float, float]]]]] = {}
    for xml in sorted((root / "Annotations").glob("*.xml")):
        try:
            image, found = _voc_objects(xml, root)
        except (ET.ParseError, ValueError) as err:
            notes.add(f"{xml}: {err}")
            continue
        if not image.is_file():
            notes.add(f"{xml}: image {image} not found")
            continue
        parsed[xml.stem] = (image, found)
    classes = sorted({n for _, objs in parsed.values() for n, _ in objs})

    def samples(ids: Iterable[str]) -> list[Sample]:
        out = []
        for key in ids:
            if key in parsed:
                image, objs = parsed[key]
                anns = tuple(
                    ObjectAnn((b[0] - 1, b[1] - 1, b[2], b[3]), classes.index(n)) for n, b in objs
                )  # VOC counts pixels from 1
                out.append(Sample(image=image, objects=anns))
        return out

    train_ids, val_ids = _voc_ids(root, "Main", "train"), _voc_ids(root, "Main", "val")
    train = samples(train_ids if train_ids is not None else sorted(parsed))
    val = samples(val_ids) if val_ids is not None else None
    return DatasetIndex(train, val or None, classes, str(root), notes.count, notes.items)


def _voc_objects(
    xml: Path, root: Path
) -> tuple[Path, list[tuple[str, tuple[float, float, float, float]]]]:
    tree = ET.parse(xml).getroot()
    image = root / "JPEGImages" / (tree.findtext("filename") or f"{xml.stem}.jpg")
    found = []
    for obj in tree.iter("object"):
        box = obj.find("bndbox")
        if box is None or (obj.findtext("difficult") or "0").strip() == "1":
            continue
        x0, y0, x1, y1 = (float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax"))
        found.append((str(obj.findtext("name")).strip(), (x0, y0, x1, y1)))
    return image, found


def read_voc_segmentation(root: Path, num_classes: int | None) -> DatasetIndex:
    """``JPEGImages/`` with index PNGs in ``SegmentationClass/``; split by ``ImageSets``."""
    masks = root / "SegmentationClass"
    if not masks.is_dir():
        raise DataError(f"dataset {root} has no SegmentationClass/ directory (VOC segmentation)")
    notes = _Notes()
    pairs: dict[str, Sample] = {}
    for mask in sorted(masks.glob("*.png")):
        image = next(
            (root / "JPEGImages" / f"{mask.stem}{s}" for s in (".jpg", ".jpeg", ".png")
             if (root / "JPEGImages" / f"{mask.stem}{s}").is_file()),
            None,
        )  # fmt: skip
        if image is None:
            notes.add(f"{mask}: no image in JPEGImages")
            continue
        pairs[mask.stem] = Sample(image=image, mask=mask)
    train_ids = _voc_ids(root, "Segmentation", "train")
    val_ids = _voc_ids(root, "Segmentation", "val")
    train = [
        pairs[k] for k in (train_ids if train_ids is not None else sorted(pairs)) if k in pairs
    ]
    val = [pairs[k] for k in val_ids if k in pairs] if val_ids is not None else None
    classes = _mask_classes(root, train + (val or []), num_classes)
    return DatasetIndex(train, val or None, classes, str(root), notes.count, notes.items)


# -- semantic segmentation pairs --------------------------------------------------------------

MASK_DIRS = ("masks", "labels", "annotations", "SegmentationClass")


def read_mask_pairs(root: Path, num_classes: int | None) -> DatasetIndex:
    """``images/x.jpg`` with ``masks/x.png`` (one class index per pixel, 255 ignored), or
    the same under ``train/`` and ``val/``."""
    if not root.is_dir():
        raise DataError(f"dataset {root} is not a directory (images/ and masks/)")
    notes = _Notes()
    train_root, val_root = _split_dir(root, "train"), _split_dir(root, "val")
    train = _pairs(train_root or root, notes)
    val = _pairs(val_root, notes) if val_root is not None else None
    classes = _mask_classes(root, train + (val or []), num_classes)
    return DatasetIndex(train, val or None, classes, str(root), notes.count, notes.items)


def _pairs(base: Path, notes: _Notes) -> list[Sample]:
    images = base / "images"
    masks = next((base / d for d in MASK_DIRS if (base / d).is_dir()), None)
    if not images.is_dir() or masks is None:
        raise DataError(
            f"dataset {base} needs images/ and masks/ (one index PNG per image, same name)"
        )
    out = []
    for image in images_under(images):
        relative = image.relative_to(images).with_suffix(".png")
        mask = masks / relative
        if mask.is_file():
            out.append(Sample(image=image, mask=mask))
        else:
            notes.add(f"{image}: no mask {mask}")
    return out


def _mask_classes(root: Path, samples: list[Sample], num_classes: int | None) -> list[str]:
    """Class names from ``classes.txt``/``labels.txt``, else numClasses, else the masks' values."""
    for name in ("classes.txt", "labels.txt"):
        listing = root / name
        if listing.is_file():
            return [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if num_classes is not None:
        return [str(i) for i in range(num_classes)]
    import numpy as np  # noqa: PLC0415 - only when the masks must be scanned
    from PIL import Image  # noqa: PLC0415

    top = 0
    for sample in samples:
        assert sample.mask is not None
        with Image.open(sample.mask) as mask:
            values = np.unique(np.asarray(mask))
        values = values[values != IGNORE_INDEX]
        if values.size:
            top = max(top, int(values.max()))
    return [str(i) for i in range(top + 1)]
