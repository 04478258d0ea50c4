"""Stable Diffusion 1.x/2.x (and the shapes backbone): one CLIP text encoder, a UNet, epsilon
or v-prediction on DDPM timesteps, kohya keys ``lora_unet_`` / ``lora_te_``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Cond, Family, Part, adapter_metadata, split_te_lora, te_lora_prefix, weighted_mean


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What a DDPM-trained denoiser regresses: the noise (epsilon) or the velocity."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction).")


def canonical_text_encoder_keys(te_lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's CLIPTextModel has no ``text_model`` level; LoRA files in the wild (and
    transformers 4) name it, so files are written with it and load in either world."""
    return {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in te_lora.items()}


class StableDiffusion(Family):
    name = "sd"
    display_name = "SD 1.x/2.x"
    pipeline_classes = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})
    kohya_version = "sd_v1"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    kohya_te_prefixes = {"lora_te1_": "lora_te_"}  # diffusers' converter writes SDXL's te1

    def parts(self) -> tuple[Part, ...]:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        return (Part("denoiser", UNet2DConditionModel, "unet"), Part("vae", AutoencoderKL, "vae"),
                Part("text_encoder", CLIPTextModel, "text_encoder"))

    def finish_loading(self, loaded: dict, spec, load_tokenizer) -> dict:
        te = loaded.pop("text_encoder")
        return {**loaded, "text_encoders": [te], "tokenizers": [load_tokenizer("tokenizer", te)]}

    # --- text -------------------------------------------------------------------------
    def encode(self, components, ids: Sequence[torch.Tensor]) -> Cond:
        te = components.text_encoders[0]
        return {"hidden": te(ids[0].to(te.device))[0]}

    # --- the objective ------------------------------------------------------------------
    def loss(self, components, latents, cond, noise, timesteps, weight=None):
        unet, scheduler = components.denoiser, components.noise_scheduler
        # components.dtype, not unet.dtype: diffusers' property walks every parameter on each call
        # (7% of a shapes training step, measured with cProfile)
        dtype = components.dtype
        noisy = scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy.to(dtype), timesteps, cond["hidden"].to(dtype), **self.added_kwargs(cond, dtype)).sample
        target = diffusion_target(scheduler, latents, noise, timesteps)
        return weighted_mean(F.mse_loss(pred.float(), target.float(), reduction="none"), weight)

    def added_kwargs(self, cond: Cond, dtype: torch.dtype) -> dict:
        return {}

    # --- sampling and export ------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def pipeline(self, components, scheduler=None):
        if scheduler is None:
            from diffusers import DDIMScheduler

            # DDIM shares the training scheduler's config (v-prediction, zero-SNR, spacing).
            scheduler = DDIMScheduler.from_config(components.noise_scheduler.config)
        pipe = self.pipeline_class()(
            vae=components.vae, text_encoder=components.text_encoders[0], tokenizer=components.tokenizers[0],
            unet=components.denoiser, scheduler=scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_lora(self, out_dir, denoiser_lora, te_lora, rank, alpha, targets, te_targets, file_name) -> Path:
        from diffusers.utils import convert_state_dict_to_diffusers

        te_lora = canonical_text_encoder_keys(te_lora)
        self.pipeline_class().save_lora_weights(
            out_dir,
            unet_lora_layers=convert_state_dict_to_diffusers(denoiser_lora),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(te_lora) if te_lora else None,
            unet_lora_adapter_metadata=adapter_metadata(rank, alpha, targets),
            text_encoder_lora_adapter_metadata=adapter_metadata(rank, alpha, te_targets) if te_lora else None,
            weight_name=file_name, safe_serialization=True)
        return Path(out_dir) / file_name

    def to_kohya(self, denoiser_lora, te_lora, alpha):
        """kohya-ss keys (``lora_unet_…``, ``lora_te_…``, ``….alpha``) via diffusers' converter,
        with the real alpha (the converter writes alpha = rank)."""
        from diffusers.utils import convert_state_dict_to_kohya

        peft = {f"unet.{k}": v for k, v in denoiser_lora.items()}
        for index, part in split_te_lora(te_lora, self.text_encoder_lora_indices).items():
            prefix = te_lora_prefix(index) or "text_encoder."  # SDXL's second: text_encoder_2.
            peft |= {f"{prefix}{k}": v for k, v in canonical_text_encoder_keys(part).items()}
        out = {}
        for key, value in convert_state_dict_to_kohya(peft).items():
            for old, new in self.kohya_te_prefixes.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            if key.endswith(".alpha"):
                value = torch.tensor(float(alpha))
            out[key] = value.contiguous()
        return out
