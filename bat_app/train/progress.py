"""Progress events the trainer emits, and a steady it/s + ETA estimate."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class ProgressEvent:
    stage: str                  # "prepare", "class_images", "encode", "train", "export"
    step: int
    total: int
    loss: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""
    method: str | None = None   # set by a compare run: which method this step belongs to

    def to_dict(self) -> dict:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]


class RateMeter:
    """Steps/s over the steps run by this process (a resumed run does not count old steps)."""

    def __init__(self, start_step: int):
        self.start_step = start_step
        self.start_time = time.perf_counter()

    def rate(self, step: int) -> float | None:
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        return done / elapsed if done > 0 and elapsed > 0 else None

    def eta(self, step: int, total: int) -> float | None:
        rate = self.rate(step)
        return (total - step) / rate if rate else None
