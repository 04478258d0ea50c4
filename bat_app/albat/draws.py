"""The (timestep, noise) draws ALBAT scores candidates with: shared by all, stratified over t.

    draws = SharedDraws.make(8, latent_shape=(4, 64, 64), num_train_timesteps=1000, seed=0)
    t, noise, eps = draws.batch(r=3, lo=0, hi=32)   # draw 3, broadcast to candidates 0..31

Why shared: Delta(x) is a mean over R draws; if every candidate got its own draws, two items
would be compared through different timesteps and noises, and at R = 8 that difference is as
large as the difference between the items (measured: with independent draws at R = 4 about 3/4
of the top 30 change with the draw seed). With the *same* R draws for every candidate, the
noise of the estimate is common to all items and largely cancels from their ranking.

Why stratified: the loss and its change under the surrogate depend strongly on t. One t per
stratum [r T / R, (r + 1) T / R) covers the whole schedule with R draws, where R independent
uniform timesteps can leave large parts of it out (and make the seed decide which).

``IndependentDraws`` is the former scheme (each candidate its own unstratified draws), kept to
measure the difference (the stability benchmark) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def stratified_timesteps(count: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """One timestep uniformly inside each of ``count`` equal strata of [0, T), increasing."""
    offsets = torch.rand(count, generator=generator, dtype=torch.float64)
    edges = (torch.arange(count, dtype=torch.float64) + offsets) * num_train_timesteps / count
    return edges.floor().long().clamp(0, num_train_timesteps - 1)


@dataclass(frozen=True)
class SharedDraws:
    """R draws of (timestep, noise, latent sampling noise), the same for every candidate."""

    timesteps: torch.Tensor   # (R,) long, one per stratum
    noise: torch.Tensor       # (R, *latent_shape): the diffusion noise
    latent_eps: torch.Tensor  # (R, *latent_shape): standard normal part of the VAE latent sample

    @classmethod
    def make(cls, count: int, latent_shape: tuple[int, ...], num_train_timesteps: int, seed: int) -> "SharedDraws":
        generator = torch.Generator().manual_seed(seed)
        timesteps = stratified_timesteps(count, num_train_timesteps, generator)
        noise = torch.randn((count, *latent_shape), generator=generator)
        eps = torch.randn((count, *latent_shape), generator=generator)
        return cls(timesteps, noise, eps)

    def __len__(self) -> int:
        return len(self.timesteps)

    def batch(self, r: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(timesteps (B,), noise (B, ...), latent eps (B, ...)) of draw r for candidates lo..hi-1."""
        n = hi - lo
        return (self.timesteps[r].repeat(n), self.noise[r].expand(n, *self.noise.shape[1:]),
                self.latent_eps[r].expand(n, *self.latent_eps.shape[1:]))


class IndependentDraws:
    """The former scheme: every candidate its own uniform timestep and noise in every draw.

    Deterministic for a seed and a candidate count (one generator per draw index, advanced in
    candidate order); only for measuring what sharing and stratifying change.
    """

    def __init__(self, count: int, latent_shape: tuple[int, ...], num_train_timesteps: int, seed: int,
                 candidates: int):
        generator = torch.Generator().manual_seed(seed)
        self.timesteps = torch.randint(0, num_train_timesteps, (count, candidates), generator=generator)
        self.noise = torch.randn((count, candidates, *latent_shape), generator=generator)
        self.latent_eps = torch.randn((count, candidates, *latent_shape), generator=generator)

    def __len__(self) -> int:
        return len(self.timesteps)

    def batch(self, r: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.timesteps[r, lo:hi], self.noise[r, lo:hi], self.latent_eps[r, lo:hi]
