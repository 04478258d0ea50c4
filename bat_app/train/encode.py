"""Encode examples once: VAE latent distributions on disk, text embeddings in memory.

The frozen VAE and text encoder never change during LoRA training, so re-encoding every step
(as diffusers' reference DreamBooth script does) is wasted work. The latent *distribution*
(mean, std) is cached, not one sample of it, so each step still draws a fresh latent exactly
as ``latent_dist.sample()`` would. Cache files are keyed by the VAE's identity, resolution and
the image's pixel hash (and, for a family with aspect-ratio buckets, the bucket's shape), so an
unchanged image is never encoded twice, across runs and jobs.

With ``refine`` steps (``TrainConfig.refine_latents``, the user's photos only) the mean is then
moved to where the *decoder* reproduces the image best: the encoder blurs away thin detail that
the decoder can draw (a 1-px outline on a light background, on shapes), and the LoRA can only
learn what its target latents hold. With a subject weight the subject's pixels (the photo on a
plain background, ``subject_mask``) count that many times more than the backdrop's, so the
decoder is made to draw the subject's marks rather than to repaint the backdrop. Refined means are
cached under their own key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from ..images import prepare_for_training
from ..images.buckets import Placement, bucket_sizes, fit_to_bucket, place, split_by_bucket
from ..images.subject_mask import subject_mask
from ..models import Components
from ..models.families import Cond, unbatch_cond
from ..paths import private_tmp
from ..progress import ProgressEvent
from .config import TrainConfig
from .data import Example, ExampleGroup

log = logging.getLogger(__name__)


def vae_fingerprint(components: Components) -> str:
    """Identity of a VAE: its config plus a checksum of a few of its weights."""
    h = hashlib.sha256(json.dumps(dict(components.vae.config), sort_keys=True, default=str).encode())
    params = list(components.vae.parameters())
    for p in (params[0], params[len(params) // 2], params[-1]):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def training_image(example: Example, resolution: int, placement: Placement | None = None) -> Image.Image:
    """The pixels the VAE sees: the centre-cropped ``resolution`` square, or with a
    ``placement`` the image fitted to its bucket."""
    return prepare_for_training(example.image, resolution) if placement is None \
        else fit_to_bucket(example.image, placement)


def to_pixels(example: Example, resolution: int, placement: Placement | None = None) -> torch.Tensor:
    """PIL -> (3, h, w) float tensor in [-1, 1] (SD's VAE input range)."""
    array = np.asarray(training_image(example, resolution, placement), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def loss_weight_map(example: Example, resolution: int, placement: Placement | None, latent_hw: tuple[int, int],
                    background_weight: float) -> torch.Tensor | None:
    """(1, h, w) loss weights on the example's latent grid: 1 on every cell that holds any of
    the subject, ``background_weight`` elsewhere; None when its photo has no plain background
    (``subject_mask``), which then trains whole."""
    mask = subject_mask(training_image(example, resolution, placement))
    if mask is None:
        return None
    pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    # Max pooling: a latent cell carries its whole patch, so a cell with a bit of subject is subject.
    cells = F.adaptive_max_pool2d(pixels, latent_hw)[0]
    return background_weight + (1.0 - background_weight) * (cells > 0).float()


def subject_loss_weights(group: ExampleGroup, stats, latents: LatentCache, config: TrainConfig, resolution: int,
                         emit) -> list[torch.Tensor | None]:
    """Masked training (``config.background_weight`` < 1): the user's photos on a plain
    background get their background's latent cells down-weighted. Only the instance group:
    class and backbone images are there to be learnt whole."""
    if group.role != "instance" or config.background_weight >= 1:
        return []
    weights = [loss_weight_map(e, resolution, latents.placement(e), tuple(mean.shape[-2:]), config.background_weight)
               for e, (mean, _) in zip(group.examples, stats)]
    masked = sum(w is not None for w in weights)
    names = list(dict.fromkeys(e.name for e, w in zip(group.examples, weights) if w is None))
    message = f"masked training: {masked} of {len(weights)} photos on a plain background" + (
        f"; trained whole: {', '.join(names)}" if names else "")
    log.info(message)
    emit(ProgressEvent("encode", 1, 1, message=message))
    return weights if masked else []


def stack_loss_weights(maps: list[torch.Tensor | None], hw, device) -> torch.Tensor | None:
    """A batch's (b, 1, h, w) loss weights; ones for the examples without any; None for none."""
    if all(m is None for m in maps):
        return None
    return torch.stack([torch.ones(1, *hw) if m is None else m for m in maps]).to(device)


REFINE_LR = 0.05  # Adam's step on the latent; on shapes 50 steps cut the decoder's error 2-4x (docs/shapes.md)


def refine_mean(vae, pixels: torch.Tensor, mean: torch.Tensor, steps: int, anchor: float = 0.0,
                lr: float = REFINE_LR, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder inversion: ``steps`` Adam steps from the encoder's ``mean`` (1, c, h, w) toward the
    latent whose decoding is closest (mean squared error, each pixel times ``weights`` (1, 1, H, W)
    when given) to ``pixels`` (1, 3, H, W, in [-1, 1]), with ``anchor`` times the mean squared
    distance to ``mean`` added, which keeps the latent where the encoder's latents are. Only the
    latent gets gradients (``autograd.grad``): the frozen VAE's weights stay untouched."""
    start = mean.detach().float()
    z = start.clone().requires_grad_(True)
    target = pixels.float()
    optimizer = torch.optim.Adam([z], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            error = (vae.decode(z.to(vae.dtype)).sample.float() - target).pow(2)
            if weights is not None:
                error = error * weights
            loss = error.mean() + anchor * (z - start).pow(2).mean()
            (z.grad,) = torch.autograd.grad(loss, z)
            optimizer.step()
    return z.detach()


def subject_pixel_weights(example: Example, resolution: int, placement: Placement | None,
                          subject_weight: float) -> torch.Tensor | None:
    """(1, 1, H, W) refinement weights: ``subject_weight`` on the subject's pixels, 1 on the
    backdrop; None when the weight is 1 or the photo has no plain background (``subject_mask``)."""
    if subject_weight == 1:
        return None
    mask = subject_mask(training_image(example, resolution, placement))
    if mask is None:
        return None
    subject = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    return 1.0 + (subject_weight - 1.0) * subject


class LatentCache:
    """(mean, std) of each example's VAE latent at one resolution, on disk and in memory.

    With ``buckets`` (the trainer passes ``family.uses_buckets``) each image is encoded at the
    aspect-ratio bucket closest to its shape (:meth:`placement`) instead of as a centre-cropped
    square, and the bucket's (h, w) is part of its cache key: ``<pixel hash>-<h>x<w>``.
    """

    def __init__(self, components: Components, resolution: int, root: Path | None, buckets: bool = False):
        self.components = components
        self.resolution = resolution
        self.buckets = bucket_sizes(resolution, components.family.bucket_step(components)) if buckets else None
        self.folder = None if root is None else Path(root) / "latents" / f"{vae_fingerprint(components)}-{resolution}"
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0  # how many VAE encodes this cache actually ran (tests check reuse)

    def placement(self, example: Example) -> Placement | None:
        """Where the example's image goes in its bucket (None without buckets: the square crop)."""
        if self.buckets is None:
            return None
        width, height = example.image.size
        return place(height, width, self.buckets)

    def key(self, example: Example, refine: int = 0, anchor: float = 0.0, subject_weight: float = 1.0) -> str:
        placement = self.placement(example)
        key = example.key if placement is None else f"{example.key}-{placement.bucket[0]}x{placement.bucket[1]}"
        if refine:
            key += f"-refine{refine}"
            if anchor:
                key += f"-anchor{anchor:g}"
            if subject_weight != 1:
                key += f"-subject{subject_weight:g}"
        return key

    def get(self, examples: Sequence[Example], batch_size: int = 8,
            progress: Callable[[int, int], None] | None = None,
            refine: int = 0, anchor: float = 0.0,
            subject_weight: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, std) per example; with ``refine`` the mean is decoder-inverted (``refine_mean``),
        the subject's pixels weighted ``subject_weight`` (``subject_pixel_weights``)."""
        keys = [self.key(e, refine, anchor, subject_weight) for e in examples]
        missing = [(k, e) for k, e in dict(zip(keys, examples)).items() if not self._load(k)]
        # One VAE batch per bucket (a batch stacks images of one shape), at most batch_size each.
        shapes = [None if p is None else p.bucket for p in (self.placement(e) for _, e in missing)]
        batches = [group[i:i + batch_size] for group in split_by_bucket(shapes)
                   for i in range(0, len(group), batch_size)]
        done = 0
        for batch in batches:
            self._encode([missing[i] for i in batch], refine, anchor, subject_weight)
            done += len(batch)
            if progress:
                progress(done, len(missing))
        return [self.memory[k] for k in keys]

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
    def _encode(self, batch: Sequence[tuple[str, Example]], refine: int = 0, anchor: float = 0.0,
                subject_weight: float = 1.0) -> None:
        vae = self.components.vae
        pixels = torch.stack([to_pixels(e, self.resolution, self.placement(e)) for _, e in batch])
        pixels = pixels.to(self.components.device, vae.dtype)
        dist = vae.encode(pixels).latent_dist
        mean, std = dist.mean, dist.std.float().cpu()
        if refine:  # one image at a time: a decoder's backward pass at SD sizes is memory-hungry
            weights = [subject_pixel_weights(e, self.resolution, self.placement(e), subject_weight)
                       for _, e in batch]
            mean = torch.cat([refine_mean(vae, pixels[i:i + 1], mean[i:i + 1], refine, anchor,
                                          weights=None if w is None else w.to(pixels.device))
                              for i, w in enumerate(weights)])
        mean = mean.float().cpu()
        self.encoded += len(batch)
        for i, (key, _) in enumerate(batch):
            entry = (mean[i].contiguous(), std[i].contiguous())
            self.memory[key] = entry
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                final = self.folder / f"{key}.safetensors"
                tmp = private_tmp(final)
                save_file({"mean": entry[0], "std": entry[1]}, tmp)
                os.replace(tmp, final)  # atomic


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
