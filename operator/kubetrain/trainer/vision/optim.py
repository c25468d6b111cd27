"""Optimiser and learning-rate schedule from the spec.

SGD with momentum (torchvision's reference recipes) or AdamW; no weight decay on biases
and normalisation weights; a linear warm-up over ``warmupSteps`` then a cosine decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kubetrain.api import TrainingJobSpec

DEFAULT_MOMENTUM = 0.9


def optimizer(model: nn.Module, spec: TrainingJobSpec, kind: str) -> torch.optim.Optimizer:
    training = spec.training
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    lr = spec.effective_learning_rate() or 1e-2
    momentum = training.momentum if training.momentum is not None else DEFAULT_MOMENTUM
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def schedule_factor(step: int, warmup: int, total: int) -> float:
    """The share of the peak learning rate used for update ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def scheduler(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, warmup, total)
    )
