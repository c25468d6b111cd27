"""The vision-language base model and its processor: loading (volume path, hub id or a random
preset) and adapters on the language model.

``random://<preset>`` builds a randomly initialised Idefics3 (a SigLIP-style vision tower,
a pixel-shuffle connector, a Llama text model) with a byte-level tokenizer and a small image
processor, deterministically from the seed and without any download: for demos, smoke
tests and throughput benchmarks.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PreTrainedModel,
    ProcessorMixin,
)

from kubetrain.api import LLMConfig
from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.lora.model import (
    RANDOM_SCHEME,
    Precision,
    base_source,
    byte_tokenizer,
    model_shape,
    open_base,
)
from kubetrain.trainer.metrics import ModelShape

IDEFICS3_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""SmolVLM's turn layout (``User:<image>question<end_of_utterance>``), without its system
prompt: what the random presets are trained with."""


@dataclasses.dataclass(frozen=True)
class Preset:
    """The shape of a random Idefics3: vision tower, text model, image size."""

    image_size: int
    patch_size: int
    vision: dict[str, int]
    text: dict[str, int]
    scale_factor: int = 2

    @property
    def image_seq_len(self) -> int:
        """Image tokens per image: patches, pixel-shuffled by the connector."""
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


RANDOM_PRESETS = {
    "idefics3-tiny": Preset(  # 32 px, 4 image tokens per image: tests on CPU in seconds
        image_size=32,
        patch_size=8,
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    ),
    "idefics3-small": Preset(  # 64 px, 16 image tokens per image: benchmarks
        image_size=64,
        patch_size=8,
        vision={
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
        },
        text={
            "hidden_size": 256,
            "intermediate_size": 768,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
        },
    ),
}
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_base(
    llm: LLMConfig,
    precision: Precision,
    *,
    seed: int,
    cuda: bool,
    attention: str = "sdpa",
    fetched: Path | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The base model and its processor, ready for adapters: from ``fetched`` (the fetch
    stage's copy of spec.llm.baseModel in the cache) when there is one."""
    source = base_source(llm, fetched)
    model, processor = open_base(
        source,
        llm.strategy,
        precision,
        seed=seed,
        cuda=cuda,
        attention=attention,
        random=random_model,
        pretrained=_pretrained,
        trainer="multimodal",
        loads_as="an image-text-to-text model",
    )
    tokenizer: Any = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"spec.llm.baseModel {source}: its processor has no tokenizer")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False
    return model, processor


def _pretrained(name: str, kwargs: dict[str, Any]) -> tuple[PreTrainedModel, ProcessorMixin]:
    processor = AutoProcessor.from_pretrained(name)  # type: ignore[no-untyped-call]
    model = cast(PreTrainedModel, AutoModelForImageTextToText.from_pretrained(name, **kwargs))
    return model, cast(ProcessorMixin, processor)


def random_model(
    preset: str, seed: int, dtype: torch.dtype = torch.float32, attention: str = "sdpa"
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A seeded, randomly initialised Idefics3 and its processor, built in code."""
    shape = RANDOM_PRESETS.get(preset)
    if shape is None:
        raise ConfigError(
            f"spec.llm.baseModel {RANDOM_SCHEME}{preset}: unknown preset; "
            f"choose one of {', '.join(RANDOM_SCHEME + p for p in RANDOM_PRESETS)}"
        )
    processor = random_processor(preset)
    tokenizer = processor.tokenizer
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = Idefics3Config(
        vision_config={
            **shape.vision,
            "image_size": shape.image_size,
            "patch_size": shape.patch_size,
        },
        text_config={
            "model_type": "llama",
            **shape.text,
            **ids,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
        },
        scale_factor=shape.scale_factor,
        image_token_id=int(tokenizer.convert_tokens_to_ids("<image>")),
        tie_word_embeddings=False,
    )
    config._attn_implementation = attention
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.to(dtype=dtype)  # type: ignore[call-arg]  # transformers' decorator hides the signature
    model.config._name_or_path = f"{RANDOM_SCHEME}{preset}"
    return model, processor


def random_processor(preset: str) -> Idefics3Processor:
    """The processor of a random preset: a byte-level tokenizer with Idefics3's image tokens
    and a chat template, and an image processor at the preset's size (no tiling)."""
    shape = RANDOM_PRESETS[preset]
    tokenizer = byte_tokenizer(IDEFICS3_TOKENS)
    images = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": shape.image_size},
        max_image_size={"longest_edge": shape.image_size},
    )
    return Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=shape.image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )


def language_targets(model: nn.Module) -> str:
    """LoRA targets on the language model only (its attention and MLP projections), as a
    regular expression over module names: the vision tower and the connector stay frozen."""
    decoder = cast(PreTrainedModel, model).get_decoder()  # type: ignore[no-untyped-call]
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    linear = {n.rsplit(".", 1)[-1] for n, m in decoder.named_modules() if isinstance(m, nn.Linear)}
    names = sorted(linear & set(LANGUAGE_PROJECTIONS)) or sorted(linear)
    if not names:
        raise ConfigError("the base model's language model has no linear layers to adapt")
    return (
        rf"{re.escape(prefix)}\..*\.({'|'.join(names)})" if prefix else rf".*\.({'|'.join(names)})"
    )


def vlm_shape(model: nn.Module) -> ModelShape:
    """Parameter counts for the FLOPs estimate, with the text model's depth and width."""
    shape = model_shape(model)
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None else None
    return dataclasses.replace(
        shape,
        layers=int(getattr(text, "num_hidden_layers", 0) or 0),
        hidden=int(getattr(text, "hidden_size", 0) or 0),
    )
