"""GPU truth for every model family: training steps/s, peak memory and ALBAT scoring throughput.

    python scripts/gpu_check.py                      # on one large GPU, no network: <= 8 minutes
    python scripts/gpu_check.py --families sdxl      # one family
    python scripts/gpu_check.py --quick              # tiny configs on the CPU (checks the code path)

Each family's denoiser and VAE are built from the published configs (SD 1.5's UNet, SDXL
base's UNet, FLUX.1-dev's transformer at reduced depth: ``--flux-depth`` double / 2x single
blocks of 19 / 38) with random weights, since throughput does not depend on weight values and
nothing can be downloaded. Text encoders are not built: prompts are encoded once per caption
and cached by the trainer, so the per-step cost is the denoiser's (plus the VAE for the
reference loop). Conditioning tensors have the real shapes.

Per family, at the preset's resolution, bf16 frozen weights, fp32 LoRA (rank 16 on the
family's default targets), SDPA attention, batch 1 and 4:

- ``ours``: the trainer's step (cached latents: the family's loss, backward, AdamW step);
- ``reference``: the same plus a VAE encode of the batch every step, as diffusers' DreamBooth
  scripts do (they also re-encode the prompt, which is not counted here: a lower bound);
- ``albat``: forward-only loss with and without the surrogate adapter over shared draws,
  batch 8, in candidate-draws per second (ALBAT's cost per candidate is R of these).

Peak memory is ``torch.cuda.max_memory_allocated`` per measurement. Results go to stdout as a
table and to ``--out`` as JSON (docs/benchmarks.md quotes them).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

RANK = 16


@dataclass
class FamilySetup:
    name: str          # bat_app family name
    resolution: int
    vae_factor: int    # pixels per latent pixel


SETUPS = {"sd": FamilySetup("sd", 512, 8), "sdxl": FamilySetup("sdxl", 1024, 8), "flux": FamilySetup("flux", 1024, 8)}


def build_denoiser(family: str, quick: bool, flux_depth: int):
    """(denoiser, cond_shapes, latent_channels) from the published config (tiny with quick)."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    if family == "sd":
        cfg = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                   block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
        if quick:
            cfg |= dict(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32, attention_head_dim=8,
                        layers_per_block=1, norm_num_groups=8)
        model = UNet2DConditionModel(**cfg)
        return model, {"hidden": (77, cfg["cross_attention_dim"])}, 4
    if family == "sdxl":
        cfg = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                   cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                   addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        pooled = 1280
        if quick:
            cfg |= dict(block_out_channels=(32, 64, 64), layers_per_block=1, transformer_layers_per_block=(1, 1, 1),
                        attention_head_dim=(2, 4, 4), cross_attention_dim=64, addition_time_embed_dim=8,
                        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8)
            pooled = 32
        model = UNet2DConditionModel(**cfg)
        return model, {"hidden": (77, cfg["cross_attention_dim"]), "pooled": (pooled,)}, 4
    cfg = dict(patch_size=1, in_channels=64, num_layers=flux_depth, num_single_layers=2 * flux_depth,
               attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
               guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    if quick:
        cfg |= dict(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6), in_channels=16)
    model = FluxTransformer2DModel(**cfg)
    return model, {"hidden": (512 if not quick else 16, cfg["joint_attention_dim"]),
                   "pooled": (cfg["pooled_projection_dim"],)}, cfg["in_channels"] // 4


def build_vae(latent_channels: int, quick: bool):
    from diffusers import AutoencoderKL

    if quick:
        return AutoencoderKL(block_out_channels=(16, 16, 16, 16), layers_per_block=1, latent_channels=latent_channels,
                             norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4)
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def make_components(family_name: str, denoiser, vae, device, dtype):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from bat_app.models import Components, ModelSpec
    from bat_app.models.families import get_family

    family = get_family(family_name)
    sched = FlowMatchEulerDiscreteScheduler() if family_name == "flux" else DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    spec = ModelSpec(f"{family_name}-architecture", family_name, SETUPS[family_name].resolution, family=family_name)
    return Components(spec, family, [], [], vae.to(device, dtype).eval().requires_grad_(False),
                      denoiser.to(device, dtype).eval().requires_grad_(False), sched, dtype, device)


def measure(comps, cond_shapes, latent_channels, resolution, batch, steps, device, mode: str) -> dict:
    from peft import LoraConfig

    family, model = comps.family, comps.denoiser
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                 target_modules=list(family.lora_targets)), adapter_name="check")
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(mode != "albat")
    optimizer = torch.optim.AdamW(params) if mode != "albat" else None  # the lr does not change the speed
    side = resolution // SETUPS[family.name].vae_factor
    gen = torch.Generator(device="cpu").manual_seed(0)
    latents = torch.randn((batch, latent_channels, side, side), generator=gen).to(device)
    cond = {k: torch.randn((batch, *shape), generator=gen).to(device, comps.dtype) for k, shape in cond_shapes.items()}
    pixels = torch.randn((batch, 3, resolution, resolution), generator=gen).to(device, comps.dtype)
    autocast = torch.autocast(device.type, dtype=comps.dtype, enabled=device.type == "cuda")

    def step():
        noise = torch.randn_like(latents)
        t = torch.randint(0, family.num_timesteps(comps), (batch,), device=device)
        with autocast:
            if mode == "albat":
                with torch.no_grad():
                    model.disable_adapters()
                    a = family.loss(comps, latents, cond, noise, t)
                    model.enable_adapters()
                    b = family.loss(comps, latents, cond, noise, t)
                    return (a - b).sum()
            x = latents
            if mode == "reference":
                with torch.no_grad():
                    x = family.scale_latents(comps, comps.vae.encode(pixels).latent_dist.sample().float())
            loss = family.loss(comps, x, cond, noise, t).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    model.delete_adapters("check")
    out = {"mode": mode, "batch": batch, "steps_per_s": round(steps / seconds, 3),
           "images_per_s": round(steps * batch / seconds, 2)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--flux-depth", type=int, default=4, help="double blocks (single = 2x); FLUX.1 has 19 / 38")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="tiny configs on the CPU, 2 steps")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    steps = 2 if args.quick else args.steps
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name in args.families:
        setup = SETUPS[name]
        resolution = 64 if args.quick else setup.resolution
        t0 = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(device):
            denoiser, cond_shapes, channels = build_denoiser(name, args.quick, args.flux_depth)
            vae = build_vae(channels, args.quick)
        comps = make_components(name, denoiser, vae, device, dtype)
        params = sum(p.numel() for p in denoiser.parameters()) / 1e6
        print(f"{name}: {params:.0f}M-parameter denoiser built in {time.perf_counter() - t0:.1f} s", flush=True)
        for mode, batches in (("ours", (1, 4)), ("reference", (1, 4)), ("albat", (8,))):
            for batch in batches:
                row = {"family": name, "resolution": resolution, "denoiser_M": round(params),
                       **measure(comps, cond_shapes, channels, resolution, batch, steps, device, mode)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        del comps, denoiser, vae
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n| family | res | denoiser (M) | mode | batch | steps/s | images/s | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['family']} | {r['resolution']} | {r['denoiser_M']} | {r['mode']} | {r['batch']} | "
              f"{r['steps_per_s']} | {r['images_per_s']} | {r.get('peak_gib', '-')} |")
    if args.out:
        args.out.write_text(json.dumps({"device": str(device), "dtype": str(dtype), "rows": rows}, indent=1))
    print(f"gpu_check: {len(rows)} measurements on {device}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
