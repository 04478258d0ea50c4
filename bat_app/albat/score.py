"""ALBAT's score: how much a surrogate adapter lowers a candidate's own diffusion loss.

    Delta(x) = mean_r [ l(x, c; phi_ref) - l(x, c; phi_s) ]

over R draws of (latent sample, t, noise) that are *shared* by the two evaluations (common
random numbers: both losses move together with the draw, so their difference has far less
variance than either). phi_ref is the backbone (adapter off) unless another adapter is given.
Identical adapters give Delta = 0 exactly, because both passes run the same arithmetic on the
same inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from peft import LoraConfig, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..train import TrainConfig, train_lora
from ..train.data import Example
from ..train.encode import LatentCache, TextCache, sample_latents
from ..train.objective import draw_noise, per_sample_loss
from ..train.progress import ProgressEvent

SURROGATE = "albat-surrogate"
REFERENCE = "albat-reference"


def surrogate_config(config: TrainConfig, steps: int) -> TrainConfig:
    """The final training's settings on G alone: same rank/targets/lr, fewer steps, UNet only."""
    return replace(config, steps=steps, train_text_encoder=False, prior=False, checkpoint_every=0,
                   lr_schedule="constant", warmup_steps=0)


def train_surrogate(components, images, config: TrainConfig, steps: int, cache_root: Path,
                    progress: Callable | None = None) -> dict[str, torch.Tensor]:
    """Train (or reuse from the cache) the surrogate LoRA phi_s on the user images alone."""
    cfg = surrogate_config(config, steps)
    key = hashlib.sha256(json.dumps({
        "model": str(components.spec.source), "config": cfg.fingerprint(),
        "images": [Example(u.image, "").key for u in images]}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_root) / "surrogates" / f"{key}.safetensors"
    if path.is_file():
        return load_file(path)
    work = path.parent / f"run-{key}"
    result = train_lora(components, images, cfg, work, progress=_relabel(progress, "surrogate"),
                        cache_root=cache_root, export=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(result.unet_lora, path)
    return result.unet_lora


@torch.no_grad()
def loss_reduction(components, examples: Sequence[Example], resolution: int, surrogate: dict[str, torch.Tensor],
                   config: TrainConfig, *, reference: dict[str, torch.Tensor] | None = None, draws: int = 8,
                   batch_size: int = 32, seed: int = 0, cache_root: Path | None = None,
                   progress: Callable | None = None) -> np.ndarray:
    """Delta for each example (its own caption), shape (len(examples),), float64."""
    emit = progress or (lambda e: None)
    stats = LatentCache(components, resolution, cache_root).get(
        examples, progress=lambda d, t: emit(ProgressEvent("encode", d, t, message="candidates")))
    texts = TextCache(components).get([e.caption for e in examples])
    unet, scheduler = components.unet, components.noise_scheduler
    device = components.device
    adapters = _load_adapters(unet, config, surrogate, reference)
    generator = torch.Generator().manual_seed(seed)
    deltas = np.zeros(len(examples), dtype=np.float64)
    try:
        for start in range(0, len(examples), batch_size):
            batch_stats = stats[start:start + batch_size]
            hidden = torch.stack(texts[start:start + batch_size]).to(device)
            total = torch.zeros(len(batch_stats), dtype=torch.float64)
            for _ in range(draws):
                latents = sample_latents(batch_stats, generator, components.vae.config.scaling_factor).to(device)
                noise, t = draw_noise(latents.shape, generator, scheduler.config.num_train_timesteps)
                noise, t = noise.to(device), t.to(device)
                ref_loss = _loss_with(unet, adapters["reference"], scheduler, latents, hidden, noise, t)
                adapted_loss = _loss_with(unet, adapters["surrogate"], scheduler, latents, hidden, noise, t)
                total += (ref_loss - adapted_loss).double().cpu()
            deltas[start:start + len(batch_stats)] = (total / draws).numpy()
            emit(ProgressEvent("score", min(start + batch_size, len(examples)), len(examples)))
    finally:
        for name in (SURROGATE, REFERENCE):
            if name in (getattr(unet, "peft_config", None) or {}):
                unet.delete_adapters(name)
    return deltas


def _load_adapters(unet, config: TrainConfig, surrogate, reference) -> dict[str, str | None]:
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=list(config.target_modules))
    names = {"surrogate": SURROGATE, "reference": None}
    unet.add_adapter(lora, adapter_name=SURROGATE)
    set_peft_model_state_dict(unet, surrogate, adapter_name=SURROGATE)
    if reference is not None:
        unet.add_adapter(lora, adapter_name=REFERENCE)
        set_peft_model_state_dict(unet, reference, adapter_name=REFERENCE)
        names["reference"] = REFERENCE
    return names


def _loss_with(unet, adapter: str | None, scheduler, latents, hidden, noise, t) -> torch.Tensor:
    if adapter is None:
        unet.disable_adapters()
    else:
        unet.enable_adapters()
        unet.set_adapter(adapter)
    return per_sample_loss(unet, scheduler, latents, hidden, noise, t)


def _relabel(progress, stage: str):
    if progress is None:
        return None

    def relabel(event):
        if event.stage == "train":
            event.stage = stage
        progress(event)

    return relabel
