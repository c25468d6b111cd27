"""Conversations with images as model inputs: the processor's tokens and pixels, and labels on
the assistant turns only.

The model's own processor renders the chat template, expands each image into its tokens
and resizes or tiles the image. Labels are the token ids inside the assistant turns (as
the template renders them after the generation prompt) and -100 elsewhere: system and user
turns, image tokens, padding. A sample longer than spec.llm.maxSeqLength is cut at that
length only if every image's tokens end before the cut; otherwise it is left out (and
counted), because a model cannot take an image whose tokens were cut.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import ProcessorMixin

from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.lora.data import IGNORE, Record
from kubetrain.trainer.multimodal.data import ImageRef
from kubetrain.trainer.runtime import TrainerError

Example = dict[str, Any]
PER_TOKEN = ("attention_mask", "mm_token_type_ids", "token_type_ids")
TEXT_ONLY = ("input_ids", "offset_mapping", "text_replacement_offsets", *PER_TOKEN)


class Skip(StrEnum):
    """Why a record cannot be trained on."""

    IMAGE_CUT = "an image's tokens would be cut by spec.llm.maxSeqLength"
    NO_TARGET = "no assistant tokens within spec.llm.maxSeqLength"


def load_image(ref: ImageRef) -> Image.Image:
    """An image file or encoded bytes, as RGB."""
    with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as image:
        return image.convert("RGB")


def encode(record: Record, processor: ProcessorMixin, max_length: int) -> Example | Skip:
    """One record's model inputs: token ids, labels, attention mask and image tensors."""
    messages = record["messages"]
    conversation = [
        {"role": m["role"], "content": [_template_part(p) for p in m["content"]]} for m in messages
    ]
    full, spans = _assistant_spans(processor, conversation)
    images = [
        load_image(p["image"]) for m in messages for p in m["content"] if p["type"] == "image"
    ]
    out = processor(
        text=[full],
        images=images,
        return_offsets_mapping=True,
        return_text_replacement_offsets=True,
        add_special_tokens=False,  # the chat template writes the special tokens it wants
    )
    ids = list(out["input_ids"][0])
    offsets = [tuple(o) for o in out["offset_mapping"][0]]
    replaced = out.get("text_replacement_offsets")
    if replaced is None:
        raise TrainerError(
            f"the processor {type(processor).__name__} does not report where image tokens are; "
            "the multimodal trainer cannot mask them"
        )
    placed = [r for r in replaced[0] if r["type"] == "image"]
    image_chars = [tuple(r["new_span"]) for r in placed]
    targets = [(_moved(a, placed), _moved(b, placed)) for a, b in spans]
    labels: list[int] = []
    last_image = -1
    for t, (start, end) in enumerate(offsets):
        if any(a <= start < b for a, b in image_chars):
            last_image = t
            labels.append(IGNORE)
        elif end > start and any(a <= start < b for a, b in targets):
            labels.append(ids[t])
        else:
            labels.append(IGNORE)
    if len(ids) > max_length and last_image >= max_length:
        return Skip.IMAGE_CUT
    if not any(label != IGNORE for label in labels[1:max_length]):
        return Skip.NO_TARGET
    example: Example = {"input_ids": ids[:max_length], "labels": labels[:max_length]}
    for key in PER_TOKEN:
        if key in out:
            example[key] = list(out[key][0])[:max_length]
    for key, value in out.items():
        if key not in TEXT_ONLY and value is not None:
            example[key] = (
                value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
            )
    return example


def _template_part(part: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image"} if part["type"] == "image" else {"type": "text", "text": part["text"]}


def _render(processor: ProcessorMixin, messages: list[dict[str, Any]], generation: bool) -> str:
    if not messages:
        return ""
    try:
        return str(
            processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
        )
    except ValueError as err:  # no chat template
        raise ConfigError(
            f"spec.llm.baseModel: the processor cannot render a conversation: {err}"
        ) from None


def _assistant_spans(
    processor: ProcessorMixin, messages: list[dict[str, Any]]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and where each assistant turn's answer is in it (after the
    generation prompt, through the end-of-turn token)."""
    full = _render(processor, messages, False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(processor, messages[:i], True)
        if not full.startswith(before):  # a template whose generation prompt differs
            before = _render(processor, messages[:i], False)
        through = _render(processor, messages[: i + 1], False)
        if not (full.startswith(before) and full.startswith(through)):
            raise TrainerError(
                "the base model's chat template rewrites earlier turns, so the assistant turns "
                "cannot be told apart; use a model whose template renders turn by turn"
            )
        spans.append((len(before), len(through)))
    return full, spans


def _moved(position: int, replaced: list[dict[str, Any]]) -> int:
    """A position in the rendered text, in the text after image placeholders were expanded."""
    shift = 0
    for r in replaced:
        start, end = r["span"]
        if end <= position:
            new_start, new_end = r["new_span"]
            shift += (new_end - new_start) - (end - start)
    return position + shift


@dataclass(frozen=True)
class Prepared:
    """The records that can be trained on, and what was left out and why."""

    records: list[Record]
    skipped: Counter[Skip]
    mean_length: float

    def note(self) -> str:
        return "; ".join(f"{count} left out: {why}" for why, count in self.skipped.items())


def prepare(records: Sequence[Record], processor: ProcessorMixin, max_length: int) -> Prepared:
    """Encode every record once: keeps those that fit, counts the others by reason."""
    kept: list[Record] = []
    skipped: Counter[Skip] = Counter()
    tokens = 0
    for record in records:
        example = encode(record, processor, max_length)
        if isinstance(example, Skip):
            skipped[example] += 1
        else:
            kept.append(record)
            tokens += len(example["input_ids"])
    return Prepared(kept, skipped, tokens / max(len(kept), 1))


class Conversations(torch.utils.data.Dataset[Example]):
    """Records encoded on access, so images are decoded and processed batch by batch."""

    def __init__(self, records: list[Record], processor: ProcessorMixin, max_length: int) -> None:
        self.records, self.processor, self.max_length = records, processor, max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        example = encode(self.records[index], self.processor, self.max_length)
        assert not isinstance(example, Skip), "prepare() kept only records that encode"
        return example


@dataclass(frozen=True)
class Collator:
    """Right-pads token fields (labels with -100) and joins the image tensors of a batch."""

    pad_token_id: int

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        pads = {"input_ids": self.pad_token_id, "labels": IGNORE}
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [e[key] for e in examples]
            if key in pads or key in PER_TOKEN:
                fill = pads.get(key, 0)
                batch[key] = torch.tensor([v + [fill] * (longest - len(v)) for v in values])
            else:
                batch[key] = join_images(values)
        return batch


def join_images(values: list[torch.Tensor]) -> torch.Tensor:
    """Image tensors of several samples as one: concatenated along the first dimension, the
    others zero-padded to the largest (Idefics3 drops all-zero padding images)."""
    if len({v.shape[1:] for v in values}) == 1:
        return torch.cat(values)
    if len({v.dim() for v in values}) != 1:
        raise TrainerError("the processor's image tensors differ in rank between samples")
    biggest = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for v in values:
        widths: list[int] = []
        for d in reversed(range(1, v.dim())):
            widths += [0, biggest[d - 1] - v.shape[d]]
        padded.append(torch.nn.functional.pad(v, widths))
    return torch.cat(padded)
