"""The random draws of the diffusion objective, shared by the trainer and ALBAT's scoring.

The loss itself is the model family's (``components.family.loss``): epsilon or v-prediction
for SD, flow matching for the flow families.
"""

from __future__ import annotations

import torch


def draw_noise(shape, generator: torch.Generator, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps, drawn on the CPU generator so runs match across devices."""
    noise = torch.randn(shape, generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    return noise, timesteps
