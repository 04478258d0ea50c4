"""Which step of a training to keep: every saved LoRA sampled on the preview prompts and scored
with CLIP, without any judge of the subject.

A LoRA trained at a high, constant learning rate does not settle: on the shapes backbone the
markings come and go between steps, and one training seed moves a subject's figures by up to 46
points (docs/shapes.md). The trainer can export earlier steps (``TrainConfig.save_every``); this
module scores each one the way DreamBooth's paper scores a model:

    clip_i   subject prompts ("a photo of sks dog"): mean cosine to the user's photos
    clip_t   context and property prompts ("a sks dog on a blue background"): mean cosine to the
             prompt without the trigger (does the LoRA still follow the words?)
    score    clip_i + clip_t; the best score is kept (ties: the later step)

    scores = score_steps(components, {200: dir200, 300: out_dir}, photos, embedder, "sks", "dog")
    keep = best_step(scores)

No check is in the product: the shapes CLIP barely sees a dot or a checker (twentieth session),
the pixel match of ``appearance_steps`` (``metrics.subject_match``) does not see it either
(twenty-first), and the identity network (``shapes.identity``, the shapes world's DINO) read by
``picture_scores`` off the app's own steps picture follows the dot but not the outline, and picks
no better than the final step (twenty-third). A judge that sees the subject, on draws it is not graded on, picks steps
that meet both targets in 25 of 30 cells against the final step's 19 (docs/shapes.md): the
differences between steps are real, and the eye that sees them is the user's. So ``steps_grid``
draws the candidate steps side by side on the same prompts and seeds, for the user to choose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from PIL import Image

from ..images.grid import BACKGROUND, image_grid
from ..metrics.clip_scores import clip_i, clip_t, strip_token
from ..metrics.subject_match import sample_matches
from .prompts import default_prompt_set, load_prompt_set
from .sample import sample_images

SEEDS = (1000, 1001, 1002, 1003)  # apart from the preview's and the benchmarks' seeds (0..15)
APPEARANCE_SEEDS = tuple(range(1000, 1008))  # 16 samples of the two subject prompts: a dot in 6% vs 94%
# Only the last third of a training competes: earlier steps have not learnt the subject yet
# (on shapes, 150 of the recipe's 300 steps lose the markings).
LAST_SHARE = 1 / 3


def candidate_steps(saved: dict[int, Path], final_step: int, final_dir: Path) -> dict[int, Path]:
    """The saved steps in the last third of the training, and the final LoRA.

    >>> sorted(candidate_steps({50: "a", 200: "b", 250: "c"}, 300, "final"))
    [200, 250, 300]
    """
    first = round(final_step * (1 - LAST_SHARE))
    return {step: folder for step, folder in saved.items() if first <= step < final_step} | {final_step: final_dir}


def earlier_choices(lora_dir: Path, final_step: int) -> dict[int, Path]:
    """step -> folder of the earlier steps a training in ``lora_dir`` kept in its last third
    (``candidate_steps`` without the final one): what the user may keep instead of the final LoRA."""
    from ..train.checkpoint import saved_steps

    return {step: folder for step, folder in candidate_steps(saved_steps(lora_dir), final_step, lora_dir).items()
            if step != final_step}


GRID_SEEDS = (0, 1, 2, 3)  # starts with the compare previews' default seeds (0, 1): their columns match


def _prompt_pairs(components, token: str, class_noun: str, prompt_set: str | None) -> list[tuple[str, str]]:
    """(kind, prompt) of ``prompt_set``, default the preset's preview set."""
    spec = components.spec
    name = prompt_set or default_prompt_set(spec.preset or spec.name, class_noun)
    return load_prompt_set(name).prompts(token, class_noun)


def steps_grid(components, folders: dict[int, Path], token: str, class_noun: str, prompt_set: str | None = None,
               seeds: Sequence[int] = GRID_SEEDS, cell: int = 64, photos: Sequence = (),
               progress: Callable[[int, int], None] | None = None):
    """One picture: a row per preview prompt, and for each step (``folders``: step -> LoRA folder,
    e.g. ``candidate_steps``) a block of columns, one per seed (``steps_picture``, with the
    user's ``photos`` on top)."""
    prompts = [p for _, p in _prompt_pairs(components, token, class_noun, prompt_set)]
    samples = {}
    for done, (step, folder) in enumerate(sorted(folders.items())):
        samples[step] = sample_images(components, prompts, list(seeds), folder)
        if progress is not None:
            progress(done + 1, len(folders))
    return steps_picture(samples, prompts, len(seeds), cell, photos)


PHOTOS_ROW = "your photos, to compare with"


def steps_picture(samples: dict[int, list[list]], prompts: Sequence[str], n_seeds: int, cell: int = 64,
                  photos: Sequence = ()):
    """``samples``: step -> [prompt][seed] images, drawn with the same prompts and seeds for every
    step, so a column differs from its neighbour block only by the training steps. A row per
    prompt, a block of ``n_seeds`` columns per step, titled with the step; with ``photos``, a first
    row of the user's photos (as many as there are columns), so that a lost dot or outline is
    judged against the subject itself rather than from memory."""
    steps = sorted(samples)
    columns = len(steps) * n_seeds
    shown = [im.convert("RGB") for im in list(photos)[:columns]]
    top = shown + [Image.new("RGB", (cell, cell), BACKGROUND)] * (columns - len(shown)) if shown else []
    images = top + [im for row in range(len(prompts)) for step in steps for im in samples[step][row]]
    titles = [f"step {step}" if i == 0 else "" for step in steps for i in range(n_seeds)]
    return image_grid(images, columns=columns, cell=cell, column_titles=titles,
                      row_titles=([PHOTOS_ROW] if shown else []) + list(prompts), title_width=260)


def score_steps(components, folders: dict[int, Path], references: Sequence, embedder, token: str, class_noun: str,
                prompt_set: str | None = None, seeds: Sequence[int] = SEEDS,
                progress: Callable[[int, int], None] | None = None) -> dict[int, dict]:
    """step -> {"clip_i", "clip_t", "score"} for the LoRA folder of each step (see module doc).
    ``references``: the user's photos (PIL images); ``prompt_set``: default the preset's."""
    pairs = _prompt_pairs(components, token, class_noun, prompt_set)
    subject_rows = [i for i, (kind, _) in enumerate(pairs) if kind == "subject"]
    text_rows = [i for i, (kind, _) in enumerate(pairs) if kind != "subject"]
    photos = embedder.encode_images(list(references))
    texts = embedder.encode_texts([strip_token(pairs[i][1], token) for i in text_rows])
    scores = {}
    for done, (step, folder) in enumerate(sorted(folders.items())):
        images = sample_images(components, [p for _, p in pairs], list(seeds), folder)
        emb = embedder.encode_images([im for row in images for im in row]).reshape(len(pairs), len(seeds), -1)
        ci = clip_i(emb[subject_rows].reshape(-1, emb.shape[-1]), photos)
        ct = clip_t(emb[text_rows].reshape(-1, emb.shape[-1]), np.repeat(texts, len(seeds), axis=0))
        scores[step] = {"clip_i": round(ci, 4), "clip_t": round(ct, 4), "score": round(ci + ct, 4)}
        if progress is not None:
            progress(done + 1, len(folders))
    return scores


def picture_scores(samples: dict[int, list[list]], pairs: Sequence[tuple[str, str]], references: Sequence,
                   subject_embedder, text_embedder, token: str) -> dict[int, dict]:
    """step -> {"subject", "clip_t", "score"} read from samples already drawn (``samples``: step ->
    [prompt][seed], rows in the order of ``pairs``, as the app's steps picture draws them); no
    sample is drawn here.

        subject  ``subject_embedder``'s cosine (clip_i) of every sample whose prompt has the
                 trigger to the user's photos (the identity network on shapes, DINO on SD:
                 a subject eye that ignores background, position and size)
        clip_t   the context and property prompts' samples against their prompts without the
                 trigger (``text_embedder``: CLIP)
    """
    photos = subject_embedder.encode_images(list(references))
    with_token = [i for i, (_, prompt) in enumerate(pairs) if token in prompt.split()]
    text_rows = [i for i, (kind, _) in enumerate(pairs) if kind in ("context", "property")]
    texts = text_embedder.encode_texts([strip_token(pairs[i][1], token) for i in text_rows])
    scores = {}
    for step, rows in sorted(samples.items()):
        subject = clip_i(subject_embedder.encode_images([im for i in with_token for im in rows[i]]), photos)
        emb = text_embedder.encode_images([im for i in text_rows for im in rows[i]])
        ct = clip_t(emb, np.repeat(texts, len(rows[0]), axis=0))
        scores[step] = {"subject": round(subject, 4), "clip_t": round(ct, 4), "score": round(subject + ct, 4)}
    return scores


def appearance_steps(components, folders: dict[int, Path], references: Sequence, token: str, class_noun: str,
                     prompt_set: str | None = None, seeds: Sequence[int] = APPEARANCE_SEEDS,
                     progress: Callable[[int, int], None] | None = None) -> dict[int, list]:
    """step -> each subject-prompt sample's pixel match to the user's photos (``references``;
    ``subject_match.sample_matches``: None where no subject is found). Its ``mean_found`` is the
    step's appearance."""
    pairs = _prompt_pairs(components, token, class_noun, prompt_set)
    prompts = [prompt for kind, prompt in pairs if kind == "subject"]
    out = {}
    for done, (step, folder) in enumerate(sorted(folders.items())):
        images = sample_images(components, prompts, list(seeds), folder)
        out[step] = [None if m is None else round(m, 4)
                     for m in sample_matches([im for row in images for im in row], references)]
        if progress is not None:
            progress(done + 1, len(folders))
    return out


def best_step(scores: dict[int, dict]) -> int:
    """The step with the highest score; on a tie the later one (more training, as the final export).

    >>> best_step({200: {"score": 1.1}, 300: {"score": 1.1}, 250: {"score": 1.0}})
    300
    """
    return max(scores, key=lambda step: (scores[step]["score"], step))
