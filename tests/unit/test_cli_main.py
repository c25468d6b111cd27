"""The plugin's command line without a cluster: flags, offline estimates, error exits."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from kubetrain.cli.main import build_parser, main


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_connection_flags_go_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "a", "--kubeconfig", "k", "list", "--status", "running"])
    after = parser.parse_args(["list", "-n", "a", "--kubeconfig", "k", "--status", "running"])
    for args in (before, after):
        assert (args.namespace, args.kubeconfig, args.status) == ("a", "k", ["running"])
    assert parser.parse_args(["-n", "a", "watch", "-n", "b"]).namespace == "b"
    assert parser.parse_args(["watch", "-A"]).all_namespaces
    assert parser.parse_args(["resume", "x", "--from", "step-5"]).checkpoint == "step-5"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["list", "--sort", "size"], ["describe"], ["estimate"], ["frobnicate"]):
        with pytest.raises(SystemExit) as usage:
            main(argv)
        assert usage.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_estimate_without_a_cluster_uses_built_in_prices(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-kubeconfig")
    code, out, err = _run(
        "estimate", "--gpu-type", "a100", "--workers", "2", "--hours", "3", "--kubeconfig", missing
    )
    assert code == 0
    assert "Hourly:         $6.00" in out and "Total:          $18.00 for 3 h" in out
    assert err.startswith("warning: cannot load the Kubernetes configuration")
    code, out, _ = _run("estimate", "--gpu-type", "l4", "-o", "json", "--kubeconfig", missing)
    assert json.loads(out)["hourlyUSD"] == 0.8 and json.loads(out)["source"] == "defaults"
    code, out, _ = _run("estimate", "--gpu-type", "cpu", "-o", "yaml", "--kubeconfig", missing)
    assert yaml.safe_load(out)["billedUnits"] == 1


def test_an_unknown_gpu_type_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    code, out, err = _run("estimate", "--gpu-type", "tpu", "--kubeconfig", str(tmp_path / "x"))
    assert code == 1 and out == ""
    assert "error: gpuType: 'tpu' is not in the GPU catalogue (defaults); available: a100" in err


def _unreachable(tmp_path: Path) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_bad_filters_are_caught_before_any_request(tmp_path: Path) -> None:
    code, _, err = _run(
        "list", "--status", "running,sleeping", "--kubeconfig", _unreachable(tmp_path)
    )
    assert code == 2 and err.startswith("error: unknown status 'sleeping'")


def test_an_unreachable_cluster_is_one_line_of_error(tmp_path: Path) -> None:
    code, out, err = _run("describe", "llama", "--kubeconfig", _unreachable(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("error: cannot reach the Kubernetes API server") and err.count("\n") == 1
