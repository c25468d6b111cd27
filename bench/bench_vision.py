"""The vision trainer's overhead: images/s of its loop against a plain torchvision loop.

"With" is what a Pod runs: the trainer's ``Loop`` (seeded batch plan, device-side
normalisation, per-step loss logging to the volume, progress reports to a file sink as
often as every 0.5 s, the stop check at every step). "Without" is a plain torchvision
training loop on the same model and the same images: a shuffling DataLoader, forward,
backward, SGD step, ``loss.item()``. Runs alternate (plain, trainer, plain, ...) in one
process so drift hits both; the median of the rounds' images/s is compared. A checkpoint
is timed separately: the trainer writes one per epoch (or per ``intervalSteps``), not per
step. Target: overhead <= 3 %.

On a CUDA machine it also trains both models at bf16 through the trainer and reports
images/s and the GPU's utilisation (sampled with nvidia-smi).

    .venv/bin/python bench/bench_vision.py [--steps 20] [--rounds 3] [--warmup 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kubetrain.api import TrainingJobSpec  # noqa: E402
from kubetrain.trainer.config import Distributed, RuntimeEnv  # noqa: E402
from kubetrain.trainer.reporter import FileSink  # noqa: E402
from kubetrain.trainer.vision.building import build_setup  # noqa: E402
from kubetrain.trainer.vision.dataset import VisionDataset, collate  # noqa: E402
from kubetrain.trainer.vision.loop import Loop  # noqa: E402
from kubetrain.trainer.vision.options import VisionOptions, preflight  # noqa: E402
from kubetrain.trainer.vision.reporting import VisionSession  # noqa: E402
from kubetrain.trainer.vision.tasks import MEAN, STD  # noqa: E402
from kubetrain.trainer.vision.tv import detection, get_model  # noqa: E402


@dataclass(frozen=True)
class Model:
    """One benchmarked model: its task, size and batch, on CPU and on a GPU."""

    label: str
    task: str
    architecture: str
    size: int
    batch: int
    classes: int
    gpu_size: int
    gpu_batch: int
    pipeline: str = ""
    """spec.vision.pipeline, when the model is one of a pipeline's."""


MODELS = (
    Model("classification", "classification", "resnet18", 64, 16, 10, 224, 128),
    Model("detection", "detection", "fasterrcnn_mobilenet_v3_large_fpn", 128, 4, 3, 640, 16),
)


def job(model: Model, steps: int, *, size: int, batch: int, bf16: bool) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {
            "modelType": "vision",
            "dataset": {"synthetic": {"samples": steps * batch}},
            "vision": {
                **({"pipeline": model.pipeline} if model.pipeline else {}),
                "task": model.task,
                "architecture": model.architecture,
                "pretrained": False,
                "inputSize": {"width": size, "height": size},
                "numClasses": model.classes,
            },
            "training": {"epochs": 1, "batchSize": batch, "seed": 1},
            "optimization": {"maxGradNorm": 0, "mixedPrecision": "bf16" if bf16 else "none"},
        }
    )


class Stopwatch:
    """Accumulates the time spent inside wrapped functions: the runtime's own cost."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


class Marks:
    """Wall-clock marks at the end of every step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def mark(self) -> None:
        self.times.append(time.perf_counter())

    def images_per_second(self, batch: int, skip: int) -> float:
        marks = self.times[skip:]
        return batch * (len(marks) - 1) / (marks[-1] - marks[0])


def trainer_run(
    model: Model, steps: int, warmup: int, *, size: int, batch: int, bf16: bool = False
) -> dict[str, float]:
    """``steps`` steps through the trainer's own loop; images/s and its checkpoint time."""
    spec = job(model, steps, size=size, batch=batch, bf16=bf16)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        env = RuntimeEnv(
            checkpoint_dir=Path(tmp), output_dir=Path(tmp) / "output", report_interval=0.5
        )
        options = VisionOptions()
        plan = preflight(env, spec, options)
        session = VisionSession(env, spec, sink=FileSink(Path(tmp) / "report.json"))
        session.begin()
        setup = build_setup(spec, options, plan, device, Distributed())
        loop = Loop(spec, session, setup)
        marks, inside = Marks(), Stopwatch()
        report = inside.wrap(loop._report_step)  # progress, metrics log, throughput
        session.should_stop = inside.wrap(session.should_stop)  # type: ignore[method-assign]
        loop._pause_if_asked = inside.wrap(loop._pause_if_asked)  # type: ignore[method-assign]

        def reported(loss: float, grad_norm: float | None) -> None:
            report(loss, grad_norm)
            if device.type == "cuda":
                torch.cuda.synchronize()
            marks.mark()

        loop._report_step = reported  # type: ignore[method-assign]
        loop._validate = lambda epoch: {}  # type: ignore[method-assign]  # steps only
        started = time.perf_counter()
        loop.run()
        training = time.perf_counter() - started
        started = time.perf_counter()
        loop._checkpoint()
        checkpoint = time.perf_counter() - started
        session.finish("completed", "benchmark")
        return {
            "images_per_second": marks.images_per_second(batch, warmup),
            "checkpoint_seconds": checkpoint,
            "checkpoint_bytes": float(session.checkpoints[-1].size_bytes),
            "reports": float(session.reporter.sent),
            "inside_share": inside.seconds / training,
        }


class _Plain(Dataset[Any]):
    """The same images as the trainer's, indexed the plain way."""

    def __init__(self, dataset: VisionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[(0, index)]


def plain_run(model: Model, steps: int, warmup: int) -> float:
    """The same model and images in a plain torchvision training loop; images/s."""
    spec = job(model, steps, size=model.size, batch=model.batch, bf16=False)
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        env = RuntimeEnv(checkpoint_dir=Path(tmp), output_dir=Path(tmp) / "output")
        plan = preflight(env, spec, VisionOptions())
        images = build_setup(spec, VisionOptions(), plan, torch.device("cpu"), Distributed())
    data = _Plain(images.train_set)
    torch.manual_seed(1)
    task = plan.task
    if model.task == "classification":
        net = get_model(model.architecture, weights=None, num_classes=model.classes)
    else:
        net = getattr(detection, model.architecture)(
            weights=None, weights_backbone=None, num_classes=model.classes + 1,
            min_size=model.size, max_size=model.size,
            **{k: v for k, v in _budgets(plan.arch, model.size).items()},
        )  # fmt: skip
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(
        data, batch_size=model.batch, shuffle=True, collate_fn=lambda items: collate(task, items)
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    marks = Marks()
    for batch in loader:
        if model.task == "classification":
            images_, _, labels = batch
            loss = functional.cross_entropy(net((images_.float() / 255 - mean) / std), labels)
        else:
            images_, targets = batch
            inputs = [i.float() / 255 for i in images_]
            shifted = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]
            loss = sum(net(inputs, shifted).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()
        marks.mark()
    return marks.images_per_second(model.batch, warmup)


def _budgets(arch: Any, size: int) -> dict[str, Any]:
    """The trainer's proposal budgets for small inputs (part of "the same model")."""
    from kubetrain.trainer.vision.models import detector_kwargs  # noqa: PLC0415

    kwargs = detector_kwargs(arch, (size, size))
    kwargs.pop("min_size"), kwargs.pop("max_size")
    return kwargs


def overhead(args: argparse.Namespace) -> None:
    print(
        f"vision trainer overhead on CPU ({torch.get_num_threads()} threads): "
        f"{args.rounds} rounds x {args.steps} steps, first {args.warmup} left out"
    )
    for model in MODELS:
        plain: list[float] = []
        ours: list[float] = []
        result: dict[str, float] = {}
        for _ in range(args.rounds):  # alternate, so load from elsewhere hits both
            plain.append(plain_run(model, args.steps, args.warmup))
            result = trainer_run(model, args.steps, args.warmup, size=model.size, batch=model.batch)
            ours.append(result["images_per_second"])
        base, mine = statistics.median(plain), statistics.median(ours)
        best = 100 * (max(plain) / max(ours) - 1)
        print(
            f"  {model.label}: {model.architecture} {model.size}x{model.size}, batch {model.batch}"
        )
        print(
            f"    plain torchvision loop {base:.1f} images/s, kubetrain trainer {mine:.1f} "
            f"images/s: overhead {100 * (base / mine - 1):+.2f} %   target <= 3 %"
        )
        print(
            f"    rounds plain {' '.join(f'{v:.1f}' for v in plain)} | "
            f"trainer {' '.join(f'{v:.1f}' for v in ours)} (best rounds: {best:+.2f} %)"
        )
        print(
            f"    time inside the runtime (reports, metrics log, stop checks): "
            f"{100 * result['inside_share']:.2f} % of training time   target <= 3 %"
        )
        print(
            f"    a checkpoint ({result['checkpoint_bytes'] / 1e6:.0f} MB) takes "
            f"{result['checkpoint_seconds']:.2f} s, once per epoch or spec.checkpoint.intervalSteps"
        )


class Utilisation:
    """Samples the GPU's utilisation with nvidia-smi while a run trains."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
            if out.strip():
                self.samples.append(float(out.split()[0]))


def gpu(args: argparse.Namespace, benchmarked: tuple[Model, ...] = MODELS) -> None:
    if not torch.cuda.is_available():
        print("GPU: no CUDA device here; bf16 images/s and utilisation skipped")
        return
    print(f"GPU: {torch.cuda.get_device_name()}, bf16 autocast, through the trainer's loop")
    for model in benchmarked:
        with Utilisation() as usage:
            result = trainer_run(
                model, args.gpu_steps, args.warmup, size=model.gpu_size, batch=model.gpu_batch,
                bf16=True,
            )  # fmt: skip
        busy = statistics.mean(usage.samples) if usage.samples else float("nan")
        print(
            f"  {model.label}: {model.architecture} {model.gpu_size}x{model.gpu_size}, batch "
            f"{model.gpu_batch}: {result['images_per_second']:.0f} images/s, GPU busy {busy:.0f} %"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the figures")
    parser.add_argument("--gpu-steps", type=int, default=60)
    args = parser.parse_args()
    overhead(args)
    gpu(args)
    return 0


if __name__ == "__main__":
    if shutil.which("nvidia-smi") is None and torch.cuda.is_available():
        print("note: nvidia-smi not found; GPU utilisation will be n/a")
    sys.exit(main())
