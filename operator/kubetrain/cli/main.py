"""``kubectl-train``: the kubectl plugin (``kubectl train ...``) over the Python SDK.

kubectl hands a plugin every argument after its name, so the connection flags
(``--kubeconfig``, ``--context``, ``-n``, ``-A``) are accepted before or after the command.
Exit codes: 0 success, 1 an error (printed as ``error: ...``), 2 bad usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from kubetrain.api import Priority
from kubetrain.cli import commands
from kubetrain.sdk import Client, KubetrainError, ValidationError
from kubetrain.sdk.cost import CONFIG_MAP, CONFIG_NAMESPACE
from kubetrain.sdk.download import DEFAULT_IMAGE as DOWNLOAD_IMAGE
from kubetrain.sdk.query import SORT_KEYS

PROG = "kubectl train"
Command = Callable[[commands.Context], int]


def _connection_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The kubectl-style flags; on subcommands they must not reset what the top level read."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("connection")
    group.add_argument("--kubeconfig", default=default(None), help="path to the kubeconfig file")
    group.add_argument("--context", default=default(None), help="kubeconfig context to use")
    group.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's)"
    )
    group.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=default(False),
        help="list or watch jobs in every namespace",
    )


def _output(parser: argparse.ArgumentParser, choices: Sequence[str] = ("json", "yaml")) -> None:
    parser.add_argument(
        "-o", "--output", choices=list(choices), help="print data: " + ", ".join(choices)
    )


def _sub(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    command: Command,
    help_: str,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_, description=help_)
    _connection_flags(parser, top=False)
    parser.set_defaults(command=command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Work with kubetrain TrainingJobs: create, list, describe, watch, stop, "
        "resume and cancel them, read their logs and checkpoints, estimate what they cost.",
    )
    _connection_flags(parser, top=True)
    subparsers = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    listing = _sub(subparsers, "list", commands.cmd_list, "list jobs: phase, progress, ETA, cost")
    listing.add_argument(
        "--status",
        action="append",
        help="only jobs in these phases (repeat or comma-separate; e.g. running,queued)",
    )
    listing.add_argument("--model-type", help="only jobs of this modelType (llm, vision...)")
    listing.add_argument(
        "--priority", choices=[p.value for p in Priority], help="only jobs of this priority"
    )
    listing.add_argument("-l", "--selector", help="label selector, e.g. team=nlp")
    listing.add_argument("--limit", type=int, help="at most this many jobs (one page)")
    listing.add_argument(
        "--continue", dest="continue_token", help="the token a previous --limit printed"
    )
    listing.add_argument("--sort", choices=list(SORT_KEYS), help="order by (reads every job)")
    listing.add_argument("--order", choices=["asc", "desc"], default="asc")
    _output(listing, ("json", "yaml", "wide", "name"))

    create = _sub(
        subparsers,
        "create",
        commands.cmd_create,
        "create a job from a TrainingJob manifest, or from a request written for a "
        "managed-training API (its JSON body or keywords; see docs/migrating.md)",
    )
    create.add_argument(
        "-f", "--filename", required=True, help="JSON or YAML file, - for standard input"
    )
    create.add_argument(
        "--dry-run",
        action="store_true",
        help="print the TrainingJob that would be created (no cluster needed)",
    )
    create.add_argument("--wait", action="store_true", help="return once it Completed or Failed")
    create.add_argument(
        "--timeout", type=float, help="with --wait: give up after this many seconds"
    )
    _output(create)

    describe = _sub(
        subparsers,
        "describe",
        commands.cmd_describe,
        "a job's progress, metrics, checkpoints, conditions and recent events",
    )
    describe.add_argument("name")
    _output(describe)

    watch = _sub(
        subparsers,
        "watch",
        commands.cmd_watch,
        "live progress of one job, or all, until "
        "they complete, fail or are stopped (exit 1 if one failed)",
    )
    watch.add_argument("name", nargs="?")
    watch.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")

    stop = _sub(subparsers, "stop", commands.cmd_stop, "stop a job after a checkpoint")
    stop.add_argument("name")
    stop.add_argument("--reason", help="why (kept in an annotation)")
    stop.add_argument("--wait", action="store_true", help="return once the job is Stopped")
    stop.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")

    resume = _sub(subparsers, "resume", commands.cmd_resume, "resume a stopped job")
    resume.add_argument("name")
    resume.add_argument(
        "--from", dest="checkpoint", metavar="CKPT", help="checkpoint id (default: the latest)"
    )

    cancel = _sub(subparsers, "cancel", commands.cmd_cancel, "delete a job")
    cancel.add_argument("name")
    cancel.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep the checkpoint PersistentVolumeClaim (it is otherwise deleted with the job)",
    )

    logs = _sub(subparsers, "logs", commands.cmd_logs, "a worker's trainer log")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new lines")
    logs.add_argument("--worker", type=int, default=0, help="worker index (default 0)")
    logs.add_argument("--tail", type=int, help="only the last N lines")

    download = _sub(
        subparsers, "download", commands.cmd_download, "copy a job's trained model here"
    )
    download.add_argument("name")
    download.add_argument("dir", nargs="?", help="a new or empty directory (default: ./NAME)")
    download.add_argument(
        "--timeout", type=float, default=600.0, help="seconds for a download off the volume"
    )
    _download_image(download)

    plot = _sub(subparsers, "plot", commands.cmd_plot, "a job's loss curve (or another metric)")
    plot.add_argument("name")
    plot.add_argument(
        "--metric",
        action="append",
        help="what to draw against step (default: loss and learning_rate); repeat for more",
    )
    plot.add_argument("--height", type=int, default=12, help="rows per chart")
    _download_image(plot)

    checkpoints = _sub(subparsers, "checkpoints", commands.cmd_checkpoints, "a job's checkpoints")
    checkpoints.add_argument("name")
    _output(checkpoints)

    estimate = _sub(
        subparsers, "estimate", commands.cmd_estimate, "cost of a job at this cluster's prices"
    )
    estimate.add_argument("--gpu-type", required=True, help="a key of the GPU catalogue, or cpu")
    estimate.add_argument("--workers", type=int, default=1)
    estimate.add_argument("--gpus-per-worker", type=int, default=1)
    estimate.add_argument("--hours", type=float, help="run time, for a total")
    estimate.add_argument("--config-namespace", default=CONFIG_NAMESPACE)
    estimate.add_argument("--config-map", default=CONFIG_MAP)
    _output(estimate)
    return parser


def _download_image(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        default=DOWNLOAD_IMAGE,
        help="image of the short-lived Pod that reads the job's volume; it needs kubetrain "
        "installed (default: %(default)s)",
    )


def _error_text(err: KubetrainError) -> str:
    if isinstance(err, ValidationError) and len(err.causes) > 1:
        causes = "".join(f"\n  {c.field or '-'}: {c.rule}" for c in err.causes)
        return f"{err.message}{causes}"
    return err.message


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run one command; the console script ``kubectl-train`` calls this."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    clients: list[Client] = []

    def connect() -> Client:
        if not clients:
            clients.append(Client(args.kubeconfig, args.context, args.namespace))
        return clients[0]

    ctx = commands.Context(args=args, connect=connect, out=out, err=err, stdin=stdin or sys.stdin)
    try:
        code: int = args.command(ctx)
    except KubetrainError as error:
        err.write(f"error: {_error_text(error)}\n")
        code = 1
    except ValueError as error:  # a bad filter or sort argument
        err.write(f"error: {error}\n")
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # e.g. piped into head
        code = 0
    finally:
        for client in clients:
            client.close()
    return code
