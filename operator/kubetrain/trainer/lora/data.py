"""Training data for the LoRA trainer: read, check, tokenise and split.

Records are JSON objects of one of three kinds: ``{"text"}``, ``{"prompt", "completion"}``
(also ``instruction``/``input``/``output``) or ``{"messages": [{"role", "content"}]}``.
Reading and counting need no ML library, so a dataset that is missing or too small fails
before torch is imported. Loss is computed on the text, the completion, or the assistant
turns.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubetrain.trainer.runtime import TrainerError

MIN_SAMPLES = 5
IGNORE = -100
SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".txt": "text"}
SUPPORTED_FORMATS = ("jsonl", "json", "text")

Record = dict[str, Any]
Example = dict[str, list[int]]
T = TypeVar("T")


class DataError(TrainerError):
    """The dataset is missing, unreadable or too small; the message says which and why."""


@dataclass(frozen=True)
class Records:
    """Normalised records from one source, and how many of its entries were unusable."""

    items: list[Record]
    source: str
    unusable: int = 0
    notes: list[str] = field(default_factory=list)


def read_records(path: Path, fmt: str | None = None) -> Records:
    """Read a dataset file, or every data file of a directory (sorted), into records."""
    if fmt is not None and fmt not in SUPPORTED_FORMATS:
        raise DataError(
            f"dataset format {fmt!r} is not supported by the LoRA trainer; "
            f"use one of {', '.join(SUPPORTED_FORMATS)}"
        )
    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"dataset directory {path} has no .jsonl, .json or .txt files")
    else:
        files = [path]
    items: list[Record] = []
    unusable = 0
    notes: list[str] = []
    for file in files:
        kind = fmt or SUFFIXES.get(file.suffix, "jsonl")
        try:
            raw = _read_file(file, kind)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise DataError(f"cannot read dataset file {file}: {err}") from None
        for where, entry in raw:
            record = normalise(entry)
            if record is None:
                unusable += 1
                if len(notes) < 3:
                    notes.append(f"{file}:{where}")
            else:
                items.append(record)
    return Records(items, str(path), unusable, notes)


def _read_file(path: Path, kind: str) -> list[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if kind == "text":
        return [(n, {"text": line}) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if kind == "json":
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
        return list(enumerate(rows, 1))
    entries: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append((n, json.loads(line)))
            except ValueError:
                entries.append((n, None))
    return entries


def normalise(entry: Any) -> Record | None:
    """One record in canonical form, or None when it is none of the supported kinds."""
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("messages"), list):
        messages = [
            {"role": m["role"], "content": m["content"]}
            for m in entry["messages"]
            if isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ]
        ok = len(messages) == len(entry["messages"]) and any(
            m["role"] == "assistant" for m in messages
        )
        return {"messages": messages} if ok else None
    prompt, completion = entry.get("prompt"), entry.get("completion")
    if "instruction" in entry and "output" in entry:
        extra = entry.get("input") or ""
        prompt = f"{entry['instruction']}\n\n{extra}" if extra else entry["instruction"]
        completion = entry["output"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return {"prompt": prompt, "completion": completion} if completion.strip() else None
    text = entry.get("text")
    if isinstance(text, str) and text.strip():
        return {"text": text}
    return None


def synthetic_records(samples: int, seed: int) -> Records:
    """A small, learnable arithmetic corpus, the same for the same seed (demos, smoke tests)."""
    rng = random.Random(seed)
    items: list[Record] = []
    for _ in range(samples):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        items.append({"text": f"{a} plus {b} is {a + b}. {b} plus {a} is {a + b}."})
    return Records(items, f"synthetic({samples} samples, seed {seed})")


def require_enough(count: int, source: str, note: str = "", minimum: int = MIN_SAMPLES) -> None:
    """Fail with a clear message when fewer than ``minimum`` samples can be trained on."""
    if count < minimum:
        extra = f" ({note})" if note else ""
        raise DataError(
            f"dataset {source} has {count} usable samples; at least {minimum} are required{extra}"
        )


def unusable_note(records: Records) -> str:
    """Why records were left out, with the first places, for the too-few-samples message."""
    if not records.unusable:
        return ""
    return (
        f"{records.unusable} records are not text, prompt/completion or chat messages, "
        f"e.g. at {', '.join(records.notes)}"
    )


class Tokenizer(Protocol):
    """The part of a transformers tokenizer the data pipeline uses."""

    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None

    def __call__(self, text: str, *, add_special_tokens: bool = ...) -> Any: ...

    def apply_chat_template(
        self, conversation: list[dict[str, str]], *, tokenize: bool = ...
    ) -> Any: ...


def tokenize(records: list[Record], tokenizer: Tokenizer, max_length: int) -> list[Example]:
    """Token ids and labels (-100: no loss) per record; drops those left without a target."""
    examples: list[Example] = []
    for record in records:
        if "messages" in record:
            ids, labels = _chat(record["messages"], tokenizer)
        elif "prompt" in record:
            prompt = _ids(tokenizer, record["prompt"], first=True)
            completion = _ids(tokenizer, record["completion"], first=False) + _eos(tokenizer)
            ids, labels = prompt + completion, [IGNORE] * len(prompt) + completion
        else:
            ids = _ids(tokenizer, record["text"], first=True) + _eos(tokenizer)
            labels = list(ids)
        ids, labels = ids[:max_length], labels[:max_length]
        if any(label != IGNORE for label in labels[1:]):
            examples.append({"input_ids": ids, "labels": labels})
    return examples


def _ids(tokenizer: Tokenizer, text: str, *, first: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


def _eos(tokenizer: Tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _chat(messages: list[dict[str, str]], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Render turn by turn, so each turn's tokens are known and only the assistant's are targets."""
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if tokenizer.chat_template:
            text = str(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
            if not text.startswith(rendered):  # a template that rewrites earlier turns
                whole = _ids(tokenizer, text, first=False)
                return whole, list(whole)
            piece, rendered = text[len(rendered) :], text
            segment = _ids(tokenizer, piece, first=False)
        else:
            segment = _ids(
                tokenizer, f"<|{message['role']}|>\n{message['content']}\n", first=i == 0
            )
            if message["role"] == "assistant":
                segment += _eos(tokenizer)
        ids += segment
        labels += segment if message["role"] == "assistant" else [IGNORE] * len(segment)
    return ids, labels


def split(examples: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """A seeded train/validation split; no validation set below 10 samples or at fraction 0."""
    count = int(len(examples) * fraction) if len(examples) >= 10 else 0
    if count == 0:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]
