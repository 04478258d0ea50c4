"""The one progress-event type of every long step (training, selection, pool building, jobs),
and a steady it/s + ETA estimate; ``TqdmProgress`` turns the events into the CLI's tqdm bars.

Orchestrators (the trainer, a compare run, ``pool build``, a job) call ``progress(event)``; the
CLI turns events into tqdm bars, a job records them for the web app's progress and ETA.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class ProgressEvent:
    stage: str                  # "prepare", "class_images", "encode", "train", "export", "pool", "embed", ...
    step: int
    total: int | None           # None: not known yet (a streamed pool source)
    loss: float | None = None
    it_per_s: float | None = None
    eta_s: float | None = None
    message: str = ""
    method: str | None = None   # set by a compare run: which method this step belongs to
    items: int | None = None    # pool building: items kept so far
    skipped: int | None = None  # pool building: source records skipped so far

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


class TqdmProgress:
    """ProgressEvents -> one tqdm bar per stage (loss and ETA in the postfix)."""

    def __init__(self):
        self.bar = None
        self.stage = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        stage = f"{event.method}: {event.stage}" if event.method else event.stage
        if stage != self.stage or self.bar is None or self.bar.total != event.total:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=event.total, desc=stage, unit="step" if event.stage == "train" else "it",
                            initial=event.step if event.stage == "train" else 0, dynamic_ncols=True)
        self.bar.n = event.step
        if event.loss is not None:
            self.bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        if event.message:
            self.bar.set_description(f"{stage} ({event.message})", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
