"""A tiny randomly initialised SD-architecture model, built from configs and seeded.

The same recipe as diffusers' ``get_dummy_components()``: a 2-block UNet, a 1-block VAE and a
2-layer CLIPTextModel, saved as a normal diffusers folder so that tests load it through the
very code that loads a real model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from bat_app.models.tokenizer import offline_clip_tokenizer

TINY_RESOLUTION = 32


def build_tiny_model(folder: Path, prediction_type: str = "epsilon", with_tokenizer: bool = True) -> Path:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=TINY_RESOLUTION // 2,
        in_channels=4, out_channels=4, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        latent_channels=4, sample_size=TINY_RESOLUTION,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=16,
        intermediate_size=32, layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=16, projection_dim=16,
    ))
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=offline_clip_tokenizer(model_max_length=16),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    if not with_tokenizer:
        import shutil

        shutil.rmtree(folder / "tokenizer")
    return folder
