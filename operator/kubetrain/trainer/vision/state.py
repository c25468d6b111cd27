"""What a vision checkpoint holds, and the best model so far.

A checkpoint directory has the model, the optimiser / scheduler / gradient-scaler states,
one RNG state per rank, the loop's progress (``trainer-state.json``: step, finished epochs,
per-epoch metrics, the best epoch) and ``best.pt``, the best weights so far. While the best
does not change, each checkpoint hard-links the previous one's ``best.pt`` instead of
writing it again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetrain.trainer.config import ConfigError

log = logging.getLogger(__name__)

MODEL = "model.pt"
TRAINING = "training.pt"
PROGRESS = "trainer-state.json"
BEST = "best.pt"

Weights = dict[str, torch.Tensor]


def rng_file(rank: int) -> str:
    return f"rng-{rank}.pt"


@dataclass
class Progress:
    """Where the loop is, and what it has seen: saved with every checkpoint."""

    architecture: str
    num_classes: int
    size: tuple[int, int]
    steps_per_epoch: int
    step: int = 0
    epochs_done: int = 0
    epoch_loss_sum: float = 0.0
    epoch_loss_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    """One record per finished epoch: its training loss and validation metrics."""
    best_epoch: int = 0
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    """(primary metric, -validation loss) of the best epoch: higher is better."""

    def to_json(self) -> str:
        data = asdict(self)
        data["best_score"] = [_finite_or_none(v) for v in self.best_score]
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Progress:
        data = json.loads(text)
        data["size"] = tuple(data["size"])
        data["best_score"] = tuple(-math.inf if v is None else v for v in data["best_score"])
        return cls(**data)

    def check_fits(self, other: Progress, where: Path) -> None:
        """Fail when a checkpoint was written for another model than this run builds."""
        for name in ("architecture", "num_classes", "size"):
            mine, theirs = getattr(other, name), getattr(self, name)
            if mine != theirs:
                raise ConfigError(
                    f"checkpoint {where.name} was written for {name} {theirs}, this run has "
                    f"{mine}: it cannot be resumed with a different model"
                )


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class BestModel:
    """The best weights so far: in memory when they are new, else a file in a checkpoint."""

    def __init__(self) -> None:
        self.weights: Weights | None = None
        self.file: Path | None = None

    def offer(self, model: nn.Module) -> None:
        """``model`` is the new best: keep a CPU copy of its weights."""
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.file = None

    def write(self, directory: Path) -> None:
        """Put the best weights into a staged checkpoint (a hard link when unchanged)."""
        target = directory / BEST
        if self.weights is not None:
            torch.save(self.weights, target)
        elif self.file is not None and self.file.is_file():
            try:
                os.link(self.file, target)
            except OSError:
                shutil.copy2(self.file, target)

    def committed(self, checkpoint: Path) -> None:
        """The checkpoint holding the best weights is sealed: drop the in-memory copy."""
        if (checkpoint / BEST).is_file():
            self.file = checkpoint / BEST
            self.weights = None

    def load(self) -> Weights | None:
        if self.weights is not None:
            return self.weights
        if self.file is not None and self.file.is_file():
            loaded: Weights = torch.load(self.file, map_location="cpu", weights_only=True)
            return loaded
        return None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(
    directory: Path,
    *,
    model: nn.Module,
    training: dict[str, Any],
    progress: Progress,
    best: BestModel,
) -> None:
    """Write rank 0's files of a checkpoint (the ranks write their RNG state themselves)."""
    torch.save(model.state_dict(), directory / MODEL)
    torch.save(training, directory / TRAINING)
    (directory / PROGRESS).write_text(progress.to_json())
    best.write(directory)


def load_progress(directory: Path) -> Progress:
    try:
        return Progress.from_json((directory / PROGRESS).read_text())
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"checkpoint {directory} has no readable {PROGRESS}: {err}") from None


def load_tensors(path: Path, device: torch.device | str = "cpu") -> Any:
    """A checkpoint file's tensors and plain values (never arbitrary pickled objects)."""
    return torch.load(path, map_location=device, weights_only=True)
