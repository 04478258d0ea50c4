"""Writing a trained LoRA: diffusers and kohya safetensors, model card, loss curve, log.

    files = export_lora(components, config, "out/", unet_lora, te_lora, losses=losses)
    files["diffusers"]  # out/pytorch_lora_weights.safetensors
    files["kohya"]      # out/sks_dog_kohya.safetensors (AUTOMATIC1111 / ComfyUI)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import ExportError
from .embeddings import save_embeddings
from .formats import DIFFUSERS_FILE, save_diffusers, save_kohya
from .model_card import base_model_of, model_card
from .plots import loss_curve

__all__ = ["DIFFUSERS_FILE", "export_lora", "kohya_file_name", "loss_curve", "model_card"]


def kohya_file_name(config) -> str:
    return f"{config.token}_{config.class_noun.replace(' ', '_')}_kohya.safetensors"


def export_lora(components, config, out_dir, unet_lora, te_lora, *, losses=(), method="dreambooth-lora",
                extra: dict | None = None, embeddings=None) -> dict[str, Path]:
    """Write every output of a finished training into ``out_dir``; returns name -> path.

    ``embeddings``: the trigger's pivotal-tuning vectors, written as ``<trigger>.safetensors``
    (see :mod:`bat_app.export.embeddings`); without them the LoRA alone cannot draw the subject.
    """
    out_dir = Path(out_dir)
    config = config.resolve_targets(components.family)
    needed = 3 * sum(v.numel() * 4 for v in (unet_lora | te_lora).values()) + 1_000_000
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise ExportError(f"Only {free // 2**20} MiB free in {out_dir}; the LoRA files need about "
                          f"{needed // 2**20} MiB. Free some disk space and run export again (training is saved "
                          f"in the checkpoint; --resume finishes instantly).")
    base = base_model_of(components.spec)  # the real model: "sd15" is named by its hub id
    kohya_name = kohya_file_name(config)
    family = components.family
    meta = {"ss_base_model_version": family.kohya_version, "ss_network_dim": config.rank, "ss_network_alpha": config.lora_alpha,
            "ss_output_name": Path(kohya_name).stem, **base.metadata(), "bat_trigger": config.prompt,
            "bat_method": method}
    try:
        files = {
            "diffusers": save_diffusers(family, out_dir, unet_lora, te_lora, config.rank, config.lora_alpha,
                                        list(config.target_modules), list(config.text_encoder_targets)),
            "kohya": save_kohya(family, out_dir / kohya_name, unet_lora, te_lora, config.lora_alpha, meta),
        }
        if embeddings is not None:
            files["embeddings"] = save_embeddings(out_dir, config.token, embeddings)
    except OSError as exc:
        raise ExportError(f"Could not write the LoRA files to {out_dir}: {exc}. Check the folder and free space.") from exc
    card = out_dir / "README.md"
    if components.spec.vae is not None:  # trained on another VAE's latents: the card says which
        extra = {**(extra or {}), "vae": str(components.spec.vae)}
    card.write_text(model_card(config, base, kohya_name, method=method, extra=extra,
                               pipeline=family.pipeline_class().__name__))
    files["card"] = card
    if losses:
        files["loss_curve"] = out_dir / "loss_curve.png"
        loss_curve(list(losses)).save(files["loss_curve"])
    files["log"] = out_dir / "training_log.json"
    files["log"].write_text(json.dumps({"config": config.to_dict(), "base_model": base.id,
                                        "base_revision": base.revision, "base_license": base.license,
                                        "pipeline": family.pipeline_class().__name__, "method": method,
                                        "losses": list(losses), **(extra or {})}, indent=1))
    return files
