"""A small image-question dataset on disk (JSONL beside PNG files) for the multimodal trainer.

The answer names the colour and shape drawn in the picture, so it can only be learnt by
looking; records alternate between the content-list form and the ``<image>`` shorthand.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}
SHAPES = {"square": (8, 8, 24, 24), "bar": (2, 12, 30, 18), "dot": (12, 12, 19, 19)}


def picture(colour: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    image.paste(COLOURS[colour], SHAPES[shape])
    return image


def write_dataset(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` records in ``root/train.jsonl`` with their pictures in ``root/images``."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for i in range(count):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(list(SHAPES))
        name = f"images/{i:03d}.png"
        picture(colour, shape).save(root / name)
        answer = f"a {colour} {shape}."
        if i % 2:
            rows.append(
                {
                    "images": [name],
                    "messages": [
                        {"role": "user", "content": "<image>What is this?"},
                        {"role": "assistant", "content": answer},
                    ],
                }
            )
        else:
            rows.append(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image", "image": name},
                                {"type": "text", "text": "What is in the picture?"},
                            ],
                        },
                        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
                    ]
                }
            )
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def spec(**training: Any) -> dict[str, Any]:
    """A small multimodal spec: 2 epochs of 9 steps on 36 training samples (4 held out)."""
    return {
        "modelType": "multimodal",
        "dataset": {"pvc": {"claimName": "data"}, "format": "jsonl"},
        "llm": {
            "baseModel": "random://idefics3-tiny",
            "maxSeqLength": 96,
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.1},
        },
        "training": {
            "epochs": 2,
            "batchSize": 4,
            "learningRate": 0.01,
            "seed": 3,
            "warmupSteps": 2,
            "weightDecay": 0.01,
            **training,
        },
        "checkpoint": {"intervalSteps": 4, "keepLast": 2},
    }
