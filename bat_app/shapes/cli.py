"""``python -m bat_app shapes {build,identity,pool,targets}``: the Shapes world from the command line.

    python -m bat_app shapes build                      # all stages, seed 0, ~40 CPU-minutes
    python -m bat_app shapes build --out /tmp/shapes    # rebuild elsewhere (resumes per stage)
    python -m bat_app shapes pool --out pool/ --n 10000 --seed 0
    python -m bat_app shapes targets                    # print the target figures
    python -m bat_app shapes identity                   # the identity network (~10 CPU-minutes)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path



def register(subparsers) -> None:
    p = subparsers.add_parser("shapes", help="the offline Shapes world: build, pool, targets",
                              description="Build the Shapes-world backbone, write its "
                                          "pretraining data as a pool, or measure its targets.")
    sub = p.add_subparsers(title="shapes commands", metavar="SHAPES_COMMAND")

    b = sub.add_parser("build", help="pretrain classifier, VAE, CLIP and UNet (seeded)")
    # Every flag defaults to None: unset flags keep BuildConfig's value (or --config's).
    b.add_argument("--config", type=Path, default=None,
                   help="a JSON file of BuildConfig fields, e.g. assets/shapes/build.json (how "
                        "the shipped backbone was built); flags given explicitly override it")
    b.add_argument("--out", type=Path, default=None, help="default: assets/shapes")
    b.add_argument("--subjects-out", type=Path, default=None, help="default: assets/subjects")
    b.add_argument("--work", type=Path, default=None,
                   help="caches (rendered data, VAE, latents); default build/shapes")
    b.add_argument("--seed", type=int, default=None, help="default 0")
    b.add_argument("--unet-steps", type=int, default=None, help="default 1500")
    b.add_argument("--threads", type=int, default=None, help="default 2")
    b.add_argument("--device", default=None, help="cpu (default) or cuda")
    b.add_argument("--continue-steps", type=int, default=None,
                   help="train the existing OUT/backbone this many more steps (warm restart)")
    b.add_argument("--continue-lr", type=float, default=None, help="default 3e-4")
    b.add_argument("--time-budget-min", type=float, default=None,
                   help="stop the UNet cycle after this many minutes")
    b.add_argument("--eval-every", type=int, default=None, help="default 250")
    b.set_defaults(func=_run_build)

    i = sub.add_parser("identity", help="train the identity network (subject fidelity) on the built VAE")
    i.add_argument("--root", type=Path, default=None, help="the shapes assets with the backbone; default: assets/shapes")
    i.add_argument("--out", type=Path, default=None, help="default: ROOT/identity")
    i.add_argument("--pairs", type=int, default=12000, help="objects with a sibling each (two views per object)")
    i.add_argument("--steps", type=int, default=2500)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--threads", type=int, default=2)
    i.set_defaults(func=_run_identity)

    q = sub.add_parser("pool", help="write N pretraining samples as image + .txt caption")
    q.add_argument("--out", type=Path, required=True)
    q.add_argument("--n", type=int, required=True)
    q.add_argument("--seed", type=int, default=0, help="0 = the backbone's own pretraining data")
    q.add_argument("--resolution", type=int, default=32)
    q.set_defaults(func=_run_pool)

    t = sub.add_parser("targets", help="measure and print the target figures")
    t.add_argument("--root", type=Path, default=None, help="default: assets/shapes")
    t.add_argument("--prompts", type=int, default=50, help="prompts for prompt following")
    t.add_argument("--json", type=Path, default=None, help="also write the figures here")
    t.set_defaults(func=_run_targets)
    p.set_defaults(func=lambda args: p.print_help() or 1)


def _run_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bat_app.shapes.build import BuildConfig, build, config_from_json

    cfg = config_from_json(args.config) if args.config else BuildConfig()
    keys = ("out", "subjects_out", "work", "seed", "unet_steps", "threads", "device",
            "continue_steps", "continue_lr", "time_budget_min", "eval_every")
    # replace() re-runs BuildConfig's checks on the merged settings.
    build(replace(cfg, **{k: getattr(args, k) for k in keys if getattr(args, k) is not None}))
    return 0


def _run_identity(args: argparse.Namespace) -> int:
    import torch
    from diffusers import AutoencoderKL

    from bat_app.shapes.identity import build_identity
    from bat_app.shapes.paths import shapes_paths

    torch.set_num_threads(args.threads)
    paths = shapes_paths(args.root)
    vae = AutoencoderKL.from_pretrained(paths.backbone, subfolder="vae").eval()
    meta = build_identity(args.out or paths.root / "identity", vae, seed=args.seed, n_pairs=args.pairs,
                          steps=args.steps)
    print(json.dumps(meta, indent=2))
    return 0


def _run_pool(args: argparse.Namespace) -> int:
    from bat_app.shapes.pool import write_pool

    out = write_pool(args.out, args.n, args.seed, args.resolution)
    print(f"wrote {args.n} images + captions to {out}")
    return 0


def _run_targets(args: argparse.Namespace) -> int:
    from bat_app.shapes.targets import run_targets

    results = run_targets(args.root, n_prompts=args.prompts)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
