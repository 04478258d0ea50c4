"""Stable Diffusion XL: a UNet conditioned on two CLIP text encoders (CLIP-L ``text_encoder``,
OpenCLIP-G ``text_encoder_2`` with a projection) and on "micro-conditioning" time ids.

Conditioning follows ``StableDiffusionXLPipeline.encode_prompt`` and diffusers'
``examples/dreambooth/train_dreambooth_lora_sdxl.py``: the penultimate hidden states of both
encoders, concatenated on the feature axis (``hidden``), and ``text_encoder_2``'s projected
pooled output (``pooled``). The UNet also gets ``time_ids`` = (original_h, original_w,
crop_top, crop_left, target_h, target_w). SDXL trains on aspect-ratio buckets
(``uses_buckets``, ``bat_app/images/buckets.py``): each training example's conditioning carries
its own time ids (``placement_cond``: the photo's size, the crop of its bucket, the bucket), as
the reference script records them. A conditioning without them (ALBAT's scoring, which encodes
square crops) gets a square, uncropped image of the latent size times the VAE's scale factor.
Epsilon or v-prediction on DDPM timesteps, as SD.

Files:

- ``pytorch_lora_weights.safetensors``: ``StableDiffusionXLPipeline.save_lora_weights``
  (``unet.``, ``text_encoder.``, ``text_encoder_2.`` keys, alpha in the adapter metadata).
- kohya (AUTOMATIC1111 / ComfyUI): ``lora_unet_…``, ``lora_te1_…``, ``lora_te2_…`` with a
  ``.alpha`` per module (diffusers' ``convert_state_dict_to_kohya``, the layout diffusers'
  advanced SDXL script writes for the web UIs; ``load_lora_weights`` reads it back).
- pivotal tuning: the trigger's vectors for both encoders, ``clip_l`` and ``clip_g`` in one
  ``<trigger>.safetensors`` (the SDXL embedding layout of A1111, ComfyUI and diffusers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .base import Cond, Part, adapter_metadata, split_te_lora
from .sd import StableDiffusion, canonical_text_encoder_keys


class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    display_name = "SDXL"
    pipeline_classes = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"})
    kohya_version = "sdxl_base_v1-0"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    kohya_te_prefixes = {}  # diffusers' converter already writes lora_te1_ / lora_te2_ (SD's to_kohya)
    text_encoder_lora_indices = (0, 1)
    pivotal_embedding_keys = ((0, "clip_l"), (1, "clip_g"))
    uses_buckets = True

    def parts(self) -> tuple[Part, ...]:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        return (Part("denoiser", UNet2DConditionModel, "unet"), Part("vae", AutoencoderKL, "vae"),
                Part("text_encoder", CLIPTextModel, "text_encoder"),
                Part("text_encoder_2", CLIPTextModelWithProjection, "text_encoder_2"))

    def finish_loading(self, loaded: dict, spec, load_tokenizer) -> dict:
        te, te2 = loaded.pop("text_encoder"), loaded.pop("text_encoder_2")
        return {**loaded, "text_encoders": [te, te2],
                "tokenizers": [load_tokenizer("tokenizer", te), load_tokenizer("tokenizer_2", te2)]}

    # --- text -------------------------------------------------------------------------
    def encode(self, components, ids: Sequence[torch.Tensor]) -> Cond:
        hidden = []
        for te, te_ids in zip(components.text_encoders, ids):
            out = te(te_ids.to(te.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        # text_encoder_2's projected pooled output, the one encode_prompt keeps
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": out.text_embeds}

    # --- the objective ------------------------------------------------------------------
    def placement_cond(self, placement) -> Cond:
        """The example's own time ids: original (h, w), crop (top, left), bucket (h, w)."""
        return {"time_ids": torch.tensor(placement.time_ids, dtype=torch.float32)}

    def default_time_ids(self, components, latents: torch.Tensor) -> torch.Tensor:
        """(batch, 6): original size, crop (0, 0), target size, for a square uncropped image."""
        scale = self.vae_scale_factor(components)
        h, w = latents.shape[-2] * scale, latents.shape[-1] * scale
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(latents.shape[0], 1)

    def loss(self, components, latents, cond, noise, timesteps, weight=None):
        if "time_ids" not in cond:
            cond = {**cond, "time_ids": self.default_time_ids(components, latents).to(latents.device)}
        return super().loss(components, latents, cond, noise, timesteps, weight)

    def added_kwargs(self, cond: Cond, dtype: torch.dtype) -> dict:
        return {"added_cond_kwargs": {"text_embeds": cond["pooled"].to(dtype),
                                      "time_ids": cond["time_ids"].to(dtype)}}

    # --- sampling and export ------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def pipeline(self, components, scheduler=None):
        if scheduler is None:
            from diffusers import EulerDiscreteScheduler

            # SDXL's own sampler, on the training scheduler's config (betas, prediction type).
            scheduler = EulerDiscreteScheduler.from_config(components.noise_scheduler.config)
        pipe = self.pipeline_class()(
            vae=components.vae, text_encoder=components.text_encoders[0], text_encoder_2=components.text_encoders[1],
            tokenizer=components.tokenizers[0], tokenizer_2=components.tokenizers[1], unet=components.denoiser,
            scheduler=scheduler, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_lora(self, out_dir, denoiser_lora, te_lora, rank, alpha, targets, te_targets, file_name) -> Path:
        from diffusers.utils import convert_state_dict_to_diffusers

        parts = split_te_lora(te_lora, self.text_encoder_lora_indices)
        te1, te2 = (canonical_text_encoder_keys(parts[i]) for i in (0, 1))
        self.pipeline_class().save_lora_weights(
            out_dir,
            unet_lora_layers=convert_state_dict_to_diffusers(denoiser_lora),
            text_encoder_lora_layers=convert_state_dict_to_diffusers(te1) if te1 else None,
            text_encoder_2_lora_layers=convert_state_dict_to_diffusers(te2) if te2 else None,
            unet_lora_adapter_metadata=adapter_metadata(rank, alpha, targets),
            text_encoder_lora_adapter_metadata=adapter_metadata(rank, alpha, te_targets) if te1 else None,
            text_encoder_2_lora_adapter_metadata=adapter_metadata(rank, alpha, te_targets) if te2 else None,
            weight_name=file_name, safe_serialization=True)
        return Path(out_dir) / file_name
