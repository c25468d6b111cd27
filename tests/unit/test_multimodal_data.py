"""The multimodal trainer's data: the record forms, the messages a user gets for a bad record,
the five-sample rule, and the labels (the assistant's answer only) the model trains on."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import Idefics3Processor

from kubetrain.api import LLMConfig, Strategy, TrainingJobSpec
from kubetrain.trainer.config import ConfigError, RuntimeEnv
from kubetrain.trainer.lora.data import IGNORE, DataError
from kubetrain.trainer.lora.model import Precision
from kubetrain.trainer.multimodal.data import read_records, synthetic_records
from kubetrain.trainer.multimodal.features import Collator, Skip, encode, prepare
from kubetrain.trainer.multimodal.model import language_targets, load_base, random_processor
from kubetrain.trainer.multimodal.options import preflight
from tests.trainer.tiny_vlm import picture, spec, tiny_llava, tiny_qwen2_vl, write_dataset


@pytest.fixture(scope="module")
def processor() -> Idefics3Processor:
    return random_processor("idefics3-tiny")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    picture("red", "dot").save(tmp_path / "images" / "a.png")
    picture("blue", "bar").save(tmp_path / "images" / "b.png")
    return tmp_path


def jsonl(folder: Path, *rows: Any, name: str = "train.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(image: str = "images/a.png", answer: str = "A cat.") -> dict[str, Any]:
    return {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
    }


def test_both_forms_read_into_one_shape_with_images_beside_the_file(folder: Path) -> None:
    shorthand = {
        "images": ["images/a.png", "images/b.png"],
        "messages": [
            {"role": "user", "content": "<image>Compare with <image>."},
            {"role": "assistant", "content": "Red, then blue."},
        ],
    }
    records = read_records(jsonl(folder, chat(), "", shorthand))
    first, second = records.items
    assert first == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(folder / "images" / "a.png")},
                    {"type": "text", "text": "What?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
        ]
    }
    assert second["messages"][0]["content"] == [
        {"type": "image", "image": str(folder / "images" / "a.png")},
        {"type": "text", "text": "Compare with "},
        {"type": "image", "image": str(folder / "images" / "b.png")},
        {"type": "text", "text": "."},
    ]
    assert second["messages"][1]["content"] == [{"type": "text", "text": "Red, then blue."}]


def test_the_hub_form_puts_images_before_the_first_question(folder: Path) -> None:
    """The Cauldron's rows: images, and texts of user/assistant pairs, no placeholders."""
    row = {
        "images": [{"bytes": None, "path": "images/a.png"}],
        "texts": [
            {"user": "Colour?", "assistant": "Red."},
            {"user": "Shape?", "assistant": "A dot."},
        ],
    }
    (record,) = read_records(jsonl(folder, row)).items
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert [p["type"] for p in record["messages"][0]["content"]] == ["image", "text"]


def test_a_directory_reads_every_jsonl_file_under_it(folder: Path) -> None:
    jsonl(folder, chat(), name="a.jsonl")
    (folder / "more").mkdir()
    jsonl(folder / "more", chat("../images/b.png"), chat("../images/a.png"), name="b.jsonl")
    assert len(read_records(folder).items) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "{path}:2: not valid JSON"),
        (chat("images/missing.png"), "{path}:2: messages[0].content[0].image: images/missing.png "
         "does not exist (looked in {folder})"),
        ({"messages": chat()["messages"][:1]},
         "{path}:2: messages: no assistant turn, so nothing to train on"),
        ({"images": ["images/a.png"], "messages": [
            {"role": "user", "content": "<image> and <image>"},
            {"role": "assistant", "content": "x"}]},
         "{path}:2: images: 1 images for 2 <image> placeholders"),
        ({"messages": [{"role": "robot", "content": "hi"}]},
         "{path}:2: messages[0].role: must be one of system, user, assistant"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
         "{path}:2: no image in the record"),
        (chat("images/garbage.png"), "{path}:2: messages[0].content[0].image: images/garbage.png "
         "is not a readable image"),
        (chat("https://example.com/a.png"), "{path}:2: messages[0].content[0].image: "
         "https://example.com/a.png: only files on the dataset volume are supported"),
        ({"messages": "hello"}, "{path}:2: messages: a non-empty list of chat turns is required"),
    ],
)  # fmt: skip
def test_a_bad_record_fails_naming_the_file_line_and_field(
    folder: Path, line: Any, message: str
) -> None:
    (folder / "images" / "garbage.png").write_bytes(b"not a png")
    path = jsonl(folder, chat(), line)
    with pytest.raises(ConfigError) as caught:
        read_records(path)
    assert str(caught.value).startswith(message.format(path=path, folder=folder)), caught.value


def env(dataset: Path | None) -> RuntimeEnv:
    return RuntimeEnv(checkpoint_dir=Path("/tmp/unused"), output_dir=Path("/tmp/unused/out"),
                      dataset_path=dataset)  # fmt: skip


def test_preflight_needs_five_records_with_the_lora_trainers_message(folder: Path) -> None:
    path = jsonl(folder, chat(), chat(), chat())
    job = TrainingJobSpec.model_validate(spec())
    with pytest.raises(DataError) as caught:
        preflight(env(path), job)
    assert str(caught.value) == f"dataset {path} has 3 usable samples; at least 5 are required"
    assert len(preflight(env(jsonl(folder, *[chat()] * 5)), job).items) == 5


def test_preflight_refuses_another_model_type_and_an_unfetched_uri(folder: Path) -> None:
    llm = TrainingJobSpec.model_validate(spec() | {"modelType": "llm"})
    with pytest.raises(ConfigError, match="the multimodal trainer trains modelType multimodal"):
        preflight(env(folder), llm)
    remote = TrainingJobSpec.model_validate(spec() | {"dataset": {"uri": "s3://b/data/"}})
    with pytest.raises(ConfigError, match="s3://b/data/ was not fetched"):
        preflight(env(None), remote)


def test_synthetic_records_are_seeded_and_pass_the_checks() -> None:
    first, again = synthetic_records(8, seed=1), synthetic_records(8, seed=1)
    assert first.items == again.items and len(first.items) == 8
    job = TrainingJobSpec.model_validate(spec() | {"dataset": {"synthetic": {"samples": 6}}})
    assert len(preflight(env(None), job).items) == 6


def targets(processor: Idefics3Processor, example: dict[str, Any]) -> str:
    return str(processor.tokenizer.decode([t for t in example["labels"] if t != IGNORE]))


def test_only_the_assistants_answer_is_a_target(processor: Idefics3Processor, folder: Path) -> None:
    (record,) = read_records(jsonl(folder, chat(answer="a red dot."))).items
    example = encode(record, processor, 512)
    assert not isinstance(example, Skip)
    ids, labels = example["input_ids"], example["labels"]
    assert processor.tokenizer.decode(ids) == (
        "<s>User:<fake_token_around_image><global-img>" + "<image>" * 4
        + "<fake_token_around_image>What?<end_of_utterance>\n"
        + "Assistant:a red dot.<end_of_utterance>\n"
    )  # fmt: skip
    assert targets(processor, example) == "a red dot.<end_of_utterance>\n"
    answer = len(
        processor.tokenizer("a red dot.<end_of_utterance>\n", add_special_tokens=False)["input_ids"]
    )
    assert labels[:-answer] == [IGNORE] * (len(ids) - answer) and labels[-answer:] == ids[-answer:]
    assert example["pixel_values"].shape == (1, 1, 3, 32, 32)
    assert example["attention_mask"] == [1] * len(ids)


def test_every_assistant_turn_is_a_target_and_no_user_turn_is(
    processor: Idefics3Processor, folder: Path
) -> None:
    row = {
        "images": ["images/a.png"],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<image>Colour?"},
            {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "Shape?"},
            {"role": "assistant", "content": "A dot."},
        ],
    }
    (record,) = read_records(jsonl(folder, row)).items
    example = encode(record, processor, 512)
    assert not isinstance(example, Skip)
    assert targets(processor, example) == "Red.<end_of_utterance>\nA dot.<end_of_utterance>\n"


def test_truncation_never_cuts_an_image(processor: Idefics3Processor, folder: Path) -> None:
    (record,) = read_records(jsonl(folder, chat(answer="a rather long answer."))).items
    whole = encode(record, processor, 512)
    assert not isinstance(whole, Skip)
    length = len(whole["input_ids"])
    image_end = whole["input_ids"].index(processor.tokenizer.convert_tokens_to_ids("<image>")) + 4
    assert encode(record, processor, image_end - 1) is Skip.IMAGE_CUT
    # The image and the question fit, not a token of the answer.
    assert encode(record, processor, image_end + 3) is Skip.NO_TARGET
    cut = encode(record, processor, length - 5)
    assert not isinstance(cut, Skip)
    assert len(cut["input_ids"]) == len(cut["labels"]) == length - 5
    assert targets(processor, cut) == "a rather long answ"  # "er.<end_of_utterance>\n" cut

    kept = prepare([record, record], processor, image_end - 1)
    assert kept.records == [] and kept.skipped == {Skip.IMAGE_CUT: 2}
    assert kept.note() == "2 left out: an image's tokens would be cut by spec.llm.maxSeqLength"


def test_the_collator_pads_labels_and_joins_images_of_different_counts(
    processor: Idefics3Processor, tmp_path: Path
) -> None:
    data = write_dataset(tmp_path, 2)
    one, two = read_records(data).items
    two["messages"][0]["content"].insert(0, one["messages"][0]["content"][0])  # a second image
    examples = [encode(one, processor, 512), encode(two, processor, 512)]
    assert not any(isinstance(e, Skip) for e in examples)
    batch = Collator(processor.tokenizer.pad_token_id)(examples)  # type: ignore[arg-type]
    longest = max(len(e["input_ids"]) for e in examples)  # type: ignore[index]
    assert batch["input_ids"].shape == batch["labels"].shape == (2, longest)
    short = len(examples[0]["input_ids"])  # type: ignore[index]
    assert (batch["labels"][0, short:] == IGNORE).all()
    assert (batch["attention_mask"][0, short:] == 0).all()
    assert (batch["input_ids"][0, short:] == processor.tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert torch.count_nonzero(batch["pixel_values"][0, 1]) == 0  # a padding image, dropped
    assert batch["pixel_attention_mask"].shape == (2, 2, 32, 32)


def test_a_hub_parquet_file_with_embedded_images_reads_like_jsonl(tmp_path: Path) -> None:
    """A hub image dataset as the fetch stage stores it: image bytes inside the parquet rows."""
    encoded = io.BytesIO()
    picture("green", "square").save(encoded, format="PNG")
    rows = [
        {
            "images": [{"bytes": encoded.getvalue(), "path": f"{i}.png"}],
            "texts": [{"user": "What is it?", "assistant": "a green square.", "source": "t"}],
        }
        for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000.parquet")
    records = read_records(tmp_path, "parquet")
    assert len(records.items) == 5
    image = records.items[0]["messages"][0]["content"][0]
    assert image == {"type": "image", "image": encoded.getvalue()}

    rows[3]["images"] = [{"bytes": b"broken", "path": "3.png"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000.parquet")
    with pytest.raises(
        ConfigError, match=r"train-00000.parquet:4: images\[0\]: the embedded image"
    ):
        read_records(tmp_path)


@pytest.mark.parametrize(
    ("build", "answer"),
    [(tiny_qwen2_vl, "{}<|im_end|>\n"), (tiny_llava, " {}</s>")],  # as each template renders it
    ids=["qwen2-vl", "llava"],
)
def test_other_families_take_the_same_path(build: Any, answer: str, tmp_path: Path) -> None:
    """Qwen2-VL (flat patches, a grid per image, per-token type ids) and LLaVA (one tensor per
    image): the processor's own expansion, the answer as the only target, batches that run."""
    torch.manual_seed(0)
    model, processor = build()
    records = read_records(write_dataset(tmp_path, 3)).items
    examples = [encode(r, processor, 512) for r in records]
    assert not any(isinstance(e, Skip) for e in examples)
    text = records[0]["messages"][1]["content"][0]["text"]
    assert targets(processor, examples[0]) == answer.format(text)  # type: ignore[arg-type]
    batch = Collator(processor.tokenizer.pad_token_id)(examples)  # type: ignore[arg-type]
    assert torch.isfinite(model(**batch).loss)
    assert language_targets(model).startswith(r"model\.language_model\.")


def test_qlora_is_refused_on_cpu_and_an_unknown_preset_names_the_presets() -> None:
    fp32 = Precision("none", torch.float32)
    qlora = LLMConfig(base_model="random://idefics3-tiny", strategy=Strategy.QLORA)
    with pytest.raises(
        ConfigError, match=r"^spec\.llm\.strategy qlora needs a CUDA GPU; use lora on CPU$"
    ):
        load_base(qlora, fp32, seed=0, cuda=False)
    unknown = LLMConfig(base_model="random://idefics3-huge")
    with pytest.raises(
        ConfigError, match="choose one of random://idefics3-tiny, random://idefics3-small"
    ):
        load_base(unknown, fp32, seed=0, cuda=False)
