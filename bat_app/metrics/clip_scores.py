"""CLIP-I, CLIP-T and diversity from any embedder with ``encode_images`` / ``encode_texts``
returning L2-normalised rows (open_clip models, the shapes CLIP)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def clip_i(generated: np.ndarray, references: np.ndarray) -> float:
    """Subject fidelity: mean cosine between every generated image and every user image."""
    return float((generated @ references.T).mean())


def clip_t(generated: np.ndarray, texts: np.ndarray) -> float:
    """Prompt fidelity: mean cosine between each generated image and its own prompt (row-aligned)."""
    return float(np.sum(generated * texts, axis=1).mean())


def diversity(groups: Sequence[np.ndarray]) -> float:
    """Mean pairwise (1 - cosine) between the seeds of one prompt, averaged over prompts."""
    values = []
    for g in groups:
        if len(g) < 2:
            continue
        sims = g @ g.T
        iu = np.triu_indices(len(g), k=1)
        values.append(float((1 - sims[iu]).mean()))
    return float(np.mean(values)) if values else float("nan")


def strip_token(prompt: str, token: str) -> str:
    """CLIP-T is measured against the prompt without the rare token (CLIP never saw it)."""
    return " ".join(w for w in prompt.split() if w != token)
