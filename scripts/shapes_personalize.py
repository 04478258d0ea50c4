"""Personalization target on the shapes backbone: DreamBooth-LoRA on 3 photos per subject.

For every held-out subject: train the foundation trainer (``bat_app.train.train_lora``) on the
first 3 example uploads in assets/subjects/<name>/, sample "a photo of sks <class>" with
N seeds with and without the LoRA, and count with the attribute classifier how many samples
show the subject's trait (and its class). Writes assets/shapes/personalization.json, which
``python -m bat_app shapes targets`` prints.

    python scripts/shapes_personalize.py                      # all subjects, defaults
    python scripts/shapes_personalize.py --subjects dot_star --steps 300 --samples 32
    python scripts/shapes_personalize.py --quick            # a smoke run: writes nothing
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bat_app.shapes import SUBJECTS, get_subject, load_attribute_classifier, shapes_paths
from bat_app.shapes.targets import generate, load_backbone_pipeline, sampling_defaults

DEFAULTS = {"steps": 400, "lr": 1e-3, "rank": 8, "batch_size": 2}


def trait_rate(predictions: list[dict], subject) -> dict:
    trait = [all(p[k] == v for k, v in subject.trait.items()) for p in predictions]
    shape = [p["shape"] == subject.class_noun for p in predictions]
    return {"trait": round(float(np.mean(trait)), 3), "class": round(float(np.mean(shape)), 3),
            "trait_and_class": round(float(np.mean([a and b for a, b in zip(trait, shape)])), 3)}


def personalize(subject, classifier, samples: int, n_images: int, train_kwargs: dict,
                backbone: Path, work: Path) -> dict:
    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.train import TrainConfig, train_lora

    folder = shapes_paths().subjects / subject.name
    files = sorted(folder.glob("*.png"))[:n_images]
    report = load_user_images(files, resolution=32)
    config = TrainConfig(token="sks", class_noun=subject.class_noun, resolution=32,
                         checkpoint_every=0, seed=0, mixed_precision="no", **train_kwargs)
    components = load_components(str(backbone), device="cpu")
    t0 = time.time()
    result = train_lora(components, report.images, config, work / subject.name)
    train_s = time.time() - t0

    defaults = sampling_defaults(backbone)
    prompt = config.prompt
    pipe = load_backbone_pipeline(backbone)
    base = generate(pipe, [prompt] * samples, 7, defaults["num_inference_steps"],
                    defaults["guidance_scale"])
    pipe.load_lora_weights(str(result.files["diffusers"]))
    tuned = generate(pipe, [prompt] * samples, 7, defaults["num_inference_steps"],
                     defaults["guidance_scale"])
    return {"prompt": prompt, "trait": subject.trait, "train_images": [f.name for f in files],
            "train_seconds": round(train_s, 1), "samples": samples,
            "lora": trait_rate(classifier.predict(tuned), subject),
            "base": trait_rate(classifier.predict(base), subject),
            "grid": {"base": base, "lora": tuned}}


def save_grid(rows: dict[str, np.ndarray], path: Path, upscale: int = 4) -> None:
    from PIL import Image

    lines = [np.concatenate(list(images[:16]), axis=1) for images in rows.values()]
    Image.fromarray(np.concatenate(lines, axis=0)).resize(
        (lines[0].shape[1] * upscale, len(lines) * lines[0].shape[0] * upscale), Image.NEAREST
    ).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", nargs="*", default=[s.name for s in SUBJECTS])
    p.add_argument("--samples", type=int, default=32, help="samples per prompt and model")
    p.add_argument("--images", type=int, default=3, help="training photos per subject")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--rank", type=int, default=DEFAULTS["rank"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--out", type=Path, default=None, help="default: assets/shapes/personalization.json")
    p.add_argument("--grids", type=Path, default=None, help="folder for sample grids (png)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    p.add_argument("--quick", action="store_true", help="smoke run: one subject, 5 steps, 2 samples; "
                   "prints the result and leaves assets/ alone (unless --out is given)")
    args = p.parse_args(argv)
    if args.quick:
        args.subjects, args.steps, args.samples, args.batch_size = args.subjects[:1], 5, 2, 1
    torch.set_num_threads(args.threads)
    paths = shapes_paths()
    classifier = load_attribute_classifier(paths.classifier)
    train_kwargs = {"steps": args.steps, "lr": args.lr, "rank": args.rank, "batch_size": args.batch_size}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.subjects:
            r = personalize(get_subject(name), classifier, args.samples, args.images, train_kwargs,
                            paths.backbone, Path(tmp))
            grid = r.pop("grid")
            if args.grids:
                args.grids.mkdir(parents=True, exist_ok=True)
                save_grid(grid, args.grids / f"{name}.png")
            results[name] = r
            print(f"{name}: LoRA {r['lora']}  base {r['base']}  ({r['train_seconds']}s)", flush=True)
    summary = summarize(results, train_kwargs, args.images)
    out = args.out or (None if args.quick else paths.root / "personalization.json")
    if out is not None:
        out.write_text(json.dumps({"summary": summary, "subjects": results}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def summarize(results: dict, train_kwargs: dict, images: int) -> dict:
    return {"lora_trait_mean": round(float(np.mean([r["lora"]["trait"] for r in results.values()])), 3),
            "base_trait_mean": round(float(np.mean([r["base"]["trait"] for r in results.values()])), 3),
            "subjects_lora_ge_60": sum(r["lora"]["trait"] >= 0.6 for r in results.values()),
            "subjects_base_lt_10": sum(r["base"]["trait"] < 0.1 for r in results.values()),
            "n_subjects": len(results), "train": train_kwargs, "images_per_subject": images,
            "target": "LoRA >= 0.60 of samples show the trait, base < 0.10"}


if __name__ == "__main__":
    raise SystemExit(main())
