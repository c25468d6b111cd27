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


def tiny_qwen2_vl() -> tuple[Any, Any]:
    """A random Qwen2-VL (patches of 8 px, merged 2 by 2) and its processor, built in code."""
    from transformers import (  # noqa: PLC0415 - torch, only for the tests that use it
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from kubetrain.trainer.lora.model import byte_tokenizer  # noqa: PLC0415 - as above

    tokenizer = byte_tokenizer(("<|image_pad|>", "<|vision_start|>", "<|vision_end|>",
                                "<|video_pad|>", "<|im_start|>", "<|im_end|>"))  # fmt: skip
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% else %}{{ p['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    images = Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=64 * 64, patch_size=8)
    processor = Qwen2VLProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=template,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2,
                     "vocab_size": len(tokenizer),
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2,
                       "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )  # fmt: skip
    return Qwen2VLForConditionalGeneration(config), processor


def tiny_llava() -> tuple[Any, Any]:
    """A random LLaVA (a CLIP tower on 32 px images, 17 image tokens) and its processor."""
    from transformers import (  # noqa: PLC0415 - torch, only for the tests that use it
        CLIPImageProcessor,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from kubetrain.trainer.lora.model import byte_tokenizer  # noqa: PLC0415 - as above

    tokenizer = byte_tokenizer(("<image>",))
    template = (
        "{% for m in messages %}{{ m['role'].upper() }}: {% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<image>\n{% else %}{{ p['text'] }}{% endif %}{% endfor %}"
        "{% if m['role'] == 'assistant' %}</s>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="full", chat_template=template,
                               num_additional_image_tokens=1)  # fmt: skip
    config = LlavaConfig(
        text_config={"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "vocab_size": len(tokenizer)},
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32,
                       "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1,
    )  # fmt: skip
    return LlavaForConditionalGeneration(config), processor
