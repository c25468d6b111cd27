"""A tiny Llama-style model and a BPE tokenizer trained in-process: offline, in seconds.

Shared by the LoRA trainer's tests. The corpus mixes the three record kinds the trainer
reads (text, prompt/completion, chat messages) and is learnable, so a few steps of
fine-tuning visibly lower the loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ("<s>", "</s>", "<pad>")
WORDS = ("red", "green", "blue", "small", "large", "cat", "dog", "bird", "runs", "sleeps", "sings")


def records(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` records cycling through text, prompt/completion and chat messages."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(count):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        colour, size = rng.choice(WORDS[:3]), rng.choice(WORDS[3:5])
        animal = rng.choice(WORDS[5:8])
        kind = i % 3
        if kind == 0:
            verb = rng.choice(WORDS[8:])
            out.append({"text": f"the {size} {colour} {animal} {verb}. {a} + {b} = {a + b}."})
        elif kind == 1:
            out.append(
                {
                    "prompt": f"what is {a} + {b}?",
                    "completion": f" {a + b}, the {colour} {animal} says.",
                }
            )
        else:
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": f"name a {size} animal"},
                        {"role": "assistant", "content": f"a {size} {colour} {animal}."},
                    ]
                }
            )
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def corpus(rows: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for row in rows:
        if "text" in row:
            texts.append(row["text"])
        elif "prompt" in row:
            texts.append(row["prompt"] + row["completion"])
        else:
            texts.extend(f"<|{m['role']}|>\n{m['content']}\n" for m in row["messages"])
    return texts


def bpe_tokenizer(texts: list[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (BOS added, like Llama's)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos = core.token_to_id("<s>")
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_tiny_model(directory: Path, texts: list[str], hidden: int = 32, seed: int = 0) -> Path:
    """Write a 2-layer Llama-style model and its tokenizer where ``from_pretrained`` finds them."""
    tokenizer = bpe_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
