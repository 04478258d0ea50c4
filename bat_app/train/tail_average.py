"""The tail average: the LoRAs of a training's last steps averaged into one, exactly.

A LoRA at a high, constant learning rate does not settle; on the shapes backbone what one step
draws (a marking, a position) comes and goes between steps as much as between training seeds
(docs/shapes.md, twentieth session). Stochastic weight averaging (Izmailov et al. 2018) keeps the
mean of such a trajectory instead of its last point.

A LoRA's weight change is scale * B @ A. The mean of n of them is one LoRA of rank n * r:
B' = [B_1 ... B_n] / n beside each other and A' = [A_1; ...; A_n] stacked, exported with alpha
n * alpha so that alpha' / rank' stays alpha / r. Nothing is approximated; the file is n times
larger. The trigger's pivotal vectors are averaged as they are.

    points = tail_points(300, 3)             # [200, 250, 300]
    unet_lora = average_lora([lora_200, lora_250, lora_300])
"""

from __future__ import annotations

import torch

# The averaged steps span the last third of the training: earlier steps have not learnt the
# subject yet (on shapes, 150 of the recipe's 300 steps lose the markings).
SPAN = 1 / 3


def tail_points(steps: int, n: int) -> list[int]:
    """The ``n`` steps averaged: evenly spaced over the last third, the last one the final step.

    >>> tail_points(300, 3)
    [200, 250, 300]
    >>> tail_points(400, 1)
    [400]
    """
    if n <= 1:
        return [steps]
    span = steps * SPAN
    return sorted({max(1, round(steps - span * i / (n - 1))) for i in range(n)})


def average_lora(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The exact mean of LoRA state dicts (peft ``lora_A``/``lora_B`` or diffusers/kohya
    ``lora.down``/``lora.up`` keys) as one state dict of rank n * r; export it with alpha n * alpha."""
    n = len(states)
    if n == 1:
        return dict(states[0])
    out = {}
    for key in states[0]:
        parts = [s[key] for s in states]
        if "lora_A." in key or ".lora.down." in key or ".lora_down." in key:
            out[key] = torch.cat(parts, 0)  # (r, in) rows stacked
        elif "lora_B." in key or ".lora.up." in key or ".lora_up." in key:
            out[key] = torch.cat(parts, 1) / n  # (out, r) columns side by side
        else:
            raise ValueError(f"{key}: not a LoRA down/up weight; the tail average knows no other tensor")
    return out


def average_vectors(vectors: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The trigger's pivotal vectors, averaged key by key."""
    return {key: torch.stack([v[key] for v in vectors]).mean(0) for key in vectors[0]}


class TailAverage:
    """Keeps the LoRA at each of a training's tail points (``tail_points``) and gives their mean
    at the end; its state travels in checkpoints, so a resumed training averages the same steps."""

    PREFIX = "tail."

    def __init__(self, steps: int, n: int):
        self.n = n
        self.points = set(tail_points(steps, n)) if n > 1 else set()
        self.kept: dict[int, dict[str, dict[str, torch.Tensor]]] = {}

    def keep(self, step: int, unet_lora: dict, te_lora: dict, vectors: dict | None) -> None:
        self.kept[step] = {"unet": unet_lora, "text_encoder": te_lora, "vectors": vectors or {}}

    def mean(self, unet_lora: dict, te_lora: dict, vectors: dict | None):
        """(unet_lora, te_lora, vectors) to export: the mean over the tail points, or as given."""
        if not self.points:
            return unet_lora, te_lora, vectors
        missing = sorted(self.points - set(self.kept))
        if missing:
            raise RuntimeError(f"tail average: the LoRA of steps {missing} was not kept")
        states = [self.kept[s] for s in sorted(self.points)]
        return (average_lora([s["unet"] for s in states]),
                average_lora([s["text_encoder"] for s in states]) if te_lora else te_lora,
                average_vectors([s["vectors"] for s in states]) if vectors else vectors)

    def export_config(self, config):
        """``config`` with the averaged LoRA's rank and alpha (n r, n alpha: the same scale)."""
        import dataclasses

        if not self.points:
            return config
        n = len(self.points)
        return dataclasses.replace(config, rank=config.rank * n, alpha=config.lora_alpha * n)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {f"{self.PREFIX}{step}.{part}.{key}": value for step, parts in self.kept.items()
                for part, tensors in parts.items() for key, value in tensors.items()}

    def load_checkpoint_state(self, lora: dict[str, torch.Tensor]) -> None:
        self.kept = {}
        for name, value in lora.items():
            if name.startswith(self.PREFIX):
                step, part, key = name[len(self.PREFIX):].split(".", 2)
                self.kept.setdefault(int(step), {"unet": {}, "text_encoder": {}, "vectors": {}})[part][key] = value
