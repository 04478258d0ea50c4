"""The backbone's own losses on pool items, kept between jobs: half of ALBAT's scoring passes.

ALBAT's Delta(x) = l_r(x; backbone) - l_r(x; surrogate) over R draws that every candidate
shares (draws.py). The first term depends on nothing a job brings: not the photos, not the
surrogate, only the weights, the item (pixels and caption) and the draw plan (R, the score seed,
the latent shape). So it is computed once per item and plan and kept under the cache root; a
later job (another subject, other settings, the same photos again) whose shortlist meets the
item again spends only the surrogate's pass on it.

One small ``.npy`` per (plan, item): the item's R reference losses, NaN where a draw was never
evaluated (racing stops scoring most candidates early). Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..models.fingerprint import model_fingerprint
from ..paths import private_tmp


class ReferenceLossCache:
    """``known[i, r]``: the reference loss of example i at draw r, NaN when not cached yet."""

    def __init__(self, components, root: Path, resolution: int, plan: dict, keys: Sequence[str]):
        identity = {"weights": model_fingerprint(components), "resolution": resolution, **plan}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(root) / "reference-losses" / digest
        self.draws = int(plan["draws"])
        self.paths = [self.folder / f"{key}.npy" for key in keys]
        self.known = np.stack([self._read(p) for p in self.paths]) if self.paths else np.zeros((0, self.draws))
        self.changed: set[int] = set()

    @staticmethod
    def item_key(example_key: str, caption: str) -> str:
        return hashlib.sha256(f"{example_key}\n{caption}".encode()).hexdigest()[:32]

    def has(self, lo: int, hi: int, r: int) -> bool:
        return bool(np.isfinite(self.known[lo:hi, r]).all())

    def put(self, lo: int, hi: int, r: int, losses: np.ndarray) -> None:
        self.known[lo:hi, r] = losses
        self.changed.update(range(lo, hi))

    def save(self) -> None:
        if not self.changed:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for i in sorted(self.changed):
            tmp = private_tmp(self.paths[i], ".tmp.npy")
            np.save(tmp, self.known[i])
            os.replace(tmp, self.paths[i])
        self.changed.clear()

    def _read(self, path: Path) -> np.ndarray:
        try:
            values = np.load(path)
        except (OSError, ValueError):
            return np.full(self.draws, np.nan)
        return values if values.shape == (self.draws,) else np.full(self.draws, np.nan)
