"""Encode examples once: VAE latent distributions on disk, text embeddings in memory.

The frozen VAE and text encoder never change during LoRA training, so re-encoding every step
(as diffusers' reference DreamBooth script does) is wasted work. The latent *distribution*
(mean, std) is cached, not one sample of it, so each step still draws a fresh latent exactly
as ``latent_dist.sample()`` would. Cache files are keyed by the VAE's identity, resolution and
the image's pixel hash, so an unchanged image is never encoded twice, across runs and jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..images import prepare_for_training
from ..models import Components
from ..models.families import Cond, unbatch_cond
from .data import Example


def vae_fingerprint(components: Components) -> str:
    """Identity of a VAE: its config plus a checksum of a few of its weights."""
    h = hashlib.sha256(json.dumps(dict(components.vae.config), sort_keys=True, default=str).encode())
    params = list(components.vae.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def to_pixels(example: Example, resolution: int) -> torch.Tensor:
    """PIL -> (3, r, r) float tensor in [-1, 1] (SD's VAE input range)."""
    image = prepare_for_training(example.image, resolution)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


class LatentCache:
    """(mean, std) of each example's VAE latent at one resolution, on disk and in memory."""

    def __init__(self, components: Components, resolution: int, root: Path | None):
        self.components = components
        self.resolution = resolution
        self.folder = None if root is None else Path(root) / "latents" / f"{vae_fingerprint(components)}-{resolution}"
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0  # how many VAE encodes this cache actually ran (tests check reuse)

    def get(self, examples: Sequence[Example], batch_size: int = 8,
            progress: Callable[[int, int], None] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        missing = [e for e in dict((e.key, e) for e in examples).values() if not self._load(e.key)]
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            self._encode(batch)
            if progress:
                progress(min(start + batch_size, len(missing)), len(missing))
        return [self.memory[e.key] for e in examples]

    def _load(self, key: str) -> bool:
        if key in self.memory:
            return True
        if self.folder is None:
            return False
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            return False
        try:
            data = load_file(path)
        except Exception:  # a torn file from a killed process: re-encode it
            return False
        self.memory[key] = (data["mean"], data["std"])
        return True

    @torch.no_grad()
    def _encode(self, batch: Sequence[Example]) -> None:
        vae = self.components.vae
        pixels = torch.stack([to_pixels(e, self.resolution) for e in batch])
        dist = vae.encode(pixels.to(self.components.device, vae.dtype)).latent_dist
        mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
        self.encoded += len(batch)
        for i, example in enumerate(batch):
            entry = (mean[i].contiguous(), std[i].contiguous())
            self.memory[example.key] = entry
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                tmp = self.folder / f".{example.key}.{os.getpid()}.tmp"
                save_file({"mean": entry[0], "std": entry[1]}, tmp)
                os.replace(tmp, self.folder / f"{example.key}.safetensors")  # atomic


def latents_from_stats(components: Components, stats: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       eps: torch.Tensor) -> torch.Tensor:
    """``latent_dist.sample()`` with the given unit noise ``eps``, scaled the family's way."""
    mean = torch.stack([m for m, _ in stats])
    std = torch.stack([s for _, s in stats])
    return components.family.scale_latents(components, mean + std * eps)


def sample_latents(components: Components, stats: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   generator: torch.Generator) -> torch.Tensor:
    """Draw latents like ``latent_dist.sample()`` (scaled) from cached (mean, std)."""
    eps = torch.randn((len(stats), *stats[0][0].shape), generator=generator)
    return latents_from_stats(components, stats, eps)


class TextCache:
    """Frozen text-encoder outputs (the family's conditioning dict) per caption, computed once."""

    def __init__(self, components: Components):
        self.components = components
        self.memory: dict[str, Cond] = {}
        self.encoded = 0

    @torch.no_grad()
    def get(self, captions: Sequence[str], batch_size: int = 64) -> list[Cond]:
        family = self.components.family
        missing = list(dict.fromkeys(c for c in captions if c not in self.memory))
        for start in range(0, len(missing), batch_size):
            batch = missing[start:start + batch_size]
            cond = family.encode(self.components, family.tokenize(self.components, batch))
            self.encoded += len(batch)
            for caption, c in zip(batch, unbatch_cond(cond)):
                self.memory[caption] = c
        return [self.memory[c] for c in captions]
