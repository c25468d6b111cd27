"""Everything a training run needs, built from the plan: model, optimiser, data, precision.

Shared by the trainer and the benchmark, so the benchmark measures the code a Pod runs.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kubetrain.api import MixedPrecision, TrainingJobSpec
from kubetrain.trainer.config import Distributed
from kubetrain.trainer.vision import batching, models, optim
from kubetrain.trainer.vision.augment import unused_augmentation
from kubetrain.trainer.vision.dataset import VisionDataset
from kubetrain.trainer.vision.loading import Loader
from kubetrain.trainer.vision.loop import Setup
from kubetrain.trainer.vision.options import Plan, VisionOptions
from kubetrain.trainer.vision.tasks import Autocast, for_task, no_autocast

log = logging.getLogger(__name__)


def build_setup(
    spec: TrainingJobSpec,
    options: VisionOptions,
    plan: Plan,
    device: torch.device,
    info: Distributed,
) -> Setup:
    """The model (seeded, from the weights file if any), optimiser, schedule and datasets."""
    vision, training = spec.vision, spec.training
    assert vision is not None
    torch.manual_seed(training.seed)
    module = models.build(plan.arch, plan.num_classes, plan.size)
    if plan.weights is not None:
        models.load_weights(module, plan.weights)
        if plan.arch.detector:
            models.freeze_batchnorm(getattr(module, "backbone", module))
    if vision.augmentation is not None:
        for name in unused_augmentation(vision.augmentation, plan.task):
            log.warning("spec.vision.augmentation.%s does not apply to %s; ignored", name,
                        plan.task.value)  # fmt: skip
    if spec.optimization.gradient_checkpointing:
        log.warning("spec.optimization.gradientCheckpointing is not supported by the vision "
                    "trainer's torchvision models; training without it")  # fmt: skip
    module.to(device)
    dtype = precision(spec.optimization.mixed_precision, device)
    autocast: Autocast = (
        functools.partial(torch.autocast, device_type="cuda", dtype=dtype)
        if dtype is not None
        else no_autocast
    )
    loader = Loader(plan.task, plan.size, plan.num_classes, training.seed)
    train_set = VisionDataset(
        plan.train, loader, augmentation=vision.augmentation, seed=training.seed
    )
    per_epoch = batching.steps_per_epoch(
        len(train_set), training.batch_size, training.gradient_accumulation_steps, info.world_size
    )
    optimizer = optim.optimizer(module, spec, options.optimizer or plan.arch.optimizer)
    model: nn.Module = module
    if info.world_size > 1:
        model = DistributedDataParallel(
            module,
            device_ids=[info.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=plan.arch.detector,
        )
    return Setup(
        model=model,
        module=module,
        optimizer=optimizer,
        scheduler=optim.scheduler(optimizer, training.warmup_steps, per_epoch * training.epochs),
        scaler=torch.amp.GradScaler("cuda", enabled=dtype is torch.float16),
        ops=for_task(plan.task, plan.num_classes, device, plan.size, autocast),
        train_set=train_set,
        val_set=VisionDataset(plan.val, loader),
        workers=workers(options, device, info),
        rank=info.rank,
        world=info.world_size,
    )


def precision(requested: MixedPrecision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for spec.optimization.mixedPrecision on ``device`` (None: fp32)."""
    if requested is MixedPrecision.NONE:
        return None
    if device.type != "cuda":
        log.warning("spec.optimization.mixedPrecision %s needs a GPU; training in fp32",
                    requested.value)  # fmt: skip
        return None
    if requested is MixedPrecision.BF16 and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; training with fp16 autocast instead")
        return torch.float16
    return torch.bfloat16 if requested is MixedPrecision.BF16 else torch.float16


def workers(options: VisionOptions, device: torch.device, info: Distributed) -> int:
    """DataLoader processes: as asked, else a few per GPU process (none on a CPU)."""
    if options.data_workers is not None:
        return options.data_workers
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(min(8, cpus // max(info.nproc_per_node, 1) - 1), 0)
