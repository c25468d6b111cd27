"""The trainer's view of its Pod: the spec from KUBETRAIN_CONFIG and the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetrain.trainer.config import ConfigError, Distributed, RuntimeEnv, load_spec, parse_spec

SPEC = {
    "modelType": "llm",
    "dataset": {"pvc": {"claimName": "data"}},
    "llm": {"baseModel": "org/model"},
}


def test_a_rendered_spec_parses_with_the_api_defaults() -> None:
    spec = parse_spec(json.dumps(SPEC, separators=(",", ":")))
    assert spec.llm is not None and spec.llm.base_model == "org/model"
    assert spec.checkpoint.keep_last == 3
    assert spec.effective_learning_rate() == 2e-4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "KUBETRAIN_CONFIG is not valid JSON"),
        ("[1, 2]", "KUBETRAIN_CONFIG must be a JSON object"),
        (
            json.dumps(SPEC | {"training": {"learningRate": 5}}),
            "invalid spec.training.learningRate: Input should be less than or equal to 0.1",
        ),
        (json.dumps({"dataset": SPEC["dataset"]}), "invalid spec.modelType: Field required"),
    ],
)
def test_bad_specs_fail_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        parse_spec(text)


def test_a_missing_spec_says_which_variable() -> None:
    with pytest.raises(ConfigError, match="KUBETRAIN_CONFIG is not set"):
        load_spec({})


def test_the_environment_a_pod_gets() -> None:
    env = RuntimeEnv.from_env(
        {
            "KUBETRAIN_CHECKPOINT_DIR": "/checkpoints",
            "KUBETRAIN_OUTPUT_DIR": "/checkpoints/output",
            "KUBETRAIN_DATASET_PATH": "/data/train.jsonl",
            "KUBETRAIN_JOB_NAME": "job",
            "POD_NAME": "job-worker-0",
            "POD_NAMESPACE": "team",
            "RESUME_FROM": "latest",
            "KUBETRAIN_REPORT_INTERVAL_SECONDS": "2.5",
        }
    )
    assert env.checkpoint_dir == Path("/checkpoints")
    assert env.dataset_path == Path("/data/train.jsonl")
    assert env.resume_from == ""  # "latest" and unset mean the same
    assert (env.pod_name, env.pod_namespace, env.report_interval) == ("job-worker-0", "team", 2.5)
    assert env.distributed == Distributed()


def test_defaults_outside_a_pod() -> None:
    env = RuntimeEnv.from_env(
        {"KUBETRAIN_CHECKPOINT_DIR": "/tmp/ck", "RESUME_FROM": "ckpt-00000010"}
    )
    assert env.output_dir == Path("/tmp/ck/output")
    assert env.resume_from == "ckpt-00000010"
    assert env.report_interval == 5.0 and env.pod_name is None


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "KUBETRAIN_CHECKPOINT_DIR is not set"),
        ({"KUBETRAIN_REPORT_INTERVAL_SECONDS": "soon"}, "is not a number"),
        ({"KUBETRAIN_REPORT_INTERVAL_SECONDS": "-1"}, "must be a finite number >= 0"),
        (
            {"WORLD_SIZE": "3", "NPROC_PER_NODE": "2"},
            "WORLD_SIZE=3 must equal NNODES=1 x NPROC_PER_NODE=2",
        ),
        (
            {"NNODES": "2", "NODE_RANK": "2", "WORLD_SIZE": "2"},
            "NODE_RANK=2 must be below NNODES=2",
        ),
        ({"NPROC_PER_NODE": "two"}, "NPROC_PER_NODE='two' is not an integer"),
    ],
)
def test_bad_environments_are_named(environ: dict[str, str], message: str) -> None:
    base = {"KUBETRAIN_CHECKPOINT_DIR": "/ck"} if environ else {}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RuntimeEnv.from_env(base | environ)


def test_operator_variables_for_the_second_pod_of_two_with_two_gpus_each() -> None:
    dist = Distributed.from_env(
        {"NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "2", "WORLD_SIZE": "4", "RANK": "2",
         "MASTER_ADDR": "job-worker-0.job-workers", "MASTER_PORT": "23456"}
    )  # fmt: skip
    assert (dist.world_size, dist.rank, dist.node_rank, dist.nproc_per_node) == (4, 2, 1, 2)
    assert dist.needs_launcher and not dist.is_main
    assert (dist.master_addr, dist.master_port) == ("job-worker-0.job-workers", 23456)


def test_a_process_started_by_a_launcher_uses_torchrun_variables() -> None:
    dist = Distributed.from_env(
        {"LOCAL_RANK": "1", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
         "NPROC_PER_NODE": "2", "NNODES": "2"}
    )  # fmt: skip
    assert dist.launched and not dist.needs_launcher
    assert (dist.rank, dist.local_rank, dist.node_rank, dist.nnodes) == (3, 1, 1, 2)
