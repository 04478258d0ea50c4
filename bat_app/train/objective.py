"""The diffusion training objective, shared by the trainer and by ALBAT's scoring.

Sample noise, add it at timestep t, and regress the target the scheduler's
``prediction_type`` names: the noise itself (epsilon) or the velocity (v-prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction).")


def per_sample_loss(unet, scheduler, latents: torch.Tensor, hidden: torch.Tensor,
                    noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """MSE between the UNet's prediction and the target, one value per batch item (fp32)."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pred = unet(noisy.to(unet.dtype), timesteps, hidden.to(unet.dtype)).sample
    target = diffusion_target(scheduler, latents, noise, timesteps)
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


def draw_noise(shape, generator: torch.Generator, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps, drawn on the CPU generator so runs match across devices."""
    noise = torch.randn(shape, generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (shape[0],), generator=generator)
    return noise, timesteps
