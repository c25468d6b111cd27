"""Training data for the multimodal trainer: conversations with images, read and checked.

A record is a chat whose turns hold text and images; images are files next to the JSONL
(paths relative to its directory) or encoded bytes (synthetic data, parquet from the hub).
Reading needs no ML library, so a bad record fails before torch is imported, naming the
file, the line and the field.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.lora.data import Record, Records

IMAGE_TOKEN = "<image>"
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".parquet")

ImageRef = str | bytes
"""An image: an absolute file path, or the encoded file (PNG, JPEG...) itself."""

__all__ = ["IMAGE_TOKEN", "ImageRef", "Record", "Records", "read_records", "synthetic_records"]


def read_records(path: Path, fmt: str | None = None) -> Records:
    """Every record of a JSONL (or parquet) file, or of every such file under a directory."""
    if fmt not in (None, "jsonl", "parquet"):
        raise ConfigError(
            f"spec.dataset.format {fmt} is not supported by the multimodal trainer; use jsonl "
            "(or parquet, as the hub stores image datasets)"
        )
    if not path.exists():
        raise ConfigError(f"dataset {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise ConfigError(f"dataset directory {path} has no .jsonl or .parquet files")
    else:
        files = [path]
    items: list[Record] = []
    for file in files:
        for line, entry in _entries(file):
            items.append(normalise(entry, file.parent, f"{file}:{line}"))
    return Records(items, str(path))


def _entries(file: Path) -> Iterator[tuple[int, Any]]:
    if file.suffix == ".parquet":
        yield from _parquet_rows(file)
        return
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read dataset file {file}: {err}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as err:
            raise ConfigError(f"{file}:{n}: not valid JSON ({err})") from None


def _parquet_rows(file: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a hub image dataset (as the fetch stage wrote it); rows count from 1."""
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]  # noqa: PLC0415 - parquet only
    except ImportError:
        raise ConfigError(
            f"{file}: reading parquet needs the pyarrow package in the trainer image"
        ) from None
    try:
        rows = pq.read_table(file).to_pylist()
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read dataset file {file}: {err}") from None
    yield from enumerate(rows, 1)


def normalise(entry: Any, root: Path, where: str) -> Record:
    """One record as ``{"messages": [{"role", "content": [parts]}]}`` with every image checked
    and resolved; a ConfigError at ``where`` (file:line) names the field otherwise."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: a record must be a JSON object")
    if "messages" not in entry and isinstance(entry.get("texts"), list):
        entry = {**entry, "messages": _texts_to_messages(entry["texts"], where)}
    raw = entry.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: messages: a non-empty list of chat turns is required")
    loose = entry.get("images", [])
    if not isinstance(loose, list):
        raise ConfigError(f"{where}: images: must be a list of image paths")
    shared = [_image(value, root, f"{where}: images[{i}]") for i, value in enumerate(loose)]
    messages = [_message(m, root, f"{where}: messages[{i}]") for i, m in enumerate(raw)]
    _place_images(messages, shared, where)
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(f"{where}: messages: no assistant turn, so nothing to train on")
    if not any(p["type"] == "image" for m in messages for p in m["content"]):
        raise ConfigError(f"{where}: no image in the record (images or an image content part)")
    return {"messages": messages}


def _texts_to_messages(texts: list[Any], where: str) -> list[dict[str, Any]]:
    """The Cauldron's ``texts: [{"user", "assistant"}]`` as chat turns."""
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(texts):
        if not isinstance(turn, dict) or not isinstance(turn.get("assistant"), str):
            raise ConfigError(f"{where}: texts[{i}]: needs user and assistant strings")
        messages.append({"role": "user", "content": str(turn.get("user") or "")})
        messages.append({"role": "assistant", "content": turn["assistant"]})
    return messages


def _message(raw: Any, root: Path, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("role") not in ROLES:
        raise ConfigError(f"{where}.role: must be one of {', '.join(ROLES)}")
    content = raw.get("content")
    if isinstance(content, str):
        return {"role": raw["role"], "content": _split_placeholders(content)}
    if not isinstance(content, list):
        raise ConfigError(f"{where}.content: must be a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.extend(_split_placeholders(part["text"]))
        elif kind == "image":
            value = part.get("image", part.get("path"))
            if value is None:  # a placeholder, filled from the record's images list
                parts.append({"type": "image", "image": None})
            else:
                parts.append({"type": "image", "image": _image(value, root, f"{at}.image")})
        else:
            raise ConfigError(f'{at}: must be {{"type": "text", "text"}} or {{"type": "image"}}')
    return {"role": raw["role"], "content": parts}


def _split_placeholders(text: str) -> list[dict[str, Any]]:
    """Text with ``<image>`` placeholders (the shorthand form) as text and image parts."""
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split(IMAGE_TOKEN)):
        if i:
            parts.append({"type": "image", "image": None})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _place_images(messages: list[dict[str, Any]], images: list[ImageRef], where: str) -> None:
    """Fill the placeholders from the record's ``images`` list, in order; with no placeholder
    at all, the images go before the first user turn's text (as the hub's datasets mean)."""
    holes = [p for m in messages for p in m["content"] if p["type"] == "image" and not p["image"]]
    if not holes and images:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise ConfigError(f"{where}: images: there is no user turn to put them in")
        first["content"][:0] = [{"type": "image", "image": image} for image in images]
        return
    if len(holes) != len(images):
        raise ConfigError(
            f"{where}: images: {len(images)} images for {len(holes)} {IMAGE_TOKEN} placeholders"
        )
    for hole, image in zip(holes, images, strict=True):
        hole["image"] = image


def _image(value: Any, root: Path, where: str) -> ImageRef:
    """A checked image: a path (relative to the dataset file's directory) or encoded bytes."""
    if isinstance(value, dict):  # the hub's image feature: {"bytes", "path"}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        _check_image(io.BytesIO(value), where, "the embedded image")
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be an image path")
    if "://" in value:
        raise ConfigError(f"{where}: {value}: only files on the dataset volume are supported")
    path = (root / value).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: {value} does not exist (looked in {root})")
    _check_image(path, where, value)
    return str(path)


def _check_image(source: Path | io.BytesIO, where: str, name: str) -> None:
    try:
        with Image.open(source) as image:  # reads the header only
            image.size  # noqa: B018 - the header parsed
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ConfigError(f"{where}: {name} is not a readable image ({err})") from None


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = ("square", "bar", "dot")


def synthetic_records(samples: int, seed: int, size: int = 32) -> Records:
    """Pictures of a coloured shape and a question about it, the same for the same seed:
    learnable only by looking at the image (demos, smoke tests)."""
    rng = random.Random(seed)
    items: list[Record] = []
    for _ in range(samples):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (size, size), (240, 240, 240))
        lo, hi = size // 4 + rng.randint(-2, 2), 3 * size // 4 + rng.randint(-2, 2)
        box = {"square": (lo, lo, hi, hi), "bar": (2, lo, size - 3, lo + 4)}.get(
            shape, (lo + 4, lo + 4, lo + 10, lo + 10)
        )
        image.paste(COLOURS[colour], box)
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        question = rng.choice(["What is in the picture?", "Describe the image."])
        items.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": encoded.getvalue()},
                            {"type": "text", "text": question},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": f"a {colour} {shape}."}],
                    },
                ]
            }
        )
    return Records(items, f"synthetic({samples} samples, seed {seed})")
