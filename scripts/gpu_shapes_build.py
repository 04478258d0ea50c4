"""Build the Shapes backbone on one GPU inside a fixed time budget (issue 10: backbone v2).

The CPU build (``python -m bat_app shapes build``) trains 2,500 UNet steps at batch 64 in about
36 idle CPU-minutes; prompt following stalled at 43%. A lent GPU runs the same stages, with the
same code and CPU-drawn batches, at a far larger budget. Step counts are fitted to the budget:
each stage is timed on a short probe first, then given its share of ``--minutes``. The config
that was actually run is written to ``OUT/build.json``, so ``shapes build --config
OUT/build.json --device cuda`` repeats it without probing.

    python scripts/gpu_shapes_build.py --work .gpubuild/work --minutes 7.5     # on the GPU
    python scripts/gpu_shapes_build.py --quick      # a smoke run on the CPU, toy sizes, temporary folder

The rendered data must be in WORK already (``bat_app.shapes.build.rendered``): rendering is
single-threaded Python, two CPU-minutes for 60,000 images, so it is done beforehand and carried.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from bat_app.shapes.build import rendered

# Shares of the training budget (the UNet is what prompt following needs; the VAE's sharpness
# is what the patterns need; CLIP's retrieval was just short of its target).
SHARES = {"vae": 0.17, "classifier": 0.05, "clip": 0.12, "unet": 0.66}
BATCH = {"vae": 256, "classifier": 256, "clip": 512, "unet": 512}
PROBE_STEPS = 30
PROBE_IMAGES = 4096


def _log(msg: str) -> None:
    print(f"[gpu build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def probe_seconds_per_step(stage: str, batch: int, images, captions, full_space, device: str,
                           probe_steps: int = PROBE_STEPS) -> float:
    """Seconds per step of one stage at its batch size, from a short run after a warm-up."""
    from bat_app.shapes.backbone import make_vae, train_unet, train_vae
    from bat_app.shapes.classifier import train_classifier
    from bat_app.shapes.clip import train_clip

    n = min(PROBE_IMAGES, len(images), len(full_space[0]))
    if stage == "vae":
        run = lambda steps: train_vae(images[:n], steps=steps, batch_size=batch,  # noqa: E731
                                      progress=False, device=device)
    elif stage == "classifier":
        full_images, _, attrs = full_space
        run = lambda steps: train_classifier(full_images[:n], attrs[:n], steps=steps,  # noqa: E731
                                             batch_size=batch, progress=False, device=device)
    elif stage == "clip":
        run = lambda steps: train_clip(images[:n], captions[:n], steps=steps,  # noqa: E731
                                       batch_size=batch, progress=False, device=device)
    else:
        from bat_app.models.tokenizer import offline_clip_tokenizer
        from bat_app.shapes.clip import CONTEXT_LENGTH, create_clip, text_tower_to_transformers

        text_encoder = text_tower_to_transformers(create_clip())
        tokenizer = offline_clip_tokenizer(model_max_length=CONTEXT_LENGTH)
        latents = torch.randn(n, make_vae().config.latent_channels, 8, 8)
        run = lambda steps: train_unet(latents, captions[:n], text_encoder, tokenizer,  # noqa: E731
                                       steps=steps, batch_size=batch, progress=False,
                                       log=_log, device=device)
    run(5)  # warm-up: kernels, allocator, autotuning
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.time()
    run(probe_steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.time() - t) / probe_steps


def main(argv=None) -> int:
    from bat_app.shapes.build import BuildConfig, build, stage_data

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None,
                    help="holds the rendered data; caches (required unless --quick)")
    ap.add_argument("--out", type=Path, default=None, help="default: WORK/shapes")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training budget, all stages (required unless --quick)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --quick)")
    ap.add_argument("--evals", type=int, default=6, help="prompt-following grids during the UNet")
    ap.add_argument("--n-train", type=int, default=None, help="pretraining images (default 60,000: the pool's)")
    ap.add_argument("--classifier-n", type=int, default=None, help="the judge's images (default 40,000)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: 64 images, batches of 8, 10 steps per stage, a 400-image judge "
                         "test set; renders its own data (into a temporary folder unless --work)")
    args = ap.parse_args(argv)
    if args.quick:
        import tempfile

        args.work = args.work or Path(tempfile.mkdtemp(prefix="bat-gpu-build-quick-"))
        args.minutes, args.device = args.minutes or 0.001, args.device or "cpu"
        args.n_train, args.classifier_n = args.n_train or 64, args.classifier_n or 64
        rendered(args.work, 0, args.n_train)
        rendered(args.work, 101, args.classifier_n, pretraining=False)
        rendered(args.work, 202, 400, pretraining=False)
    elif args.work is None or args.minutes is None:
        ap.error("--work and --minutes are required (or --quick for a smoke run)")
    args.device = args.device or "cuda"
    args.n_train, args.classifier_n = args.n_train or 60000, args.classifier_n or 40000
    batch = {stage: 8 for stage in BATCH} if args.quick else dict(BATCH)
    probe_steps = 3 if args.quick else PROBE_STEPS
    out = args.out or args.work / "shapes"
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        _log(f"device: {torch.cuda.get_device_name()}")

    cfg = BuildConfig(out=out, subjects_out=args.work / "subjects", work=args.work,
                      device=args.device, threads=torch.get_num_threads(),
                      vae_batch=batch["vae"], classifier_batch=batch["classifier"],
                      clip_batch=batch["clip"], unet_batch=batch["unet"], unet_more_steps=0,
                      n_train=args.n_train, classifier_n=args.classifier_n,
                      classifier_test_n=400 if args.quick else 4000)
    images, captions = stage_data(cfg)
    full_space = rendered(cfg.work, cfg.seed + 101, cfg.classifier_n, pretraining=False)
    t0 = time.time()
    per_step = {stage: probe_seconds_per_step(stage, batch[stage], images, captions, full_space,
                                              args.device, probe_steps) for stage in SHARES}
    probe_s = time.time() - t0
    _log(f"probe ({probe_s:.0f} s): seconds per step {per_step}")
    floor = 10 if args.quick else 500
    steps = {s: max(floor, int(args.minutes * 60 * SHARES[s] / per_step[s])) for s in SHARES}
    # time_budget_min is a safety net only: the fitted step count should end well inside it.
    cfg = replace(cfg, vae_steps=steps["vae"], classifier_steps=steps["classifier"],
                  clip_steps=steps["clip"], unet_steps=steps["unet"],
                  eval_every=max(1, steps["unet"] // args.evals),
                  time_budget_min=round(args.minutes * SHARES["unet"] * 1.25, 2))
    out.mkdir(parents=True, exist_ok=True)
    record = {k: str(v) for k, v in asdict(cfg).items()}
    (out / "build.json").write_text(json.dumps(record, indent=2) + "\n")
    _log(f"steps {steps}; config in {out / 'build.json'}")
    timings = build(cfg)
    _log(f"backbone written to {out / 'backbone'}")
    (out / "gpu_build.json").write_text(json.dumps(
        {"seconds_per_step": per_step, "probe_seconds": round(probe_s, 1), "steps": steps,
         "timings": timings, "device": torch.cuda.get_device_name()
         if args.device.startswith("cuda") else "cpu", "torch": torch.__version__}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
