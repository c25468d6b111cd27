"""Throughput and model FLOPs utilisation (MFU), measured over the training steps only.

MFU = model FLOPs per second / the accelerators' peak. Model FLOPs per token follow the
PaLM accounting (matmuls plus attention scores, no recomputation counted), adjusted for
adapters: a frozen weight costs its forward and the gradient w.r.t. its input (4 per
parameter), a trained one also its own gradient (6 per parameter).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Dense peak tensor throughput, FLOP/s, for 16-bit (bf16 or fp16) matmuls.
PEAK_16BIT = (
    ("H100 PCIE", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),
)


def peak_flops(device_name: str, override_tflops: float | None = None) -> float | None:
    """Peak 16-bit FLOP/s of one device by its name (None when unknown, e.g. a CPU)."""
    if override_tflops:
        return override_tflops * 1e12
    name = device_name.upper()
    return next((peak for key, peak in PEAK_16BIT if key in name), None)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs of one token depend on."""

    frozen_matmul_params: int
    trained_matmul_params: int
    layers: int
    hidden: int

    def flops_per_token(self, context: float) -> float:
        """Training FLOPs for one token seen with ``context`` tokens of attention span."""
        weights = 4 * self.frozen_matmul_params + 6 * self.trained_matmul_params
        attention = 12 * self.layers * self.hidden * context
        return weights + attention


class ThroughputMeter:
    """Tokens and samples per second over a sliding window of recent steps."""

    def __init__(self, window: int = 20) -> None:
        self._steps: deque[tuple[float, int, int]] = deque(maxlen=window)

    def add(self, seconds: float, tokens: int, samples: int) -> None:
        if seconds > 0:
            self._steps.append((seconds, tokens, samples))

    @property
    def step_seconds(self) -> float | None:
        if not self._steps:
            return None
        return sum(s for s, _, _ in self._steps) / len(self._steps)

    def tokens_per_second(self) -> float | None:
        seconds = sum(s for s, _, _ in self._steps)
        return sum(t for _, t, _ in self._steps) / seconds if seconds > 0 else None

    def samples_per_second(self) -> float | None:
        seconds = sum(s for s, _, _ in self._steps)
        return sum(n for _, _, n in self._steps) / seconds if seconds > 0 else None


def mfu(tokens_per_second: float, flops_per_token: float, peak: float, devices: int) -> float:
    """Fraction of the devices' peak the model's FLOPs reach."""
    return tokens_per_second * flops_per_token / (peak * devices)
