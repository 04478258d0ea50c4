"""Measuring what a selection did to a training run: fixed-draw losses and paired statistics.

    probe = FixedDrawLoss(components, examples, resolution, draws=8, seed=1234)
    losses = probe()                 # (N,) loss of the UNet as it is now (any adapter active)
    mean, lo, hi = paired_bootstrap(albat - shortlist)   # 95% CI of a paired difference

``FixedDrawLoss`` fixes everything but the weights: the same latent samples, timesteps
(stratified over the schedule, as in scoring) and noises for every arm and checkpoint, so a
difference between two runs' losses is a difference of their weights, not of the draws.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch

from ..train.data import Example
from ..train.encode import LatentCache, latents_from_stats
from .draws import SharedDraws


class FixedDrawLoss:
    """Per-example diffusion loss over R fixed stratified draws, for the UNet in its current state.

    Captions go through the text encoder at each call, so a trained text-encoder LoRA or
    pivotal vectors count; ``caption_map`` may rewrite a caption first (e.g. to expand a
    pivotal trigger into its tokens).
    """

    def __init__(self, components, examples: Sequence[Example], resolution: int, *, draws: int = 8, seed: int = 0,
                 cache_root=None, batch_size: int = 64):
        self.components = components
        self.captions = [e.caption for e in examples]
        self.stats = LatentCache(components, resolution, cache_root).get(examples)
        shape = tuple(self.stats[0][0].shape)
        self.draws = SharedDraws.make(draws, shape, components.family.num_timesteps(components), seed)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, caption_map: Callable[[str], str] | None = None) -> np.ndarray:
        comps = self.components
        unet, device, family = comps.denoiser, comps.device, comps.family
        was_training = unet.training
        unet.eval()
        out = np.zeros((len(self.draws), len(self.captions)), dtype=np.float64)
        try:
            with _autocast(comps):
                for lo in range(0, len(self.captions), self.batch_size):
                    hi = min(lo + self.batch_size, len(self.captions))
                    captions = [caption_map(c) if caption_map else c for c in self.captions[lo:hi]]
                    cond = family.encode(comps, family.tokenize(comps, captions))
                    for r in range(len(self.draws)):
                        t, noise, eps = self.draws.batch(r, lo, hi)
                        latents = latents_from_stats(comps, self.stats[lo:hi], eps).to(device)
                        loss = family.loss(comps, latents, cond, noise.to(device), t.to(device))
                        out[r, lo:hi] = loss.double().cpu().numpy()
        finally:
            unet.train(was_training)
        return out.mean(axis=0)


def paired_bootstrap(differences: Sequence[float], *, resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean paired difference and its percentile bootstrap interval,
    resampling the pairs (one per subject and training seed) with replacement."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(d.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def area_over_steps(steps: Sequence[int], values: Sequence[float]) -> float:
    """Trapezoid area under values(step) divided by the step span: the curve's mean level."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(steps) == 1:
        return float(values[0])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def _autocast(components):
    if components.device.type == "cuda" and components.dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=components.dtype)
    return contextlib.nullcontext()
