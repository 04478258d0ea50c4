"""Benchmark: the cached trainer against a loop that re-encodes image and prompt every step.

    python scripts/bench_trainer.py                         # tiny model, CPU, 200 steps
    python scripts/bench_trainer.py --arch shapes           # the shipped shapes backbone
    python scripts/bench_trainer.py --arch sd15 --device cuda --resolution 512 --batch-size 4
    python scripts/bench_trainer.py --quick                 # a smoke run (seconds)

The re-encoding loop is what diffusers' SD 1.x DreamBooth-LoRA reference script does each step
(crop/resize the PIL image, VAE-encode, tokenize and text-encode the prompt, then the UNet
step); both variants share the same UNet step, optimizer, data and steps. Each variant runs in
its own subprocess so that its peak memory (max RSS; CUDA peak allocated on GPU) is its own.
``--arch sd15`` builds SD 1.5's published architecture with random weights (throughput does
not depend on weight values), so it needs no download.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def sd15_architecture(folder: Path) -> Path:
    """SD 1.5's UNet/VAE/CLIP-L configs (from its model repo), random weights, saved as a folder."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bat_app.models.tokenizer import offline_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, max_position_embeddings=77, projection_dim=768,
                                      hidden_act="quick_gelu"))
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=offline_clip_tokenizer(), unet=unet,
                            scheduler=sched, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def model_folder(arch: str, work: Path) -> str:
    if arch == "tiny":
        from bat_app.testing import build_tiny_model

        return str(build_tiny_model(work / "tiny"))
    if arch == "sd15":
        return str(sd15_architecture(work / "sd15-arch"))
    return arch  # a preset, folder or hub id


def run_variant(variant: str, model: str, args) -> dict:
    """Inside the child process: train ``args.steps`` steps one way, report speed and memory."""
    import torch

    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.train import TrainConfig, train_lora
    from bat_app.testing import make_subject_images

    torch.manual_seed(0)
    comps = load_components(model, device=args.device)
    resolution = args.resolution or comps.spec.resolution
    work = Path(tempfile.mkdtemp())
    images = load_user_images(make_subject_images(work / "imgs", n=4, size=max(64, resolution))).images
    config = TrainConfig(token="sks", class_noun="disc", steps=args.steps, batch_size=args.batch_size,
                         resolution=resolution, checkpoint_every=0)
    if comps.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if variant == "cached":
        start = time.perf_counter()
        result = train_lora(comps, images, config, work / "out", cache_root=work / "cache", export=False)
        seconds = time.perf_counter() - start
    else:
        seconds = reencoding_loop(comps, images, config)
    out = {"variant": variant, "steps": args.steps, "seconds": round(seconds, 3),
           "steps_per_s": round(args.steps / seconds, 3), "max_rss_mib": _max_rss_mib()}
    if comps.device.type == "cuda":
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    if variant == "cached":
        out["final_loss"] = round(sum(result.losses[-20:]) / len(result.losses[-20:]), 4)
    return out


def reencoding_loop(comps, images, config) -> float:
    """The straightforward loop: every step re-encodes its images and prompt from scratch."""
    import numpy as np
    import torch
    from peft import LoraConfig

    from bat_app.images import prepare_for_training
    from bat_app.train.objective import draw_noise

    comps.denoiser.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
                                          target_modules=config.resolve_targets(comps.family).target_modules))
    params = [p for n, p in comps.denoiser.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(config.seed)
    autocast = (torch.autocast("cuda", dtype=comps.dtype) if comps.device.type == "cuda" and comps.dtype != torch.float32
                else torch.autocast("cpu", enabled=False))
    start = time.perf_counter()
    for _ in range(config.steps):
        picks = torch.randint(len(images), (config.batch_size,), generator=generator).tolist()
        pixels = torch.stack([
            torch.from_numpy(np.asarray(prepare_for_training(images[i].image, config.resolution), np.float32)
                             / 127.5 - 1).permute(2, 0, 1) for i in picks]).to(comps.device, comps.vae.dtype)
        with torch.no_grad(), autocast:
            latents = comps.vae.encode(pixels).latent_dist.sample(generator=None) * comps.vae.config.scaling_factor
            ids = comps.tokenizer([config.prompt] * len(picks), padding="max_length", truncation=True,
                                  max_length=comps.tokenizer.model_max_length, return_tensors="pt").input_ids
            hidden = comps.text_encoder(ids.to(comps.device))[0]
        noise, t = draw_noise(latents.shape, generator, comps.noise_scheduler.config.num_train_timesteps)
        with autocast:
            loss = comps.family.loss(comps, latents.float(), {"hidden": hidden}, noise.to(comps.device),
                                     t.to(comps.device)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if comps.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _max_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny", help="tiny | sd15 | any --model value (e.g. shapes)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny model, 5 steps")
    args = parser.parse_args()
    if args.quick:
        args.arch, args.steps = "tiny", 5
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child[0], args.child[1], args)))
        return

    work = Path(tempfile.mkdtemp())
    model = model_folder(args.arch, work)
    rows = []
    for variant in ("reencode", "cached"):
        cmd = [sys.executable, __file__, "--child", variant, model, "--steps", str(args.steps),
               "--batch-size", str(args.batch_size)]
        for flag in ("resolution", "device", "threads"):
            if getattr(args, flag) is not None:
                cmd += [f"--{flag}", str(getattr(args, flag))]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [text for text in out.stdout.splitlines() if text.startswith("RESULT ")]
        if not line:
            sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(line[0][7:]))
    print(f"arch={args.arch} steps={args.steps} batch={args.batch_size} resolution={args.resolution or 'native'} "
          f"device={args.device or 'auto'}")
    print(f"{'variant':10} {'steps/s':>9} {'seconds':>9} {'max RSS MiB':>12} {'CUDA peak MiB':>14}")
    for r in rows:
        print(f"{r['variant']:10} {r['steps_per_s']:9.2f} {r['seconds']:9.1f} {r['max_rss_mib']:12d} "
              f"{r.get('cuda_peak_mib', '-'):>14}")
    print(f"speed-up of caching: {rows[1]['steps_per_s'] / rows[0]['steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()
