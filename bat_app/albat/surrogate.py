"""ALBAT's surrogate: a short LoRA phi_s trained on the user images alone, cached per subject.

    phi_s = train_surrogate(components, images, config, steps=38, cache_root=cache)

Same rank, targets and learning rate as the final training (so that phi_s points where the
final LoRA will go), UNet only, constant LR, a fraction of the final steps. The cache key is
the model, the settings and the images' pixel hashes: every method and job on the same subject
(and training seed) reuses one surrogate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..paths import path_lock, private_tmp
from ..train import TrainConfig, train_lora
from ..train.data import Example, instance_examples




def surrogate_config(config: TrainConfig, steps: int) -> TrainConfig:
    """The final training's settings on G alone: same rank/targets/lr, fewer steps, UNet only,
    the LoRA from the first step (its few steps are all the surrogate has to point with)."""
    return replace(config, steps=steps, train_text_encoder=False, prior=False, checkpoint_every=0,
                   lr_schedule="constant", warmup_steps=0, save_every=0, step_choices=0, embeddings_only_steps=0,
                   freeze_embeddings_after=False)


def surrogate_path(components, images, config: TrainConfig, steps: int, cache_root: Path) -> Path:
    """Where the surrogate for these images and settings is cached: the key is the model, the
    surrogate's settings, the images' pixel hashes and, with captions, the captions."""
    cfg = surrogate_config(config, steps)
    key = hashlib.sha256(json.dumps({
        "model": str(components.spec.source), "config": cfg.fingerprint(),
        # another VAE (SDXL's fp16 fix) gives other latents, so another surrogate
        **({"vae": str(components.spec.vae)} if components.spec.vae is not None else {}),
        "images": [Example(u.image, "").key for u in images],
        # the same photos with other captions train another surrogate
        **({"captions": [e.caption for e in instance_examples(images, cfg.prompt, cfg.token, True, cfg.caption_mix)]}
           if cfg.captions else {})}, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_root) / "surrogates" / f"{key}.safetensors"


def train_surrogate(components, images, config: TrainConfig, steps: int, cache_root: Path,
                    progress: Callable | None = None, cancel: Callable[[], bool] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Train (or reuse from the cache) the surrogate LoRA phi_s on the user images alone."""
    path = surrogate_path(components, images, config, steps, cache_root)
    with path_lock(path):  # another lane training this very surrogate: wait, then read its file
        if path.is_file():
            return load_file(path)
        work = path.parent / f"run-{path.stem}"
        result = train_lora(components, images, surrogate_config(config, steps), work,
                            progress=_relabel(progress, "surrogate"), cancel=cancel, cache_root=cache_root,
                            export=False)
        _save(result.unet_lora, path)
        return result.unet_lora


def surrogate_snapshot(components, images, config: TrainConfig, steps: int, cache_root: Path):
    """``train_lora``'s ``snapshot`` for a plain training (the user images alone, ``config``) whose
    first ``steps`` steps *are* the surrogate: (step, save) that caches its UNet LoRA at that step,
    so ALBAT's selection then finds it instead of training it again. None when the two runs
    differ (a text-encoder LoRA, prior preservation, a warm-up or a decaying learning rate) or
    the surrogate is cached already.

    Same settings, seed and images give the same batches, noise and updates up to ``steps``:
    the constant learning rate does not depend on the run's length.
    """
    if surrogate_config(config, steps) != replace(config, steps=steps, checkpoint_every=0, save_every=0,
                                                  step_choices=0):
        return None
    path = surrogate_path(components, images, config, steps, cache_root)
    if path.is_file() or steps > config.steps:
        return None

    return steps, lambda unet_lora: _save(unet_lora, path)


def _save(unet_lora: dict[str, torch.Tensor], path: Path) -> None:
    """Write a surrogate to the cache whole or not at all (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tmp(path)
    save_file(unet_lora, tmp)
    tmp.replace(path)


def _relabel(progress, stage: str):
    if progress is None:
        return None

    def relabel(event):
        if event.stage == "train":
            event.stage = stage
        progress(event)

    return relabel
