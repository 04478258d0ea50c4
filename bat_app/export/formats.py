"""LoRA weights in the two formats users load: diffusers and kohya (AUTOMATIC1111 / ComfyUI).

The key layouts are the model family's (``components.family.save_lora`` / ``to_kohya``, built
on the converters diffusers ships); this module writes the files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def save_diffusers(family, out_dir: Path, denoiser_lora: dict[str, torch.Tensor], te_lora: dict[str, torch.Tensor],
                   rank: int, alpha: float, targets: list[str], te_targets: list[str]) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` (loads with ``pipe.load_lora_weights``)."""
    return family.save_lora(Path(out_dir), denoiser_lora, te_lora, rank, alpha, targets, te_targets, DIFFUSERS_FILE)


def save_kohya(family, path: Path, denoiser_lora, te_lora, alpha: float, metadata: dict[str, str]) -> Path:
    # kohya's own files carry ss_* metadata that A1111's UI shows; keep the useful few.
    save_file(family.to_kohya(denoiser_lora, te_lora, alpha), path,
              metadata={k: str(v) for k, v in metadata.items()})
    return path
