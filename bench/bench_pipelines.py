"""Each managed-training pipeline's loop against its library's own plain training loop.

"With" is what a Pod runs for ``spec.vision.pipeline``: the trainer's ``Loop`` on the model
the pipeline builds (see bench_vision.py for what the loop adds). "Without" is the library
used directly on the same images, the way its own examples train:

- sm_pytorch: ``smp.create_model(decoder, encoder)``, cross-entropy, SGD;
- rfdetr_detection / rfdetr_segmentation: rfdetr's LW-DETR and its set criterion
  (``build_model_from_config`` / ``build_criterion_from_config``), weighted loss sum, AdamW;
- yolox (FCOS on timm's CSP-Darknet), detectron2 (Mask R-CNN) and classification: the same
  torchvision model in torchvision's reference loop.

Runs alternate (plain, trainer, plain, ...) in one process; the medians are compared (ratio
in the same run). On a CUDA machine each pipeline also trains through the trainer at bf16,
with images/s and the GPU's utilisation.

    .venv/bin/python bench/bench_pipelines.py [--steps 20] [--rounds 3] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp  # type: ignore[import-untyped]
import torch
from torch.nn import functional
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_vision import Marks, Model, _Plain, gpu, job, trainer_run  # noqa: E402

from kubetrain.trainer.config import Distributed, RuntimeEnv  # noqa: E402
from kubetrain.trainer.vision import models  # noqa: E402
from kubetrain.trainer.vision.building import build_setup  # noqa: E402
from kubetrain.trainer.vision.catalog import Family  # noqa: E402
from kubetrain.trainer.vision.dataset import collate  # noqa: E402
from kubetrain.trainer.vision.libraries import RFDETR  # noqa: E402
from kubetrain.trainer.vision.options import VisionOptions, preflight  # noqa: E402
from kubetrain.trainer.vision.sources import IGNORE_INDEX  # noqa: E402
from kubetrain.trainer.vision.tasks import MEAN, STD  # noqa: E402

PIPELINES = (
    Model("classification", "classification", "resnet18", 64, 16, 4, 224, 128, "classification"),
    Model("sm_pytorch", "semanticSegmentation", "smp_unet_resnet18", 64, 8, 3, 512, 16,
          "sm_pytorch"),
    Model("detectron2", "instanceSegmentation", "maskrcnn_mobilenet_v3_large_fpn", 128, 4, 2,
          640, 8, "detectron2"),
    Model("rfdetr_detection", "detection", "rfdetr_nano", 64, 4, 2, 384, 16, "rfdetr_detection"),
    Model("rfdetr_segmentation", "instanceSegmentation", "rfdetr_seg_nano", 48, 4, 2, 312, 8,
          "rfdetr_segmentation"),
    Model("yolox", "detection", "fcos_cspdarknet_s", 64, 8, 2, 640, 16, "yolox"),
)  # fmt: skip


def plain_run(model: Model, steps: int, warmup: int) -> float:
    """The same images through the library's own loop; images/s."""
    spec = job(model, steps, size=model.size, batch=model.batch, bf16=False)
    with tempfile.TemporaryDirectory(prefix="kubetrain-bench-") as tmp:
        env = RuntimeEnv(checkpoint_dir=Path(tmp), output_dir=Path(tmp) / "output")
        plan = preflight(env, spec, VisionOptions())
        setup = build_setup(spec, VisionOptions(), plan, torch.device("cpu"), Distributed())
    task, arch = plan.task, plan.arch
    loader = DataLoader(
        _Plain(setup.train_set), batch_size=model.batch, shuffle=True,
        collate_fn=lambda items: collate(task, items),
    )  # fmt: skip
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.manual_seed(1)
    marks = Marks()
    if arch.family is Family.RFDETR:
        wrapped = models.build(arch, plan.num_classes, plan.size)
        assert isinstance(wrapped, RFDETR)
        detr, criterion = wrapped.detr, wrapped.criterion  # the library's own objects
        weights = criterion.weight_dict
        detr.train()
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(detr.parameters(), lr=1e-4)
        for images, targets in loader:
            batch = (torch.stack(images).float() / 255 - mean) / std
            side = batch.new_tensor([model.size] * 4)
            detr_targets = []
            for t in targets:
                x0, y0, x1, y1 = (t["boxes"] / side).unbind(-1)
                converted = {"labels": t["labels"],
                             "boxes": torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0,
                                                   y1 - y0], -1)}  # fmt: skip
                if "masks" in t:
                    converted["masks"] = t["masks"].bool()
                detr_targets.append(converted)
            losses = criterion(detr(batch, detr_targets), detr_targets)
            loss = sum(losses[k] * weights[k] for k in losses if k in weights)
            _step(optimizer, loss, marks)
        return marks.images_per_second(model.batch, warmup)
    if arch.family is Family.SMP:
        net: Any = smp.create_model(
            arch.library, encoder_name=arch.backbone, encoder_weights=None,
            classes=plan.num_classes,
        )  # fmt: skip
    else:
        net = models.build(arch, plan.num_classes, plan.size)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for batch in loader:
        if task.value == "classification":
            images_, _, labels = batch
            loss = functional.cross_entropy(net((images_.float() / 255 - mean) / std), labels)
        elif task.value == "semanticSegmentation":
            images_, masks = batch
            loss = functional.cross_entropy(
                net((images_.float() / 255 - mean) / std), masks, ignore_index=IGNORE_INDEX
            )
        else:
            images_, targets = batch
            inputs = [i.float() / 255 for i in images_]
            shifted = [{**t, "labels": t["labels"] + 1} for t in targets]
            loss = sum(net(inputs, shifted).values())
        _step(optimizer, loss, marks)
    return marks.images_per_second(model.batch, warmup)


def _step(optimizer: torch.optim.Optimizer, loss: Any, marks: Marks) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    loss.item()
    marks.mark()


def chosen(args: argparse.Namespace) -> tuple[Model, ...]:
    return tuple(m for m in PIPELINES if not args.only or m.pipeline in args.only)


def compare(args: argparse.Namespace) -> None:
    print(
        f"pipelines against their libraries' plain loops on CPU ({torch.get_num_threads()} "
        f"threads): {args.rounds} rounds x {args.steps} steps, first {args.warmup} left out"
    )
    for model in chosen(args):
        plain: list[float] = []
        ours: list[float] = []
        for _ in range(args.rounds):
            plain.append(plain_run(model, args.steps, args.warmup))
            result = trainer_run(model, args.steps, args.warmup, size=model.size, batch=model.batch)
            ours.append(result["images_per_second"])
        base, mine = statistics.median(plain), statistics.median(ours)
        print(
            f"  {model.pipeline}: {model.architecture} {model.size}x{model.size}, batch "
            f"{model.batch}: library loop {base:.1f} images/s, kubetrain {mine:.1f} images/s, "
            f"ratio {mine / base:.3f} (rounds {' '.join(f'{v:.1f}' for v in plain)} | "
            f"{' '.join(f'{v:.1f}' for v in ours)})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the figures")
    parser.add_argument("--gpu-steps", type=int, default=40)
    parser.add_argument("--only", nargs="*", default=[], help="pipelines to run (default: all)")
    args = parser.parse_args()
    compare(args)
    gpu(args, chosen(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
