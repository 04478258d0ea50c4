"""Training checkpoints: LoRA weights, optimizer, LR schedule, RNG states, step, loss history.
Also the LoRA of an earlier step, exported as users load it (``save_step``, ``TrainConfig.save_every``).

A checkpoint is a folder ``checkpoints/step-000100`` written atomically (a temp folder renamed
into place), so a process killed mid-write leaves the previous checkpoint intact. Resuming
restores every piece of state the loop reads, so a resumed run continues exactly.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

STATE_FILE = "trainer_state.pt"
LORA_FILE = "lora.safetensors"
STEPS_DIR = "steps"


@dataclass
class TrainState:
    step: int
    fingerprint: str
    losses: list[float]
    optimizer: dict
    lr_scheduler: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    cuda_rng: list | None = None


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def save_checkpoint(out_dir: Path, lora: dict[str, torch.Tensor], state: TrainState, keep: int = 2) -> Path:
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in lora.items()}, tmp / LORA_FILE)
    torch.save(state.__dict__, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out_dir: Path) -> list[Path]:
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file() and (p / LORA_FILE).is_file())


def load_checkpoint(path: Path, fingerprint: str) -> tuple[dict[str, torch.Tensor], TrainState]:
    try:
        lora = load_file(path / LORA_FILE)
        raw = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        state = TrainState(**raw)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {path} is unreadable ({type(exc).__name__}: {exc}). "
                              f"Delete it to resume from the one before, or start over without --resume.") from exc
    if state.fingerprint != fingerprint:
        raise CheckpointError(
            f"Checkpoint {path} was made with different training settings (fingerprint "
            f"{state.fingerprint} != {fingerprint}). Resume with the same settings, or use a new --out.")
    return lora, state


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_step(components, config, out_dir: Path, step: int, unet_lora: dict, te_lora: dict,
              embeddings: dict | None) -> Path:
    """The LoRA after ``step`` exported as the final one is (diffusers and kohya files, trigger
    embeddings, model card) in ``out_dir/steps/step-000200``: a folder users, ``sample_images``
    and diffusers load as it is, and the app serves when the user keeps that step."""
    import dataclasses

    from ..export import export_lora

    folder = Path(out_dir) / STEPS_DIR / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    export_lora(components, dataclasses.replace(config, steps=step), folder, unet_lora, te_lora,
                extra={"exported_at_step": step, "of_steps": config.steps}, embeddings=embeddings)
    return folder


def saved_steps(out_dir: Path) -> dict[int, Path]:
    """step -> folder of the LoRAs ``save_step`` wrote in ``out_dir``, in step order."""
    root = Path(out_dir) / STEPS_DIR
    found = sorted(root.glob("step-*")) if root.is_dir() else []
    return {int(p.name.split("-")[1]): p for p in found if p.name.split("-")[1].isdigit()}
