"""A running training's whole state into a checkpoint and back (``checkpoint.py`` writes the
folders): the LoRA weights, the pivotal tokens, the tail average's kept steps, the optimizer, the
LR schedule and every RNG, so a resumed run continues exactly where the killed one stood."""

from __future__ import annotations

import torch
from peft import set_peft_model_state_dict

from ..models.families.base import split_te_lora
from . import checkpoint as ckpt
from .adapters import ADAPTER, lora_state_dicts
from .pivotal import PivotalTokens
from .tail_average import TailAverage


def restore_state(components, config, path, fingerprint, optimizer, lr_scheduler, generator,
                  pivotal: PivotalTokens | None = None, tail: TailAverage | None = None) -> tuple[int, list[float]]:
    """Load the checkpoint at ``path`` into the adapters, optimizer, schedule and RNGs; the step
    it was taken at and the loss history so far."""
    lora, state = ckpt.load_checkpoint(path, fingerprint)
    if pivotal is not None:
        pivotal.load_checkpoint_state(lora)
    if tail is not None:
        tail.load_checkpoint_state(lora)
    set_peft_model_state_dict(components.denoiser, _strip(lora, "unet."), adapter_name=ADAPTER)
    if config.train_text_encoder:
        indices = components.family.text_encoder_lora_indices
        for index, te_state in split_te_lora(_strip(lora, "text_encoder."), indices).items():
            set_peft_model_state_dict(components.text_encoders[index], te_state, adapter_name=ADAPTER)
    optimizer.load_state_dict(state.optimizer)
    lr_scheduler.load_state_dict(state.lr_scheduler)
    generator.set_state(state.generator)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)
    return state.step, list(state.losses)


def save_state(components, config, out_dir, step, fingerprint, losses, optimizer, lr_scheduler, generator,
               pivotal: PivotalTokens | None = None, tail: TailAverage | None = None) -> None:
    """Checkpoint the training after ``step`` (nothing when checkpoints are off)."""
    if not config.checkpoint_every:
        return
    unet_lora, te_lora = lora_state_dicts(components, config)
    lora = {f"unet.{k}": v for k, v in unet_lora.items()} | {f"text_encoder.{k}": v for k, v in te_lora.items()}
    if pivotal is not None:
        lora |= pivotal.checkpoint_state()
    if tail is not None:
        lora |= tail.checkpoint_state()
    state = ckpt.TrainState(step, fingerprint, list(losses), optimizer.state_dict(), lr_scheduler.state_dict(),
                           generator.get_state(), torch.get_rng_state(),
                           torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    ckpt.save_checkpoint(out_dir, lora, state, keep=config.keep_checkpoints)


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
