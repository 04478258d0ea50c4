"""Frozen text encoders off the GPU while the denoiser trains.

When neither a text-encoder LoRA nor pivotal vectors are trained, every caption's conditioning
is computed once before the first step (``TextCache``), and the encoders would sit idle on the
GPU for the whole run: FLUX.1's T5-XXL alone is ~9.5 GB in bf16, SDXL's two CLIPs ~1.6 GB. They
move to the CPU for the training loop and back when it ends (previews, "Try it", class images
and the next method of a compare run use them where the model is), also when training fails or
is cancelled.

    with idle_text_encoders_offloaded(components, needed=any(e.live for e in encoded)):
        ...  # the training loop
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def idle_text_encoders_offloaded(components, needed: bool, to: str = "cpu") -> Iterator[list]:
    """Move the text encoders to ``to`` for the block unless ``needed`` (the loop encodes
    prompts itself) or they are there already (a CPU run); yields the encoders it moved."""
    home = components.device
    moved = [] if needed or home.type == torch.device(to).type else list(components.text_encoders)
    for encoder in moved:
        encoder.to(to)
    if moved and home.type == "cuda":
        torch.cuda.empty_cache()  # hand the freed blocks back, so the denoiser's peak can use them
    try:
        yield moved
    finally:
        for encoder in moved:
            encoder.to(home)
