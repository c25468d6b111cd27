"""The LoRA trainer's data: record kinds, loss masks, the split, and the messages a user
gets when the data cannot be trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from kubetrain.api import TrainingJobSpec
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.lora.data import (
    IGNORE,
    DataError,
    normalise,
    read_records,
    split,
    synthetic_records,
    tokenize,
)
from kubetrain.trainer.lora.options import LoraOptions, preflight
from tests.trainer.tiny import bpe_tokenizer, corpus, records


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return bpe_tokenizer(corpus(records(30)))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"text": "hello"}, {"text": "hello"}),
        ({"prompt": "2+2?", "completion": " 4"}, {"prompt": "2+2?", "completion": " 4"}),
        (
            {"instruction": "Add.", "input": "2 and 2", "output": "4"},
            {"prompt": "Add.\n\n2 and 2", "completion": "4"},
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "yo"},
                ]
            },
        ),
        ({"messages": [{"role": "user", "content": "no answer"}]}, None),
        ({"text": "   "}, None),
        ({"prompt": "p", "completion": ""}, None),
        ({"label": 1}, None),
        ([1, 2], None),
    ],
)
def test_record_kinds(entry: object, expected: dict[str, object] | None) -> None:
    assert normalise(entry) == expected


def test_losses_are_taken_on_text_completions_and_assistant_turns(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    rows = [
        {"text": "the red cat runs."},
        {"prompt": "what is 2 + 3?", "completion": " 5, the red cat says."},
        {"messages": [{"role": "user", "content": "name a small animal"},
                      {"role": "assistant", "content": "a small red cat."}]},
    ]  # fmt: skip
    text, completion, chat = tokenize(rows, tokenizer, max_length=64)
    eos = tokenizer.eos_token_id
    assert text["input_ids"][0] == tokenizer.bos_token_id and text["input_ids"][-1] == eos
    assert text["labels"] == text["input_ids"]
    prompt_length = len(tokenizer("what is 2 + 3?")["input_ids"])
    assert completion["labels"][:prompt_length] == [IGNORE] * prompt_length
    assert completion["labels"][prompt_length:] == completion["input_ids"][prompt_length:]
    decoded = tokenizer.decode([t for t in chat["labels"] if t != IGNORE])
    assert decoded.startswith("<|assistant|>\na small red cat.")
    assert "name a small animal" not in decoded


def test_a_chat_template_is_rendered_turn_by_turn(tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
    )
    try:
        conversation = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "name a small animal"},
            {"role": "assistant", "content": "a small red cat."},
        ]
        (chat,) = tokenize([{"messages": conversation}], tokenizer, max_length=128)
    finally:
        tokenizer.chat_template = None
    rendered = "[system] be brief</s>[user] name a small animal</s>[assistant] a small red cat.</s>"
    assert tokenizer.decode(chat["input_ids"]) == rendered
    target = tokenizer.decode([t for t in chat["labels"] if t != IGNORE])
    assert target == "[assistant] a small red cat.</s>"


def test_truncation_drops_samples_left_without_a_target(tokenizer: PreTrainedTokenizerFast) -> None:
    rows = [{"prompt": "what is 2 + 3? " * 10, "completion": " 5"}, {"text": "the red cat runs."}]
    examples = tokenize(rows, tokenizer, max_length=8)
    assert len(examples) == 1 and len(examples[0]["input_ids"]) == 8


def test_the_split_is_seeded_and_needs_ten_samples() -> None:
    examples = [{"input_ids": [i], "labels": [i]} for i in range(20)]
    train, held = split(examples, 0.1, seed=1)
    assert len(train) == 18 and len(held) == 2
    assert split(examples, 0.1, seed=1) == (train, held)
    assert split(examples[:9], 0.5, seed=1) == (examples[:9], [])


def test_reading_a_directory_of_jsonl_json_and_text(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\nnot json\n\n{"text": "two"}\n')
    (tmp_path / "b.json").write_text(json.dumps([{"prompt": "p", "completion": "c"}]))
    (tmp_path / "c.txt").write_text("line one\n\nline two\n")
    (tmp_path / "README.md").write_text("ignored")
    found = read_records(tmp_path)
    assert [next(iter(r.values())) for r in found.items] == [
        "one",
        "two",
        "p",
        "line one",
        "line two",
    ]
    assert found.unusable == 1 and found.notes == [f"{tmp_path / 'a.jsonl'}:2"]


def test_synthetic_data_is_the_same_for_the_same_seed() -> None:
    assert synthetic_records(8, 5).items == synthetic_records(8, 5).items
    assert synthetic_records(8, 5).items != synthetic_records(8, 6).items


def job(**dataset: object) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {"modelType": "llm", "dataset": dataset, "llm": {"baseModel": "random://llama-tiny"}}
    )


def env(tmp_path: Path, dataset: Path | None) -> RuntimeEnv:
    return RuntimeEnv(
        checkpoint_dir=tmp_path / "ck", output_dir=tmp_path / "out", dataset_path=dataset
    )


def test_preflight_rejects_small_missing_and_remote_data(tmp_path: Path) -> None:
    small = tmp_path / "train.jsonl"
    small.write_text('{"text": "a"}\n{"text": "b"}\n{"oops": 1}\n{"text": "c"}\n')
    pvc = job(pvc={"claimName": "data"})
    with pytest.raises(DataError) as err:
        preflight(env(tmp_path, small), pvc)
    assert str(err.value) == (
        f"dataset {small} has 3 usable samples; at least 5 are required (1 records are not text, "
        f"prompt/completion or chat messages, e.g. at {small}:3)"
    )
    with pytest.raises(DataError, match=f"^dataset {tmp_path / 'missing'} does not exist$"):
        preflight(env(tmp_path, tmp_path / "missing"), pvc)
    with pytest.raises(ConfigError, match="KUBETRAIN_DATASET_PATH is not set"):
        preflight(env(tmp_path, None), pvc)
    with pytest.raises(ConfigError, match="was not fetched: the operator"):
        preflight(env(tmp_path, None), job(uri="s3://bucket/train.jsonl"))
    with pytest.raises(DataError, match="format 'csv' is not supported"):
        preflight(env(tmp_path, small), job(pvc={"claimName": "data"}, format="csv"))
    assert len(preflight(env(tmp_path, None), job(synthetic={"samples": 12})).items) == 12
    missing_model = TrainingJobSpec.model_validate(
        {"modelType": "llm", "dataset": {"synthetic": {}}, "llm": {"baseModel": "/models/none"}}
    )
    with pytest.raises(ConfigError, match=r"^spec\.llm\.baseModel: /models/none is not a dir"):
        preflight(env(tmp_path, None), missing_model)


def test_trainer_options_from_the_environment() -> None:
    assert LoraOptions.from_env({}) == LoraOptions()
    options = LoraOptions.from_env({"KUBETRAIN_PACKING": "false", "KUBETRAIN_MERGE_ADAPTER": "yes"})
    assert (options.packing, options.merge_adapter) == (False, True)
    with pytest.raises(ConfigError, match=r"KUBETRAIN_VALIDATION_FRACTION=1\.5 must be in"):
        LoraOptions.from_env({"KUBETRAIN_VALIDATION_FRACTION": "1.5"})
