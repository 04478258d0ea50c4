"""Small training helpers shared by the Shapes-world stages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int, floor: float = 0.05):
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` x the peak."""
    warmup = max(1, warmup)
    steps = max(steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / (steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def save_half(net: torch.nn.Module, folder: Path, meta_file: str, meta: dict) -> None:
    """``folder/model.safetensors`` (floats in fp16: the small shapes networks ship in assets/)
    and ``folder/<meta_file>``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / meta_file).write_text(json.dumps(meta, indent=2) + "\n")


def load_half(net: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """``net`` with the weights ``save_half`` wrote into ``folder``, back in fp32."""
    from safetensors.torch import load_file

    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in load_file(str(Path(folder) / "model.safetensors")).items()})
    return net
