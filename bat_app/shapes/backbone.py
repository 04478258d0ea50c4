"""The shapes backbone: a tiny Stable-Diffusion-architecture model pretrained on the stream.

32 px RGB -> AutoencoderKL (f=4) -> 8x8x4 latents -> UNet2DConditionModel conditioned on the
frozen text tower of the shapes CLIP (SD's recipe) through cross-attention at every level,
plus a pooled text embedding added to the time embedding (``addition_embed_type="text"``,
a stock diffusers option): a direct path for global properties such as object and
background colour, which cross-attention alone learned slowly on CPU budgets (NOTES).

Noise schedule: zero terminal SNR, v-prediction, trailing timesteps (``rescale_betas_zero_snr``)
- with SD's default schedule the last timestep leaks the image's mean colour and the model
never learns colour words (measured; see docs/shapes.md).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bat_app.shapes._train import warmup_cosine

LATENT_SIDE = 8
# 8 channels, not SD's 4: with f=4 at 32 px, 4 channels lost stripes and dots (measured).
LATENT_CHANNELS = 8
SCHEDULER_KWARGS = dict(num_train_timesteps=1000, beta_schedule="scaled_linear",
                        beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
                        prediction_type="v_prediction", timestep_spacing="trailing",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)
SAMPLING = {"resolution": 32, "num_inference_steps": 25, "guidance_scale": 4.0,
            "scheduler": "DDIMScheduler", "display_upscale": 8}


def make_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                        down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(24, 48, 64), layers_per_block=1,
                        norm_num_groups=8, sample_size=32)
    # Start with a near-zero posterior std: samples equal the mean from step one, so the
    # decoder learns sharp reconstructions at once (KL weight is tiny, as in SD's VAE).
    with torch.no_grad():
        vae.quant_conv.bias[LATENT_CHANNELS:] = -8.0
    return vae


def make_unet(cross_attention_dim: int = 64):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIDE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(96, 160), layers_per_block=1, norm_num_groups=16,
        cross_attention_dim=cross_attention_dim, attention_head_dim=16,
        addition_embed_type="text", addition_embed_type_num_heads=4)


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_KWARGS)


def images_to_pixels(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


# ---------------------------------------------------------------------------- VAE


def train_vae(images: np.ndarray, steps: int = 1500, batch_size: int = 24, lr: float = 1e-3,
              kl_weight: float = 1e-6, seed: int = 0, progress: bool = True, device: str = "cpu"):
    """Returns the VAE (on the CPU, in eval mode) and its final reconstruction MSE.

    Random draws come from one CPU generator whatever ``device`` is, so the sampled
    batches are the same on every device.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    vae = make_vae().to(device)
    x_all = images_to_pixels(images).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, int(steps * 0.05))
    vae.train()
    bar = tqdm(range(steps), desc="vae", disable=not progress, mininterval=10)
    mses = []
    for step in bar:
        x = x_all[torch.randint(0, len(x_all), (batch_size,), generator=gen).to(device)]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=gen)).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 0.5 * F.l1_loss(rec, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        mses.append(mse.detach())  # read back in groups: a .item() per step stalls a GPU
        if step % 50 == 0:
            bar.set_postfix(mse=f"{torch.stack(mses[-50:]).mean().item():.4f}")
    return vae.cpu().eval(), float(torch.stack(mses[-50:]).mean().item())


@torch.no_grad()
def encode_all(vae, images: np.ndarray, batch_size: int = 512, device: str = "cpu") -> torch.Tensor:
    """Unscaled latent means (n, LATENT_CHANNELS, 8, 8), on the CPU."""
    vae = vae.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = images_to_pixels(images[i:i + batch_size]).to(device)
        out.append(vae.encode(x).latent_dist.mean.cpu())
    vae.cpu()
    return torch.cat(out)


# ---------------------------------------------------------------------------- UNet


@torch.no_grad()
def encode_text(text_encoder, tokenizer, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


@torch.no_grad()
def sample_latents(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, steps: int,
                   guidance: float, generator: torch.Generator) -> torch.Tensor:
    """Plain classifier-free-guided DDIM, the same arithmetic as the diffusers pipeline."""
    n = cond.shape[0]
    latents = torch.randn((n, LATENT_CHANNELS, LATENT_SIDE, LATENT_SIDE), generator=generator)
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    emb = torch.cat([uncond.expand(n, -1, -1), cond])
    for t in scheduler.timesteps:
        out = unet(torch.cat([latents, latents]), t, emb).sample
        u, c = out.chunk(2)
        latents = scheduler.step(u + guidance * (c - u), t, latents).prev_sample
    return latents


@torch.no_grad()
def decode_to_uint8(vae, latents: torch.Tensor) -> np.ndarray:
    x = vae.decode(latents / vae.config.scaling_factor).sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def train_unet(latents: torch.Tensor, captions: list[str], text_encoder, tokenizer,
               steps: int, batch_size: int = 64, lr: float = 5e-4, seed: int = 0,
               uncond_prob: float = 0.1, ema_decay: float = 0.998, eval_fn=None,
               eval_every: int = 0, time_budget_s: float | None = None,
               progress: bool = True, log=print, init_unet=None, step_offset: int = 0,
               warmup: int | None = None, device: str = "cpu"):
    """Zero-terminal-SNR v-prediction training on precomputed (scaled) latents.

    ``eval_fn(unet, step)`` is called every ``eval_every`` steps with the EMA weights (the
    prompt-following grid); ``time_budget_s`` stops early. ``init_unet`` continues from
    given weights (a second cosine cycle: warm restart), ``step_offset`` numbers its steps.
    The frozen text tower encodes each distinct caption once, up front (the world has far
    fewer captions than images); random draws come from one CPU generator on every device.
    Returns the EMA UNet on the CPU.
    """
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_KWARGS.items()
                                   if k not in ("set_alpha_to_one", "steps_offset")})
    unet = make_unet(text_encoder.config.hidden_size)
    if init_unet is not None:
        unet.load_state_dict(init_unet.state_dict())
    unet.to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps, warmup if warmup is not None else min(200, steps // 10),
                          floor=0.1)
    distinct, caption_row = np.unique(np.asarray(captions), return_inverse=True)
    table = torch.cat([encode_text(text_encoder, tokenizer, list(distinct[i:i + 2048]))
                       for i in range(0, len(distinct), 2048)]).to(device)
    uncond = encode_text(text_encoder, tokenizer, [""]).to(device)
    caption_row = torch.from_numpy(caption_row.reshape(-1)).to(device)
    latents = latents.to(device)
    t0 = time.time()
    losses = []
    bar = tqdm(range(steps), desc="unet", disable=not progress, mininterval=10)
    for step in bar:
        idx = torch.randint(0, len(latents), (batch_size,), generator=gen).to(device)
        x0 = latents[idx]
        dropped = (torch.rand(batch_size, generator=gen) < uncond_prob).to(device)
        emb = torch.where(dropped[:, None, None], uncond, table[caption_row[idx]])
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,),
                          generator=gen).to(device)
        noisy = noise_sched.add_noise(x0, noise, t)
        target = noise_sched.get_velocity(x0, noise, t)
        pred = unet(noisy, t, emb).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            d = ema_decay if init_unet is not None else min(ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(unet.parameters()), 1 - d)
        losses.append(loss.detach())  # read back in groups: a .item() per step stalls a GPU
        if step % 50 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-50:]).mean().item():.4f}")
        if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
            eval_fn(ema, step_offset + step + 1)
        if time_budget_s is not None and time.time() - t0 > time_budget_s:
            log(f"unet: time budget reached at step {step + 1}")
            break
    return ema.cpu(), {"steps_done": step_offset + step + 1,
                       "final_loss": float(torch.stack(losses[-100:]).mean().item()),
                       "train_seconds": round(time.time() - t0, 1), "batch_size": batch_size,
                       "lr": lr, "device": str(device)}


# ---------------------------------------------------------------------------- the folder


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet, meta: dict) -> None:
    """Write a StableDiffusionPipeline folder (safetensors, fp16 on disk, loads as fp32)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=make_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    for module in (vae, text_encoder, unet):
        module.half()
    try:
        pipe.save_pretrained(folder, safe_serialization=True)
    finally:
        for module in (vae, text_encoder, unet):
            module.float()
    # transformers loads a checkpoint in its config's dtype; diffusers upcasts to fp32 itself.
    cfg_path = folder / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in cfg:
            cfg[key] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "bat_shapes.json").write_text(json.dumps({**SAMPLING, **meta}, indent=2) + "\n")
