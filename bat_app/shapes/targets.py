"""``python -m bat_app shapes targets``: measure the Shapes world's target figures.

    prompt following   prompts naming shape, colour and background; 4 seeds each; the
                       backbone loaded by diffusers' StableDiffusionPipeline at its default
                       sampling settings (bat_shapes.json); judged by the classifier.
                       Target: >= 80% of samples show all three.
    retrieval          10,000 pool items (the pretraining stream, seed 0); for each caption,
                       is its own image in the CLIP top 10? Target: >= 70%.
    classifier         per-attribute accuracy on held-out generator images (fresh seed, full
                       attribute space). Target: >= 95% per attribute.
    personalization    read from OUT/personalization.json, written by
                       scripts/shapes_personalize.py (trains LoRAs; minutes per subject).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bat_app.shapes.paths import shapes_paths


def load_backbone_pipeline(folder: Path | None = None):
    """The shipped backbone as a diffusers StableDiffusionPipeline (CPU, fp32)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder) if folder else shapes_paths().backbone
    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sampling_defaults(folder: Path | None = None) -> dict:
    folder = Path(folder) if folder else shapes_paths().backbone
    return json.loads((folder / "bat_shapes.json").read_text())


@torch.no_grad()
def generate(pipe, prompts: list[str], seed: int, steps: int, guidance: float,
             resolution: int = 32, batch_size: int = 64) -> np.ndarray:
    """uint8 (n, res, res, 3); prompt i uses torch.Generator seeded ``seed * 100003 + i``."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        gens = [torch.Generator().manual_seed(seed * 100003 + i + j) for j in range(len(chunk))]
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance,
                      height=resolution, width=resolution, generator=gens,
                      output_type="np").images
        out.append((np.asarray(images) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def prompt_following(pipe, classifier, n_prompts: int = 50, seeds=(0, 1, 2, 3),
                     steps: int | None = None, guidance: float | None = None) -> dict:
    from bat_app.shapes.evaluate import following_prompts, score_following

    defaults = sampling_defaults(Path(pipe.config._name_or_path)) if steps is None or guidance is None else {}
    steps = steps or defaults["num_inference_steps"]
    guidance = guidance if guidance is not None else defaults["guidance_scale"]
    prompts = following_prompts(n_prompts)
    preds, wanted = [], []
    for seed in seeds:
        images = generate(pipe, [p for p, _ in prompts], seed, steps, guidance)
        preds += classifier.predict(images)
        wanted += [w for _, w in prompts]
    return {**score_following(preds, wanted), "samples": len(preds), "steps": steps,
            "guidance": guidance}


@torch.no_grad()
def retrieval(n: int = 10000, seed: int = 0, k: int = 10, clip_folder: Path | None = None) -> dict:
    """Fraction of pool items whose image is in the top k for their own caption."""
    from bat_app.shapes import load_shapes_clip
    from bat_app.shapes.clip import images_to_tensor
    from bat_app.shapes.world import sample_arrays

    model, _, tokenizer = load_shapes_clip(clip_folder)
    images, captions, _ = sample_arrays(seed, n)
    img = torch.cat([model.encode_image(images_to_tensor(images[i:i + 1000]), normalize=True)
                     for i in range(0, n, 1000)])
    txt = torch.cat([model.encode_text(tokenizer(captions[i:i + 1000]), normalize=True)
                     for i in range(0, n, 1000)])
    hits, ranks = 0, []
    for i in range(0, n, 1000):
        sims = txt[i:i + 1000] @ img.T
        own = sims[torch.arange(len(sims)), torch.arange(i, i + len(sims))]
        rank = (sims > own[:, None]).sum(1)  # images strictly better than the right one
        ranks.append(rank)
        hits += int((rank < k).sum())
    ranks = torch.cat(ranks).float()
    return {f"top{k}": round(hits / n, 4), "top1": round(float((ranks < 1).float().mean()), 4),
            "median_rank": float(ranks.median()), "pool_size": n}


def classifier_accuracy(classifier, n: int = 4000, seed: int = 303) -> dict:
    from bat_app.shapes.classifier import accuracy
    from bat_app.shapes.world import sample_arrays

    images, _, attrs = sample_arrays(seed, n, pretraining=False)
    return {k: round(v, 4) for k, v in accuracy(classifier, images, attrs).items()}


def run_targets(root: Path | None = None, n_prompts: int = 50, retrieval_n: int = 10000,
                out=print) -> dict:
    from bat_app.shapes import load_attribute_classifier

    paths = shapes_paths(root)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    classifier = load_attribute_classifier(paths.classifier)
    results: dict = {}
    t = time.time()
    acc = classifier_accuracy(classifier)
    results["classifier_accuracy"] = {"per_attribute": acc, "min": min(acc.values()),
                                      "target": ">= 0.95 per attribute",
                                      "met": min(acc.values()) >= 0.95}
    out(f"classifier accuracy (held-out, n=4000): {acc}  [{time.time() - t:.0f}s]")
    t = time.time()
    pipe = load_backbone_pipeline(paths.backbone)
    pf = prompt_following(pipe, classifier, n_prompts=n_prompts)
    results["prompt_following"] = {**pf, "target": ">= 0.80 all three",
                                   "met": pf["all_three"] >= 0.80}
    out(f"prompt following ({pf['samples']} samples): {pf}  [{time.time() - t:.0f}s]")
    t = time.time()
    rt = retrieval(retrieval_n, clip_folder=paths.clip)
    results["retrieval"] = {**rt, "target": ">= 0.70 top10", "met": rt["top10"] >= 0.70}
    out(f"retrieval (own image in top 10 of {retrieval_n}): {rt}  [{time.time() - t:.0f}s]")
    pers = paths.root / "personalization.json"
    if pers.exists():
        results["personalization"] = json.loads(pers.read_text())
        out(f"personalization (from {pers}): {json.dumps(results['personalization']['summary'])}")
    else:
        out("personalization: not measured yet (python scripts/shapes_personalize.py)")
    return results
