"""Scoring generated samples with the attribute classifier (the Shapes world's metrics)."""

from __future__ import annotations

import random

import numpy as np
import torch

from bat_app.shapes.world import COLOURS, SHAPES


def following_prompts(n: int, seed: int = 1234) -> list[tuple[str, dict]]:
    """n prompts naming shape, colour and background, with the attributes they ask for."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shape = rng.choice(SHAPES)
        colour, background = rng.sample(list(COLOURS), 2)
        out.append((f"a {colour} {shape} on a {background} background",
                    {"shape": shape, "colour": colour, "background": background}))
    return out


def score_following(predictions: list[dict], wanted: list[dict]) -> dict:
    keys = ("shape", "colour", "background")
    per = {k: float(np.mean([p[k] == w[k] for p, w in zip(predictions, wanted)])) for k in keys}
    per["all_three"] = float(np.mean([all(p[k] == w[k] for k in keys)
                                      for p, w in zip(predictions, wanted)]))
    return {k: round(v, 3) for k, v in per.items()}


@torch.no_grad()
def grid_prompt_following(unet, vae, text_encoder, tokenizer, classifier, n_prompts: int = 32,
                          seeds=(0,), steps: int = 20, guidance: float = 4.0,
                          grid_path=None) -> dict:
    """Sample every prompt once per seed (DDIM, CFG) and score shape/colour/background."""
    from bat_app.shapes.backbone import decode_to_uint8, encode_text, make_scheduler, sample_latents

    prompts = following_prompts(n_prompts)
    cond = encode_text(text_encoder, tokenizer, [p for p, _ in prompts])
    uncond = encode_text(text_encoder, tokenizer, [""])
    images, wanted = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        lat = sample_latents(unet, make_scheduler(), cond, uncond, steps, guidance, gen)
        images.append(decode_to_uint8(vae, lat))
        wanted += [w for _, w in prompts]
    images = np.concatenate(images)
    if grid_path is not None:  # 8 per row, upscaled 3x, for a look during training
        from PIL import Image

        rows = [np.concatenate(list(images[i:i + 8]), axis=1) for i in range(0, len(images) - 7, 8)]
        grid = np.concatenate(rows, axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(grid_path)
    return score_following(classifier.predict(images), wanted)
