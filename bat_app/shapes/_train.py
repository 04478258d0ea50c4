"""Small training helpers shared by the Shapes-world stages."""

from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int, floor: float = 0.05):
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` x the peak."""
    warmup = max(1, warmup)
    steps = max(steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / (steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
