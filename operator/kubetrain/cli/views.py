"""What the plugin shows for jobs: table rows, ``describe`` text, checkpoint tables; pure.

Functions take the time (``now``) and a ``Style`` so the same job renders the same way in
tests, on a terminal (colour, bars) and in a pipe (plain tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kubetrain.api import Phase, TrainingJob
from kubetrain.cli import fmt
from kubetrain.cli.term import Style
from kubetrain.sdk import STOP_REASON_ANNOTATION, CostEstimate, JobEvent
from kubetrain.sdk.query import created_at

LIST_HEADERS = ("NAME", "PHASE", "PROGRESS", "EPOCH", "LOSS", "ETA", "COST", "AGE")
WIDE_HEADERS = ("TYPE", "GPUS", "PRIORITY", "QUEUE", "EST-TOTAL", "CHECKPOINT")
BAR_WIDTH = 20


def fetching(job: TrainingJob) -> bool:
    """Whether the job is in its fetch stage (remote data and models into the cache)."""
    return job.status.phase is Phase.INITIALIZING and job.status.initialization is not None


def percentage(job: TrainingJob) -> float | None:
    """Training progress; while fetching, how much of the download is done."""
    if fetching(job):
        init = job.status.initialization
        return init.percentage if init else None
    progress = job.status.progress
    return progress.percentage if progress else None


def fetch_line(job: TrainingJob) -> str:
    """``baseModel 256.0MiB/1.0GiB at 64.0MiB/s, 12s left``: where the fetch stage is."""
    init = job.status.initialization
    if init is None:
        return fmt.NONE
    if init.state == "Complete":
        return f"done, {len(init.sources)} source(s) in the cache"
    done = f"{fmt.size(init.bytes_done)}/{fmt.size(init.bytes_total)}"
    rate = f"{fmt.size(round(init.bytes_per_second))}/s" if init.bytes_per_second else fmt.NONE
    return (
        f"{init.source or 'starting'} {done} at {rate}, "
        f"{fmt.duration(init.remaining_seconds)} left (attempt {init.attempts})"
    )


def epoch(job: TrainingJob) -> str:
    progress = job.status.progress
    return fmt.fraction(progress.current_epoch, progress.total_epochs) if progress else fmt.NONE


def step(job: TrainingJob) -> str:
    progress = job.status.progress
    return fmt.fraction(progress.current_step, progress.total_steps) if progress else fmt.NONE


def loss(job: TrainingJob) -> str:
    metrics = job.status.metrics
    return fmt.number(metrics.current_loss) if metrics else fmt.NONE


def waiting_in_queue(job: TrainingJob) -> bool:
    """Whether the job waits for Kueue to admit it."""
    queue = job.status.queue
    return job.status.phase is Phase.QUEUED and queue is not None and not queue.admitted


def queue_text(job: TrainingJob) -> str:
    """``gpus #2`` while waiting in LocalQueue gpus (third in line), ``gpus`` once admitted."""
    queue = job.status.queue
    if queue is None:
        return fmt.NONE
    if waiting_in_queue(job) and queue.position is not None:
        return f"{queue.name} #{queue.position}"
    return queue.name


def eta(job: TrainingJob) -> str:
    """Training time left, while the job is active (finished jobs have none); while
    fetching, the fetch's; while waiting for Kueue, the place in its queue."""
    if waiting_in_queue(job):
        return f"queued {queue_text(job)}"
    if fetching(job):
        init = job.status.initialization
        return fmt.duration(init.remaining_seconds if init else None)
    progress = job.status.progress
    if not progress or job.status.phase in (Phase.COMPLETED, Phase.FAILED, Phase.STOPPED):
        return fmt.NONE
    return fmt.duration(progress.remaining_seconds)


def cost_so_far(job: TrainingJob) -> str:
    usage = job.status.resource_usage
    return fmt.money(usage.cost_usd) if usage else fmt.NONE


def list_row(job: TrainingJob, now: datetime, style: Style, *, wide: bool = False) -> list[str]:
    """One ``list`` row; ``wide`` adds the type, GPUs, priority, estimate and checkpoint."""
    row = [
        job.metadata.name or fmt.NONE,
        style.phase(job.status.phase),
        fmt.percent(percentage(job)),
        epoch(job),
        loss(job),
        eta(job),
        cost_so_far(job),
        fmt.age(created_at(job), now),
    ]
    if wide:
        allocation = job.status.resource_allocation
        estimate = job.status.estimated_cost
        row += [
            job.spec.model_type.value,
            (allocation.summary if allocation else None) or fmt.NONE,
            job.spec.priority.value,
            queue_text(job),
            fmt.money(estimate.total_usd if estimate else None),
            job.status.latest_checkpoint or fmt.NONE,
        ]
    return row


def list_table(
    jobs: Sequence[TrainingJob],
    now: datetime,
    style: Style,
    *,
    wide: bool = False,
    namespaces: bool = False,
) -> list[str]:
    """The ``list`` table, with a NAMESPACE column first for ``-A``."""
    headers = list(LIST_HEADERS) + (list(WIDE_HEADERS) if wide else [])
    rows = [list_row(job, now, style, wide=wide) for job in jobs]
    if namespaces:
        headers.insert(0, "NAMESPACE")
        for job, row in zip(jobs, rows, strict=True):
            row.insert(0, job.metadata.namespace or fmt.NONE)
    return fmt.table(headers, rows)


def progress_text(job: TrainingJob, style: Style, width: int = BAR_WIDTH) -> str:
    """``[████░░░░] 40.0%`` on a terminal, ``40.0%`` in a pipe."""
    pct = fmt.percent(percentage(job))
    if not style.bars:
        return pct
    colour = "green" if job.status.phase is Phase.COMPLETED else "cyan"
    if fetching(job):
        colour = "yellow"
    return f"{style.paint(style.bar(percentage(job), width), colour)} {pct:>6}"


def checkpoint_rows(job: TrainingJob, now: datetime) -> list[list[str]]:
    latest = job.status.latest_checkpoint
    return [
        [
            ("*" if c.id == latest else " ") + c.id,
            fmt.NONE if c.epoch is None else str(c.epoch),
            fmt.NONE if c.step is None else str(c.step),
            fmt.number(c.loss),
            fmt.size(c.size_bytes),
            fmt.age(c.created_at, now),
        ]
        for c in job.status.checkpoints
    ]


CHECKPOINT_HEADERS = (" ID", "EPOCH", "STEP", "LOSS", "SIZE", "AGE")


def checkpoints_table(job: TrainingJob, now: datetime) -> list[str]:
    """The job's checkpoints, oldest first; ``*`` marks the latest (where a resume starts)."""
    return fmt.table(CHECKPOINT_HEADERS, checkpoint_rows(job, now))


def _dataset(job: TrainingJob) -> str:
    data = job.spec.dataset
    where = fmt.NONE
    if data.pvc:
        where = f"pvc {data.pvc.claim_name}" + (
            f"/{data.pvc.sub_path}" if data.pvc.sub_path else ""
        )
    elif data.uri:
        where = data.uri
    elif data.synthetic:
        where = f"synthetic ({data.synthetic.samples} samples)"
    return where + (f", {data.format.value}" if data.format else "")


def _model(job: TrainingJob) -> str:
    spec = job.spec
    if spec.llm:
        return f"{spec.model_type.value}: {spec.llm.base_model} ({spec.llm.strategy.value})"
    if spec.vision:
        v = spec.vision
        pipeline = f", pipeline {v.pipeline.value}" if v.pipeline else ""
        return f"{spec.model_type.value}: {v.architecture} ({v.task.value}{pipeline})"
    return f"{spec.model_type.value}: {spec.image or fmt.NONE}"


def _metrics(job: TrainingJob) -> list[str]:
    m = job.status.metrics
    if m is None:
        return ["  -"]
    lines = [
        f"  Loss:           {fmt.number(m.current_loss)} (best {fmt.number(m.best_loss)}, "
        f"validation {fmt.number(m.validation_loss)})",
        f"  Learning rate:  {fmt.number(m.learning_rate)}",
    ]
    if m.throughput is not None:
        lines.append(f"  Throughput:     {m.throughput:.4g} {m.throughput_unit or ''}".rstrip())
    if m.gpu_memory_bytes is not None:
        lines.append(f"  GPU memory:     {fmt.size(m.gpu_memory_bytes)}")
    for key, value in sorted((m.evaluation or {}).items()):
        lines.append(f"  {key + ':':<15} {fmt.number(value)}")
    return lines


def describe(
    job: TrainingJob, events: Sequence[JobEvent], now: datetime, style: Style
) -> list[str]:
    """``describe``: identity, progress (a bar on a terminal), cost, metrics, checkpoints,
    conditions and recent events."""
    st, spec = job.status, job.spec
    progress = st.progress
    phase = style.phase(st.phase)
    condition = next((c for c in st.conditions if c.status.value == "True"), None)
    if condition:
        phase += f" ({condition.reason}: {condition.message})"
    allocation = st.resource_allocation.summary if st.resource_allocation else None
    lines = [
        f"Name:           {job.metadata.name}",
        f"Namespace:      {job.metadata.namespace}",
        f"Created:        {fmt.timestamp(created_at(job))} ({fmt.age(created_at(job), now)} ago)",
        f"Model:          {_model(job)}",
        f"Dataset:        {_dataset(job)}",
        f"Resources:      {allocation or spec.resources.gpu_type or fmt.NONE}, "
        f"priority {spec.priority.value}",
        f"Phase:          {phase}",
    ]
    reason = job.metadata.annotations.get(STOP_REASON_ANNOTATION)
    if reason and spec.suspend:
        lines.append(f"Stop reason:    {reason}")
    init = st.initialization
    if init is not None:
        lines.append(
            f"Fetch:          {progress_text(job, style) if fetching(job) else init.state}"
        )
        lines.append(f"                {fetch_line(job)}")
        lines += [
            f"  {s.name}: {s.uri} @ {s.revision[:12]} -> {s.path} ({fmt.size(s.size_bytes)}"
            f"{', reused' if s.reused else ''})"
            for s in init.sources
        ]
    queue = st.queue
    if queue is not None:
        where = f"LocalQueue {queue.name}" + (
            f" (ClusterQueue {queue.cluster_queue})" if queue.cluster_queue else ""
        )
        if waiting_in_queue(job):
            place = f", position {queue.position}" if queue.position is not None else ""
            state = f"waiting{place}"
        elif queue.admitted:
            flavors = ", ".join(f"{r}: {f}" for r, f in sorted((queue.flavors or {}).items()))
            state = f"admitted ({flavors})" if flavors else "admitted"
        else:
            state = "not admitted"
        lines.append(f"Queue:          {where}, {state}; preempted {queue.preemptions} time(s)")
        if queue.message:
            lines.append(f"                {queue.message}")
    training = fmt.NONE if fetching(job) else progress_text(job, style)  # not started yet
    lines += [
        f"Progress:       {training}",
        f"                epoch {epoch(job)}, step {step(job)}",
        f"Time:           elapsed {fmt.duration(progress.elapsed_seconds if progress else None)}, "
        f"remaining {eta(job)}, ETA {fmt.timestamp(st.estimated_completion_time)}",
    ]
    hourly = st.estimated_cost.hourly_usd if st.estimated_cost else None
    total = st.estimated_cost.total_usd if st.estimated_cost else None
    lines.append(
        f"Cost:           {cost_so_far(job)} so far, {fmt.money(hourly)}/h, "
        f"estimated total {fmt.money(total)}"
    )
    lines.append(f"Attempt:        {st.attempt} (restarts {st.restarts}, failures {st.failures})")
    if st.model and st.model.path:
        lines.append(f"Model output:   {st.model.claim_name}:{st.model.path}")
    lines += ["Metrics:", *_metrics(job)]
    lines.append(f"Checkpoints:    {len(st.checkpoints)} (latest {st.latest_checkpoint or '-'})")
    if st.checkpoints:
        lines += fmt.table(CHECKPOINT_HEADERS, checkpoint_rows(job, now), indent="  ")
    lines.append("Conditions:")
    conditions = [
        [c.type, c.status.value, c.reason, fmt.age(c.last_transition_time, now), c.message]
        for c in st.conditions
    ]
    lines += (
        fmt.table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), conditions, indent="  ")
        if conditions
        else ["  -"]
    )
    lines.append("Events:")
    recent = [
        [
            style.paint(e.type, "yellow" if e.type == "Warning" else None),
            e.reason,
            fmt.age(e.last_seen, now),
            e.message,
        ]
        for e in events[-10:]
    ]
    lines += (
        fmt.table(("TYPE", "REASON", "AGE", "MESSAGE"), recent, indent="  ") if recent else ["  -"]
    )
    return lines


def estimate_text(found: CostEstimate) -> list[str]:
    """``estimate``: the price, what it applies to, hourly and total cost, and the source."""
    unit = "GPU-hour" if found.gpus_per_worker else "worker-hour"
    units = f"{found.billed_units} {'GPU' if found.gpus_per_worker else 'worker'}"
    lines = [
        f"GPU type:       {found.gpu_type}",
        f"Workers:        {found.workers}"
        + (f" x {found.gpus_per_worker} GPU(s)" if found.gpus_per_worker else ""),
        f"Price:          {fmt.money(found.price_per_hour)} per {unit} ({units}(s) billed)",
        f"Hourly:         {fmt.money(found.hourly_usd)}",
    ]
    if found.hours is not None:
        lines.append(f"Total:          {fmt.money(found.total_usd)} for {found.hours:g} h")
    lines.append(f"Prices from:    {found.source}")
    return lines
