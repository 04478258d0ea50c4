"""The command line: ``python -m bat_app COMMAND`` (also installed as ``bat-app``).

    python -m bat_app train --images photos/ --token sks --class-noun dog --out runs/dog
    python -m bat_app train --images photos/ --class-noun dog --prior --resume --out runs/dog
    python -m bat_app presets

Every command is a thin wrapper over a library call; user errors (BatError) print one
readable message and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .errors import BatError
from .progress import TqdmProgress

# Commands that live with their layer register themselves here (module: register(subparsers)).
COMMAND_MODULES = ("bat_app.compare.cli", "bat_app.pool.cli", "bat_app.shapes.cli", "bat_app.jobs.cli",
                   "bat_app.ui.cli")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    _set_threads()
    try:
        return int(args.func(args) or 0)
    except BatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; checkpoints written so far are kept (use --resume).", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bat-app", description=(
        "BAT Studio: personalize text-to-image diffusion models from a few images "
        "(DreamBooth-LoRA with Backbone Augmented Training)."))
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(sub)
    _add_select(sub)
    _add_presets(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not name.startswith(exc.name or "\0"):  # an import error inside the module: surface it
                raise
            continue
        module.register(sub)
    return parser


# --- train -------------------------------------------------------------------------------

def _add_train(sub) -> None:
    from .train.config import CAPTION_MIXES

    p = sub.add_parser("train", help="train a DreamBooth-LoRA from a folder of images",
                       description="Train a DreamBooth-LoRA on a few images of one subject.")
    _add_subject_args(p, class_noun_required=True, out_help="output folder (LoRA files, model card, checkpoints)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the preset's recipe for the number of photos)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the recipe's)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: = rank)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--pivotal", action=argparse.BooleanOptionalAction, default=None,
                   help="pivotal tuning: train the trigger's own embedding vectors with the LoRA "
                        "(default: the recipe's; `bat-app presets` shows it)")
    p.add_argument("--embedding-lr", type=float, default=None, help="pivotal tuning's learning rate")
    p.add_argument("--embeddings-only-steps", type=int, default=None, metavar="N",
                   help="with pivotal tuning: the first N steps train the trigger's vectors alone, then the "
                        "LoRA joins (default 0: both from the start)")
    p.add_argument("--freeze-embeddings-after", action="store_true", default=None,
                   help="with --embeddings-only-steps: the vectors stop when the LoRA joins")
    p.add_argument("--resolution", type=int, default=None, help="default: the model's native size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--prior", action=argparse.BooleanOptionalAction, default=None,
                   help="prior preservation with generated class images (default: the preset's recipe)")
    p.add_argument("--num-class-images", type=int, default=None)
    p.add_argument("--prior-context", dest="prior_contexts", action="append", default=None, metavar="PHRASE",
                   help="with --prior: class images are drawn from the class prompt with each such phrase in "
                        "turn ('on the beach'; '' for the bare prompt; repeat it). Off in every recipe: on the "
                        "shapes backbone it lowered prompt following (docs/shapes.md, sixteenth session)")
    p.add_argument("--background-weight", type=float, default=None, metavar="W",
                   help="masked training: in photos on a plain background the loss on the background counts "
                        "W (0-1) against the subject's 1, so the LoRA learns the subject, not the backdrop "
                        "(default: the recipe's; 1 trains whole photos)")
    p.add_argument("--backdrop-swaps", type=int, default=None, metavar="N",
                   help="show each photo on a plain background also on N other plain colours, so the trigger "
                        "does not stand for the backdrops (default: the recipe's; 0 = off)")
    p.add_argument("--refine-latents", type=int, default=None, metavar="N",
                   help="refine each photo's latent with N steps of decoder inversion, so that thin detail the "
                        "VAE's encoder blurs away (an outline, a small logo) is in what the LoRA learns "
                        "(default: the recipe's; 0 = off)")
    p.add_argument("--refine-anchor", type=float, default=None, metavar="W",
                   help="with --refine-latents: how strongly the refined latent stays near the encoder's "
                        "(default 1; 0 lets it drift where the model was never trained)")
    p.add_argument("--refine-subject-weight", type=float, default=None, metavar="W",
                   help="with --refine-latents: how many times the subject's pixels count against the plain "
                        "backdrop's (default 1: alike)")
    p.add_argument("--captions", action="store_true",
                   help="use each image's same-name .txt caption (one without the trigger continues the "
                        "instance prompt: 'on the beach' -> 'a photo of sks dog on the beach')")
    p.add_argument("--caption-mix", choices=CAPTION_MIXES, default=None,
                   help="with --captions: 'half' (default) also trains each image with the plain instance "
                        "prompt, so the bare trigger keeps the subject; 'third': twice with it; 'all': the "
                        "captions only")
    p.add_argument("--train-text-encoder", action="store_true", help="also train a text-encoder LoRA")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None, metavar="N",
                   help="also export the LoRA every N steps into OUT/steps/step-N (the training is the same), "
                        "and draw OUT/steps.png: the last third's steps side by side, to keep the best one")
    p.add_argument("--step-choices", type=int, default=None, metavar="N",
                   help="also export N earlier steps spread over the last third (300 steps, 2: steps 200 and "
                        "250) and draw them in OUT/steps.png (default: the recipe's; shapes 2, 0 = none)")
    p.add_argument("--tail-average", type=int, default=None, metavar="N",
                   help="export the exact mean of the LoRAs at N steps over the last third of the training "
                        "(a LoRA of rank N x rank; default: the recipe's, 1 = the final step's)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--config", type=Path, help="JSON file of training settings (flags override it)")
    _add_machine_args(p)
    add_memory_profile(p)
    _add_selection_args(p, required=False)
    p.set_defaults(func=run_train)


def _add_subject_args(p, class_noun_required: bool, out_help: str) -> None:
    """The subject's photos, its words and the model: the same flags for train and select."""
    p.add_argument("--images", required=True, nargs="+", help="folder of images, or image files")
    p.add_argument("--class-noun", required=class_noun_required, default=None if class_noun_required else "object",
                   help="the subject's class, e.g. dog, backpack, star"
                        + ("" if class_noun_required else " (default: object)"))
    p.add_argument("--token", default="sks", help="trigger token (default: sks)")
    p.add_argument("--model", default=None, help="preset (shapes, sd15), diffusers folder or hub id "
                   "(default: sd15 with CUDA, else shapes)")
    p.add_argument("--out", required=True, help=out_help)


def _add_machine_args(p) -> None:
    """How many photos are accepted and where the model runs: the same flags for train and select."""
    p.add_argument("--max-images", type=int, default=10)
    p.add_argument("--min-images", type=int, default=3)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--vae", default=None, metavar="HUB_ID|FOLDER",
                   help="a VAE to load in place of the model's own (default: the preset's, e.g. sdxl's fp16 fix)")


def add_memory_profile(p) -> None:
    p.add_argument("--memory-profile", default=None, metavar="NAME|auto",
                   help="the preset's memory and speed settings for a GPU size (`bat-app presets` lists them); "
                        "auto: the largest that fits this GPU (default: none, the trainer's defaults)")


def _add_selection_args(p, required: bool) -> None:
    from .albat import METHODS

    g = p.add_argument_group("backbone data (BAT)")
    g.add_argument("--pool", default=None, required=required, help="backbone pool folder")
    g.add_argument("--method", default="albat" if required else "none", choices=METHODS,
                   help="how backbone items are chosen (default: %(default)s)")
    g.add_argument("--m", type=int, default=None, help="items to select (default: the preset's recipe)")
    g.add_argument("--k", type=int, default=None, help="ALBAT retrieval prefilter size (default: the recipe's)")
    g.add_argument("--draws", type=int, default=None, help="ALBAT (t, noise) draws shared by all candidates (default 16)")
    g.add_argument("--score-seed", type=int, default=None,
                   help="ALBAT seed of the scoring draws, apart from the training seed (default 0)")
    g.add_argument("--no-race", dest="race", action="store_false",
                   help="ALBAT: score every candidate with every draw (default: successive halving, half the passes)")
    g.add_argument("--surrogate-steps", type=int, default=None,
                   help="ALBAT surrogate steps (default: 25%% of --steps)")
    g.add_argument("--aug-weight", type=float, default=None, help="lambda: loss weight of backbone items (default 1)")


def _selection_params(args, n_images: int | None = None):
    from .albat import SelectionParams
    from .models.recipe import recipe_for

    recipe = recipe_for(args.model).selection_settings(n_images)
    optional = {k: v for k, v in (("draws", args.draws), ("score_seed", args.score_seed)) if v is not None}
    return SelectionParams(m=args.m or recipe["m"], k=args.k or recipe["k"], surrogate_steps=args.surrogate_steps,
                           seed=args.seed or 0, race=getattr(args, "race", True), **optional)


def train_config_from_args(args, n_images: int | None = None):
    import json

    from .train import TrainConfig

    data = {}
    if args.config:
        try:
            data = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            raise BatError(f"--config {args.config}: cannot read it as JSON ({exc}).") from exc
    flags = {"aug_weight": getattr(args, "aug_weight", None), "token": args.token, "class_noun": args.class_noun, "steps": args.steps, "rank": args.rank,
             "alpha": args.alpha, "lr": args.lr, "batch_size": args.batch_size, "resolution": args.resolution,
             "seed": args.seed, "num_class_images": args.num_class_images,
             "checkpoint_every": args.checkpoint_every, "pivotal": getattr(args, "pivotal", None),
             "embedding_lr": getattr(args, "embedding_lr", None), "prior": args.prior,
             "embeddings_only_steps": getattr(args, "embeddings_only_steps", None),
             "freeze_embeddings_after": getattr(args, "freeze_embeddings_after", None),
             "memory_profile": getattr(args, "memory_profile", None),
             "caption_mix": getattr(args, "caption_mix", None),
             "prior_contexts": getattr(args, "prior_contexts", None),
             "background_weight": getattr(args, "background_weight", None),
             "backdrop_swaps": getattr(args, "backdrop_swaps", None),
             "refine_latents": getattr(args, "refine_latents", None),
             "refine_anchor": getattr(args, "refine_anchor", None),
             "refine_subject_weight": getattr(args, "refine_subject_weight", None),
             "save_every": getattr(args, "save_every", None),
             "step_choices": getattr(args, "step_choices", None),
             "tail_average": getattr(args, "tail_average", None)}
    data.update({k: v for k, v in flags.items() if v is not None})
    for flag in ("captions", "train_text_encoder"):
        if getattr(args, flag):
            data[flag] = True
    return TrainConfig.for_model(args.model, n_images, **data)


def run_train(args) -> int:
    from .train import train_lora

    from .albat.run import run_selection, train_with_selection

    config, components, images = _prepare(args)
    bars = TqdmProgress()
    try:
        if args.method == "none":
            result = train_lora(components, images, config, args.out, resume=args.resume, progress=bars)
        else:
            selection = run_selection(args.method, components, images, config, pool_dir=args.pool,
                                      params=_selection_params(args, len(images)), out_dir=Path(args.out) / "selection",
                                      progress=bars)
            bars.close()
            print(f"selected {len(selection)} backbone items with '{args.method}' "
                  f"-> {Path(args.out) / 'selection' / 'selection.jsonl'}")
            result = train_with_selection(components, images, config, selection, args.out,
                                          resume=args.resume, progress=bars)
    finally:
        bars.close()
    if config.export_steps():
        grid = render_steps_grid(components, config, Path(args.out), result.steps, [u.image for u in images])
        print(f"the saved steps side by side (same prompts and seeds; keep the one that shows your subject best, "
              f"its LoRA is in {Path(args.out) / 'steps'}): {grid}")
    print(f"done: {result.steps} steps ({result.steps_per_s:.2f} steps/s"
          f"{f', resumed at step {result.resumed_from}' if result.resumed_from else ''}) -> "
          f"{result.files['diffusers']} (diffusers), {result.files['kohya']} (A1111/ComfyUI), "
          f"{result.files['card']}")
    return 0


def render_steps_grid(components, config, out_dir: Path, final_step: int, photos) -> Path:
    """``out_dir/steps.png``: the last third's saved steps and the final one, on the preview
    prompts, under the user's ``photos``."""
    from .preview.step_pick import candidate_steps, steps_grid
    from .progress import ProgressEvent
    from .train.checkpoint import saved_steps

    bars = TqdmProgress()
    try:
        folders = candidate_steps(saved_steps(out_dir), final_step, out_dir)
        grid = steps_grid(components, folders, config.token, config.class_noun, photos=photos,
                          progress=lambda done, total: bars(ProgressEvent("steps grid", done, total)))
    finally:
        bars.close()
    grid.save(out_dir / "steps.png")
    return out_dir / "steps.png"


def _prepare(args):
    """Config, loaded backbone and checked images for train/select."""
    from .images import IntakeLimits, load_user_images
    from .models import default_preset, load_components
    from .models.memory import check_environment, load_settings

    if args.model is None:
        args.model = default_preset()
        print(f"--model not given: using the '{args.model}' preset "
              f"({'CUDA found' if args.model == 'sd15' else 'no CUDA device, CPU-sized backbone'}).")
    config = train_config_from_args(args)  # checks the settings before anything loads
    limits = IntakeLimits(min_images=args.min_images, max_images=args.max_images)
    check_environment(config, args.model)  # 8-bit Adam, a 4-bit base: before anything loads
    components = load_components(args.model, device=args.device, vae=args.vae, **load_settings(config))
    resolution = config.resolution or components.spec.resolution
    report = load_user_images([Path(p) for p in args.images] if len(args.images) > 1 else Path(args.images[0]),
                              limits=limits, resolution=resolution)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    # The recipe's steps depend on how many photos there are: now that is known.
    config = train_config_from_args(args, len(report.images))
    return config, components, report.images


# --- select ------------------------------------------------------------------------------

def _add_select(sub) -> None:
    p = sub.add_parser("select", help="select backbone items for a subject (ALBAT or a baseline)",
                       description="Select backbone-pool items for the subject in --images and write "
                                   "selection.jsonl, selection.json and contact_sheet.png to --out.")
    _add_subject_args(p, class_noun_required=False,
                      out_help="output folder (selection.jsonl, selection.json, contact_sheet.png)")
    p.add_argument("--steps", type=int, default=None, help="the final training's steps (sets the surrogate's)")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resolution", type=int, default=None)
    _add_machine_args(p)
    _add_selection_args(p, required=True)
    p.set_defaults(func=run_select, config=None, alpha=None, batch_size=None, num_class_images=None,
                   checkpoint_every=None, prior=None, captions=False, train_text_encoder=False)


def run_select(args) -> int:
    from .albat.run import run_selection

    config, components, images = _prepare(args)
    bars = TqdmProgress()
    try:
        selection = run_selection(args.method, components, images, config, pool_dir=args.pool,
                                  params=_selection_params(args, len(images)), out_dir=args.out, progress=bars)
    finally:
        bars.close()
    took = sum(selection.timings.values())
    print(f"done: selected {len(selection)} items with '{args.method}' in {took:.1f}s -> "
          f"{Path(args.out) / 'selection.jsonl'}, {Path(args.out) / 'contact_sheet.png'}")
    return 0


# --- presets -----------------------------------------------------------------------------

def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the model presets")
    p.add_argument("--markdown", action="store_true", help="the README's model table")
    p.set_defaults(func=run_presets)


def run_presets(args) -> int:
    from .models import default_preset, presets
    from .models.memory import profiles
    from .models.presets import license_line, model_table
    from .models.recipe import recipe_for

    if getattr(args, "markdown", False):
        print(model_table())
        return 0
    default = default_preset()
    for name, preset in presets().items():
        mark = " (default here)" if name == default else ""
        print(f"{name}{mark}: {preset['source']} — {preset['description']}")
        print(f"    family {preset.get('family', 'sd')}, {preset['resolution']} px"
              + (f", {license_line(name)}" if license_line(name) else ""))
        train = recipe_for(name).train_settings(None)
        sel = recipe_for(name).selection_settings(None)
        print(f"    recipe (5 photos): {train['steps']} steps, lr {train['lr']:g}, rank {train['rank']}, "
              f"batch {train['batch_size']}, pivotal {'on' if train['pivotal'] else 'off'}, "
              f"prior preservation {'on (' + str(train['num_class_images']) + ' class images)' if train['prior'] else 'off'}, "
              f"m {sel['m']}, k {sel['k']}")
        for profile in reversed(profiles(name)):
            print(f"    memory profile '{profile.name}' (from {profile.min_gpu_gb:g} GB): {profile.summary()}")
    return 0


def _set_threads() -> None:
    """BAT_TORCH_THREADS caps torch's CPU threads: on a shared CPU, one thread per core
    oversubscribes the machine and small models run many times slower."""
    import os

    if os.environ.get("BAT_TORCH_THREADS"):
        import torch

        torch.set_num_threads(int(os.environ["BAT_TORCH_THREADS"]))


def _quiet_libraries() -> None:
    """Keep the CLI's output to our own progress: library progress bars and info logs off."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass
