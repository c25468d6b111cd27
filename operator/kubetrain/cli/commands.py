"""The plugin's commands: each reads its arguments, calls the SDK and prints the result."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from kubetrain.api import API_VERSION, LIST_KIND, Phase, TrainingJob
from kubetrain.api.catalogue import Catalogue
from kubetrain.cli import fmt, live, plot, views
from kubetrain.cli.term import Style
from kubetrain.sdk import Client, KubetrainError, build, convert_request
from kubetrain.sdk import cost as costs

RESOURCE = "trainingjob.kubetrain.io"


@dataclass
class Context:
    """What a command needs: its arguments, a way to get a client, and where to write."""

    args: argparse.Namespace
    connect: Callable[[], Client]
    out: TextIO
    err: TextIO
    stdin: TextIO = sys.stdin

    @property
    def style(self) -> Style:
        return Style.for_stream(self.out)

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")

    def warn(self, message: str) -> None:
        self.err.write(f"warning: {message}\n")

    @property
    def where(self) -> str:
        if getattr(self.args, "all_namespaces", False):
            return "all namespaces"
        return f"namespace {self.connect().namespace}"


def now() -> datetime:
    return datetime.now(UTC)


def manifest(job: TrainingJob) -> dict[str, Any]:
    """The job for ``-o json|yaml``, without managedFields (as kubectl shows it)."""
    data = job.to_manifest(with_status=True)
    data.get("metadata", {}).pop("managedFields", None)
    return data


def emit(ctx: Context, data: Any) -> None:
    """Data as ``-o json`` or ``-o yaml`` asked."""
    if ctx.args.output == "json":
        ctx.out.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        ctx.out.write(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))


def _statuses(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def cmd_list(ctx: Context) -> int:
    args = ctx.args
    client = ctx.connect()
    page = client.list(
        status=_statuses(args.status),
        model_type=args.model_type,
        priority=args.priority,
        labels=args.selector,
        limit=args.limit,
        continue_token=args.continue_token,
        sort=args.sort,
        order=args.order,
        all_namespaces=args.all_namespaces,
    )
    if args.output in ("json", "yaml"):
        metadata = {"continue": page.continue_token} if page.continue_token else {}
        items = [manifest(job) for job in page.items]
        emit(
            ctx,
            {"apiVersion": API_VERSION, "kind": LIST_KIND, "metadata": metadata, "items": items},
        )
        return 0
    if args.output == "name":
        ctx.print(*(f"{RESOURCE}/{job.metadata.name}" for job in page.items))
    elif not page.items:
        ctx.err.write(f"No TrainingJobs found in {ctx.where}.\n")
    else:
        ctx.print(
            *views.list_table(
                page.items,
                now(),
                ctx.style,
                wide=args.output == "wide",
                namespaces=args.all_namespaces,
            )
        )
    if page.continue_token:
        ctx.err.write(f"more jobs: --continue {page.continue_token}\n")
    return 0


def _read(source: str, stdin: TextIO) -> Any:
    """The one JSON or YAML document in file ``source`` (``-``: standard input)."""
    try:
        text = stdin.read() if source == "-" else Path(source).read_text()
        return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise KubetrainError(f"cannot read {source}: {err}") from None


def cmd_create(ctx: Context) -> int:
    """A TrainingJob from a manifest, or from a request written for a managed-training API."""
    args = ctx.args
    loaded = _read(args.filename, ctx.stdin)
    if not isinstance(loaded, dict):
        raise KubetrainError(f"{args.filename} holds no object (a TrainingJob or a request)")
    if "kind" in loaded:
        job, request = build.validated(loaded), None
    else:
        request = convert_request(loaded)
        job = request.job
        for note in request.notes:
            ctx.warn(note)
    body = build.wire(job)
    if args.dry_run:
        if args.namespace:
            body.setdefault("metadata", {})["namespace"] = args.namespace
        emit(ctx, body)  # YAML unless -o json
        return 0
    wait = args.wait or bool(request and request.wait)
    timeout = args.timeout or (request.timeout if request else None)
    created = ctx.connect().submit(
        body,
        wait=wait,
        timeout=timeout,
        poll_interval=request.poll_interval if request else None,
    )
    if args.output:
        emit(ctx, manifest(created))
    elif wait and created.status.phase:
        ctx.print(f"{RESOURCE}/{created.metadata.name} {created.status.phase.value.lower()}")
    else:
        ctx.print(f"{RESOURCE}/{created.metadata.name} created")
    return 1 if created.status.phase is Phase.FAILED else 0


def cmd_describe(ctx: Context) -> int:
    client = ctx.connect()
    job = client.get(ctx.args.name)
    if ctx.args.output:
        emit(ctx, manifest(job))
        return 0
    ctx.print(*views.describe(job, client.events(ctx.args.name), now(), ctx.style))
    return 0


def cmd_checkpoints(ctx: Context) -> int:
    client = ctx.connect()
    job = client.get(ctx.args.name)
    if ctx.args.output:
        emit(
            ctx,
            [
                c.model_dump(mode="json", by_alias=True, exclude_none=True)
                for c in job.status.checkpoints
            ],
        )
        return 0
    if not job.status.checkpoints:
        ctx.err.write(f"trainingjob {ctx.args.name!r} has no checkpoints yet.\n")
        return 0
    ctx.print(*views.checkpoints_table(job, now()))
    return 0


def cmd_download(ctx: Context) -> int:
    """The trained model into DIR: from where it was published, else off the job's volume."""
    args, style = ctx.args, ctx.style
    dest = Path(args.dir or args.name)

    def progress(done: int, total: int) -> None:
        if style.bars:
            share = 100.0 * done / total if total else 100.0
            ctx.err.write(
                f"\r{style.bar(share, views.BAR_WIDTH)} {fmt.size(done)}/{fmt.size(total)}"
            )

    where = ctx.connect().download_model(
        args.name, dest, progress=progress, timeout=args.timeout, image=args.image
    )
    if style.bars:
        ctx.err.write("\n")
    files = sum(1 for p in where.rglob("*") if p.is_file())
    ctx.print(f"trainingjob {args.name!r}: model downloaded to {where} ({files} files)")
    return 0


def cmd_plot(ctx: Context) -> int:
    """Metrics against step from the trainer's per-step log on the job's volume."""
    args, style = ctx.args, ctx.style
    records = ctx.connect().training_log(args.name, image=args.image)
    width = max(20, min(shutil.get_terminal_size((80, 24)).columns - 14, 100))
    for metric in args.metric or ["loss", "learning_rate"]:
        points = [
            (float(r["step"]), float(r[metric]))
            for r in records
            if isinstance(r.get("step"), int | float) and isinstance(r.get(metric), int | float)
        ]
        title = f"{args.name}: {metric} by step ({len(points)} points)"
        ctx.print(*plot.chart(points, width=width, height=args.height, title=title,
                              unicode=style.unicode), "")  # fmt: skip
    return 0


def cmd_watch(ctx: Context) -> int:
    args = ctx.args
    client = ctx.connect()
    snapshots = client.watch(args.name, all_namespaces=args.all_namespaces, timeout=args.timeout)
    try:
        code = live.run(
            snapshots,
            ctx.out,
            ctx.style,
            name=args.name,
            where=ctx.where,
            namespaces=args.all_namespaces,
        )
    except KeyboardInterrupt:
        return 130
    if code is None:
        ctx.err.write(f"error: the jobs were still active after {args.timeout:g}s\n")
        return 1
    return code


def cmd_stop(ctx: Context) -> int:
    args = ctx.args
    job = ctx.connect().stop(args.name, args.reason, wait=args.wait, timeout=args.timeout)
    state = job.status.phase.value.lower() if args.wait and job.status.phase else "stopping"
    ctx.print(f"{RESOURCE}/{args.name} {state}")
    return 0


def cmd_resume(ctx: Context) -> int:
    args = ctx.args
    ctx.connect().resume(args.name, args.checkpoint)
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else "the latest checkpoint"
    ctx.print(f"{RESOURCE}/{args.name} resumed from {source}")
    return 0


def cmd_cancel(ctx: Context) -> int:
    args = ctx.args
    done = ctx.connect().cancel(args.name, keep_checkpoints=args.keep_checkpoints)
    kept = (
        f"; checkpoints kept in PersistentVolumeClaim {done.kept_claim}" if done.kept_claim else ""
    )
    ctx.print(f"{RESOURCE}/{args.name} deleted{kept}")
    return 0


def cmd_logs(ctx: Context) -> int:
    args = ctx.args
    lines = ctx.connect().logs(args.name, args.worker, follow=args.follow, tail_lines=args.tail)
    try:
        for line in lines:
            ctx.out.write(line + "\n")
            if args.follow:
                ctx.out.flush()
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_estimate(ctx: Context) -> int:
    args = ctx.args
    try:
        client = ctx.connect()
        client.config_namespace, client.config_map = args.config_namespace, args.config_map
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", costs.CatalogueFallbackWarning)
            found = client.estimate(args.gpu_type, args.workers, args.gpus_per_worker, args.hours)
    except KubetrainError as err:
        if getattr(err, "causes", None):
            raise  # a bad argument, not an unreachable cluster
        warning = f"{err.message}; using built-in prices"
        found = costs.estimate(
            Catalogue(),
            args.gpu_type,
            args.workers,
            args.gpus_per_worker,
            args.hours,
            source=costs.SOURCE_DEFAULTS,
            warning=warning,
        )
    if found.warning:
        ctx.warn(found.warning)
    if args.output:
        emit(ctx, found.as_dict())
    else:
        ctx.print(*views.estimate_text(found))
    return 0
