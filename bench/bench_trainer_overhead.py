"""The trainer runtime's overhead: the same LoRA Trainer loop with and without it.

"With" is what a Pod runs: per-step loss logging to the volume, progress reports (to a
file sink here, as often as every 0.5 s), the stop check at every step boundary and a
sealed checkpoint every --checkpoint-every steps. "Without" is a plain transformers
Trainer on the same model and data: no callback, no checkpoints, sparse logging. Runs
alternate (without, with, without, ...) in one process so drift hits both. On a shared
machine that A/B difference is noisy, so the time spent inside the runtime (its hooks,
the per-step logging, checkpoint writing and sealing) is also measured directly and
reported as a share of the training time. Target: <= 2 %.

With --mfu on a GPU it instead measures tokens/s and MFU of a ~1B-parameter Llama-shaped
model (random weights) with LoRA, bf16, sequence 2048, through the same code path (no
activation checkpointing, unpacked equal-length rows).

    .venv/bin/python bench/bench_trainer_overhead.py [--steps 150] [--rounds 3]
    .venv/bin/python bench/bench_trainer_overhead.py --mfu [--preset llama-1b]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import Trainer, TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kubetrain.api import TrainingJobSpec  # noqa: E402
from kubetrain.trainer.config import RuntimeEnv  # noqa: E402
from kubetrain.trainer.hf_callback import RuntimeCallback  # noqa: E402
from kubetrain.trainer.lora.model import (  # noqa: E402
    add_adapters,
    model_shape,
    random_model,
    settle_precision,
)
from kubetrain.trainer.lora.train import collator, training_arguments  # noqa: E402
from kubetrain.trainer.metrics import peak_flops  # noqa: E402
from kubetrain.trainer.reporter import FileSink  # noqa: E402
from kubetrain.trainer.session import TrainingSession  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, from one step's end to the next's (all included)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.marks.append(time.perf_counter())

    def step_times(self, skip: int) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.marks[skip:])]


class Stopwatch:
    """Accumulates the time spent inside wrapped functions: the runtime's own cost."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


def job(args: argparse.Namespace, preset: str) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "modelType": "llm",
            "dataset": {"synthetic": {"samples": 64}},
            "llm": {"baseModel": f"random://{preset}", "maxSeqLength": args.seq},
            "training": {
                "epochs": 1000,
                "batchSize": args.batch,
                "learningRate": 1e-4,
                "seed": 1,
            },
            "optimization": {"mixedPrecision": "bf16" if args.mfu else "none"},
            "checkpoint": {"intervalSteps": args.checkpoint_every, "keepLast": 2},
        }
    )


def dataset(samples: int, seq: int, vocab: int) -> list[dict[str, list[int]]]:
    """Fixed-length random token rows: every step does the same work."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(3, vocab, (samples, seq), generator=generator).tolist()
    return [{"input_ids": row, "labels": row} for row in rows]


def run_once(args: argparse.Namespace, *, runtime: bool, preset: str) -> dict[str, Any]:
    """One training run of --steps steps; returns its step times and what the runtime did."""
    spec = job(args, preset)
    cuda = torch.cuda.is_available()
    # Equal-length rows need no padding; for MFU keep plain causal batches, which SDPA runs
    # with its fused kernels (a packed row needs a block-diagonal mask).
    packing = not args.mfu
    assert spec.llm is not None
    precision = settle_precision(spec.optimization.mixed_precision.value, spec.llm.strategy, cuda)
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        env = RuntimeEnv(
            checkpoint_dir=Path(tmp),
            output_dir=Path(tmp) / "output",
            report_interval=args.report_interval,
        )
        session = TrainingSession(env, spec, sink=FileSink(Path(tmp) / "report.json"))
        transformers.set_seed(1)
        base, tokenizer = random_model(preset, 1, precision.base_dtype)
        model = add_adapters(base, spec.llm, gradient_checkpointing=False)
        if cuda:
            model.to("cuda")
        train_args = training_arguments(
            spec,
            session,
            bf16=precision.bf16,
            fp16=False,
            cuda=cuda,
            packing=packing,
            evaluate=False,
        )
        train_args.max_steps = args.steps
        timer = StepTimer()
        callbacks: list[TrainerCallback] = [timer]
        callback = None
        if runtime:
            session.begin()
            callback = RuntimeCallback(
                session,
                shape=model_shape(model),
                context=args.seq,
                peak_flops=peak_flops(torch.cuda.get_device_name() if cuda else "cpu"),
                samples_per_step=args.batch,
            )
            callbacks.insert(0, callback)
        else:
            train_args.logging_steps = 10**9
        trainer = Trainer(
            model=model,
            args=train_args,
            train_dataset=dataset(args.batch * args.steps, args.seq, tokenizer.vocab_size),
            data_collator=collator(tokenizer, packing=packing),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        trainer.remove_callback(transformers.PrinterCallback)
        hooks, saves = Stopwatch(), Stopwatch()
        if callback is not None:
            for hook in ("on_train_begin", "on_step_begin", "on_step_end", "on_epoch_end"):
                setattr(callback, hook, hooks.wrap(getattr(callback, hook)))
            # Logging, progress and checkpoints (HF's writing plus the runtime's sealing).
            trainer._maybe_log_save_evaluate = saves.wrap(trainer._maybe_log_save_evaluate)
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
        if runtime:
            session.finish("completed", "benchmark")
        return {
            "steps": timer.step_times(skip=args.warmup),
            "total": total,
            "runtime_seconds": hooks.seconds + saves.seconds,
            "checkpoints": len(session.checkpoints),
            "reports": session.reporter.sent,
            "metrics": dict(session.metrics),
        }


def overhead(args: argparse.Namespace) -> int:
    plain: list[float] = []
    ours: list[float] = []
    inside = total = 0.0
    reports = 0
    for _ in range(args.rounds):  # alternate, so load from elsewhere hits both
        plain.append(statistics.fmean(run_once(args, runtime=False, preset=args.preset)["steps"]))
        result = run_once(args, runtime=True, preset=args.preset)
        ours.append(statistics.fmean(result["steps"]))
        inside += result["runtime_seconds"]
        total += result["total"]
        reports += result["reports"]
    base, with_runtime = statistics.median(plain), statistics.median(ours)
    checkpoints = args.rounds * ((args.steps - 1) // args.checkpoint_every)
    share = inside / (total - inside)
    print(
        f"trainer runtime overhead: {args.preset} LoRA, batch {args.batch} x seq {args.seq}, "
        f"{args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} CPU threads"
    )
    print(
        f"  step time without runtime {base * 1e3:.2f} ms, with runtime {with_runtime * 1e3:.2f} ms"
        f" (median of round means): A/B {100 * (with_runtime / base - 1):+.2f} %"
        f" (min {100 * (min(ours) / min(plain) - 1):+.2f} %)"
    )
    print(
        f"  runtime work: {checkpoints} checkpoints (every {args.checkpoint_every} steps), "
        f"{reports} reports (every {args.report_interval:g} s), a metrics line per step"
    )
    print(
        f"  time inside the runtime (hooks, logging, checkpoint writes): {inside * 1e3:.0f} ms of "
        f"{total:.1f} s = {100 * share:.2f} % of step time   target <= 2 %"
    )
    return 0


def mfu(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available() and args.preset == "llama-1b":
        print("MFU benchmark: no CUDA device here; skipped (run it where a GPU is available)")
        return 0
    result = run_once(args, runtime=True, preset=args.preset)
    metrics = result["metrics"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"LoRA throughput ({args.preset}, bf16, batch {args.batch} x seq {args.seq}) on {device}")
    print(f"  median step {statistics.median(result['steps']) * 1e3:.1f} ms")
    print(f"  tokens/s {metrics.get('tokensPerSecond', 0):.0f}")
    print(
        f"  MFU {100 * metrics['mfu']:.1f} %   target >= 35 %" if "mfu" in metrics else "  MFU n/a"
    )
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mfu", action="store_true", help="tokens/s and MFU on a GPU instead")
    parser.add_argument("--preset", default=None, help="random:// model preset")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the figures")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--report-interval", type=float, default=0.5)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.mfu:
        defaults = {
            "preset": "llama-1b",
            "steps": 30,
            "batch": 4,
            "seq": 2048,
            "checkpoint_every": 1000,
        }
    else:
        defaults = {
            "preset": "llama-small",
            "steps": 60,
            "batch": 4,
            "seq": 64,
            "checkpoint_every": 25,
        }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return mfu(args) if args.mfu else overhead(args)


if __name__ == "__main__":
    sys.exit(main())
