"""LoRA weights in the two formats users load: diffusers and kohya (AUTOMATIC1111 / ComfyUI).

Both conversions use the helpers diffusers ships (``convert_state_dict_to_diffusers``,
``convert_state_dict_to_kohya``); this module only adds what they leave out: the real
``alpha`` (diffusers' kohya converter writes alpha = rank) and SD 1.x's ``lora_te_`` prefix
(the converter writes SDXL's ``lora_te1_``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from safetensors.torch import save_file

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def adapter_metadata(rank: int, alpha: float, targets: list[str]) -> dict:
    """The LoraConfig kwargs diffusers stores beside the weights, so alpha != rank loads right."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(targets)}


def canonical_text_encoder_keys(te_lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's CLIPTextModel has no ``text_model`` level; LoRA files in the wild (and
    transformers 4) name it, so files are written with it and load in either world."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in te_lora.items()}


def save_diffusers(out_dir: Path, unet_lora: dict[str, torch.Tensor], te_lora: dict[str, torch.Tensor],
                   rank: int, alpha: float, unet_targets: list[str], te_targets: list[str]) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` (loads with ``pipe.load_lora_weights``)."""
    te_lora = canonical_text_encoder_keys(te_lora)
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=convert_state_dict_to_diffusers(unet_lora),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(te_lora) if te_lora else None,
        unet_lora_adapter_metadata=adapter_metadata(rank, alpha, unet_targets),
        text_encoder_lora_adapter_metadata=adapter_metadata(rank, alpha, te_targets) if te_lora else None,
        weight_name=DIFFUSERS_FILE,
        safe_serialization=True,
    )
    return Path(out_dir) / DIFFUSERS_FILE


def to_kohya(unet_lora: dict[str, torch.Tensor], te_lora: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """kohya-ss keys (``lora_unet_…``, ``lora_te_…``, ``….alpha``) from peft state dicts."""
    te_lora = canonical_text_encoder_keys(te_lora)
    peft = {f"unet.{k}": v for k, v in unet_lora.items()} | {f"text_encoder.{k}": v for k, v in te_lora.items()}
    converted = convert_state_dict_to_kohya(peft)
    out = {}
    for key, value in converted.items():
        key = key.replace("lora_te1_", "lora_te_", 1)  # SD 1.x/2.x have one text encoder
        if key.endswith(".alpha"):
            value = torch.tensor(float(alpha))
        out[key] = value.contiguous()
    return out


def save_kohya(path: Path, unet_lora, te_lora, alpha: float, metadata: dict[str, str]) -> Path:
    # kohya's own files carry ss_* metadata that A1111's UI shows; keep the useful few.
    save_file(to_kohya(unet_lora, te_lora, alpha), path, metadata={k: str(v) for k, v in metadata.items()})
    return path
