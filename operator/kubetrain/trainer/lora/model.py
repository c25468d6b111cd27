"""The base model and its adapters: loading (volume path, hub id or a random preset), LoRA/QLoRA.

``random://<preset>`` builds a randomly initialised Llama-shaped model with a byte-level
tokenizer, deterministically from the seed and without any download: for demos, smoke
tests and throughput benchmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from kubetrain.api import LLMConfig, Strategy
from kubetrain.trainer.config import ConfigError
from kubetrain.trainer.metrics import ModelShape
from kubetrain.trainer.runtime import TrainerError

log = logging.getLogger(__name__)

RANDOM_SCHEME = "random://"
RANDOM_PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
    },
    "llama-small": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "vocab_size": 2048,
    },
    "llama-1b": {  # the shape of Llama 3.2 1B
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
}
UNSUPPORTED_SCHEMES = ("s3://", "gs://", "https://", "http://")


@dataclass(frozen=True)
class Precision:
    """How weights are stored and computed: the spec's choice, settled for this device."""

    name: str  # "bf16", "fp16" or "none"
    base_dtype: torch.dtype

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def fp16(self) -> bool:
        return self.name == "fp16"


def settle_precision(requested: str, strategy: Strategy, cuda: bool) -> Precision:
    """The precision this device can run: mixed precision needs a GPU (fp32 on CPU, warned)."""
    if requested != "none" and not cuda:
        log.warning("mixedPrecision %s needs a GPU; training in fp32 on the CPU", requested)
        requested = "none"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "spec.optimization.mixedPrecision bf16 is not supported by this GPU; use fp16"
        )
    # Frozen base weights can live in 16 bits; trained weights stay fp32 under autocast.
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": torch.float32}
    base = dtypes[requested] if strategy is not Strategy.FULL else torch.float32
    return Precision(requested, base)


def load_base(
    llm: LLMConfig,
    precision: Precision,
    *,
    seed: int,
    cuda: bool,
    attention: str = "sdpa",
    fetched: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model and its tokenizer, ready for adapters: from ``fetched`` (the fetch
    stage's copy of spec.llm.baseModel in the cache) when there is one."""
    model, tokenizer = open_base(
        base_source(llm, fetched),
        llm.strategy,
        precision,
        seed=seed,
        cuda=cuda,
        attention=attention,
        random=random_model,
        pretrained=_pretrained,
        trainer="LoRA",
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer


def base_source(llm: LLMConfig, fetched: Path | None) -> str:
    """Where the base model comes from: the fetched copy when there is one, else the spec's."""
    return str(fetched) if fetched is not None else llm.base_model


Parts = TypeVar("Parts")


def open_base(
    source: str,
    strategy: Strategy,
    precision: Precision,
    *,
    seed: int,
    cuda: bool,
    attention: str,
    random: Callable[[str, int, torch.dtype, str], tuple[PreTrainedModel, Parts]],
    pretrained: Callable[[str, dict[str, Any]], tuple[PreTrainedModel, Parts]],
    trainer: str,
    loads_as: str = "",
) -> tuple[PreTrainedModel, Parts]:
    """A base model and what goes with it (tokenizer, processor): ``random(preset, seed, dtype,
    attention)`` for ``random://<preset>``, else ``pretrained(name, from_pretrained kwargs)``
    for a path or hub id, 4-bit for qlora. Errors name the ``trainer`` and, when loading
    fails, what the model had to load as (``loads_as``)."""
    quantization = four_bit(precision, cuda) if strategy is Strategy.QLORA else None
    if source.startswith(RANDOM_SCHEME):
        if quantization is not None:
            raise ConfigError(f"spec.llm.baseModel {source}: qlora needs a pretrained model")
        return random(source[len(RANDOM_SCHEME) :], seed, precision.base_dtype, attention)
    if source.startswith(UNSUPPORTED_SCHEMES):
        raise ConfigError(
            f"spec.llm.baseModel {source}: this scheme is not supported by the {trainer} "
            "trainer; put the model on a volume (a path) or use a Hugging Face Hub id"
        )
    name = source.removeprefix("hf://")
    kwargs: dict[str, Any] = {"dtype": precision.base_dtype, "attn_implementation": attention}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        return pretrained(name, kwargs)
    except (OSError, ValueError) as err:
        where = "path" if Path(name).is_absolute() else "model"
        raise TrainerError(
            f"cannot load base {where} {name}{f' as {loads_as}' if loads_as else ''}: "
            f"{' '.join(str(err).split())[:400]}"
        ) from None


def _pretrained(
    name: str, kwargs: dict[str, Any]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(name)
    return cast(PreTrainedModel, AutoModelForCausalLM.from_pretrained(name, **kwargs)), tokenizer


def four_bit(precision: Precision, cuda: bool) -> Any:
    """4-bit NF4 quantisation of the frozen base (QLoRA): needs a GPU and bitsandbytes."""
    if not cuda:
        raise ConfigError("spec.llm.strategy qlora needs a CUDA GPU; use lora on CPU")
    try:
        import bitsandbytes  # noqa: F401, PLC0415 - present or not
    except ImportError:
        raise ConfigError(
            "spec.llm.strategy qlora needs the bitsandbytes package in the trainer image"
        ) from None
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if precision.bf16 else torch.float16,
    )


def random_model(
    preset: str, seed: int, dtype: torch.dtype = torch.float32, attention: str = "sdpa"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A seeded, randomly initialised Llama-shaped model and a byte-level tokenizer."""
    if preset not in RANDOM_PRESETS:
        raise ConfigError(
            f"spec.llm.baseModel {RANDOM_SCHEME}{preset}: unknown preset; "
            f"choose one of {', '.join(RANDOM_SCHEME + p for p in RANDOM_PRESETS)}"
        )
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        **RANDOM_PRESETS[preset],
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attention
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.to(dtype=dtype)  # type: ignore[call-arg]  # transformers' decorator hides the signature
    model.config._name_or_path = f"{RANDOM_SCHEME}{preset}"
    return model, tokenizer


def byte_tokenizer(extra_specials: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per byte plus <s>, </s>, <pad> and ``extra_specials`` (each
    one token, e.g. a vision-language model's <image>): no training, no download."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    for special in ("<s>", "</s>", "<pad>", *extra_specials):
        vocab[special] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        **({"extra_special_tokens": list(extra_specials)} if extra_specials else {}),
    )


def add_adapters(
    model: PreTrainedModel,
    llm: LLMConfig,
    *,
    gradient_checkpointing: bool,
    default_targets: str | list[str] | None = None,
) -> nn.Module:
    """Wrap the model with LoRA adapters (lora, qlora) or leave every weight trainable (full).

    Adapters go on spec.llm.lora.targetModules, else on ``default_targets`` (peft's list or
    regular expression), else on peft's default for the architecture."""
    lora = llm.effective_lora()
    if lora is None:
        return model
    named = list(lora.target_modules)
    if named:
        check_target_modules(model, named, llm.base_model)
    targets = named or default_targets
    if llm.strategy is Strategy.QLORA:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # e.g. no default target modules for this architecture
        raise ConfigError(f"spec.llm.lora: {' '.join(str(err).split())[:400]}") from None


def check_target_modules(model: nn.Module, targets: list[str], base: str) -> None:
    """Fail fast, naming the module, when a LoRA target does not exist in the base model."""
    if targets == ["all-linear"]:
        return
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    unknown = [t for t in targets if t not in names]
    if unknown:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(
            f"spec.llm.lora.targetModules: {', '.join(unknown)} not found in {base}; "
            f"its linear modules are: {', '.join(linear)}"
        )


def model_shape(model: nn.Module) -> ModelShape:
    """Parameter counts and dimensions for the FLOPs-per-token estimate (MFU)."""
    frozen = trained = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            count = module.weight.numel()
            if module.weight.requires_grad:
                trained += count
            else:
                frozen += count
    config = getattr(model, "config", None)
    return ModelShape(
        frozen_matmul_params=frozen,
        trained_matmul_params=trained,
        layers=int(getattr(config, "num_hidden_layers", 0) or 0),
        hidden=int(getattr(config, "hidden_size", 0) or 0),
    )
