"""Numbers under each column of a comparison: CLIP-I, CLIP-T, DINO (when its weights exist),
diversity, and on the shapes backbone the classifier's attribute scores."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .clip_scores import clip_i, clip_t, diversity, strip_token
from .dino import dino_embed, dino_unavailable_reason

__all__ = ["clip_i", "clip_t", "compute_metrics", "diversity", "json_safe", "write_metrics"]


def compute_metrics(columns: dict[str, list[list]], prompts: Sequence[tuple[str, str]], references: Sequence,
                    embedder, token: str, class_noun: str, subject=None, classifier=None) -> dict:
    """Per method: ``clip_i`` (subject and context prompts vs the user images), ``clip_t``
    (context/property prompts, token removed), ``diversity`` and, if available, ``dino``; with a
    shapes ``subject`` and ``classifier`` also the attribute scores. Returns
    ``{"methods": {method: {metric: value}}, "notes": [...]}``."""
    notes = []
    ref_clip = embedder.encode_images(list(references))
    ref_dino = dino_embed(list(references))
    if ref_dino is None:
        notes.append(f"DINO column absent: {dino_unavailable_reason()}.")
    kinds = {text: kind for kind, text in prompts}
    texts = embedder.encode_texts([strip_token(t, token) for _, t in prompts])
    result = {}
    for method, images in columns.items():
        flat = [im for row in images for im in row]
        emb = embedder.encode_images(flat)
        per_prompt = emb.reshape(len(prompts), -1, emb.shape[-1])
        subj_rows = [i for i, (kind, _) in enumerate(prompts) if kind in ("subject", "context")]
        text_rows = [i for i, (kind, _) in enumerate(prompts) if kind in ("context", "property")]
        m = {"clip_i": clip_i(per_prompt[subj_rows].reshape(-1, emb.shape[-1]), ref_clip) if subj_rows else None,
             "clip_t": clip_t(per_prompt[text_rows].reshape(-1, emb.shape[-1]),
                              np.repeat(texts[text_rows], per_prompt.shape[1], axis=0)) if text_rows else None,
             "diversity": diversity(list(per_prompt))}
        if ref_dino is not None and subj_rows:
            gen = dino_embed([images[i][s] for i in subj_rows for s in range(len(images[i]))])
            m["dino"] = float((gen @ ref_dino.T).mean())
        if subject is not None and classifier is not None:
            from .shapes_scores import shapes_scores

            predictions = {text: classifier.predict(images[i]) for i, (_, text) in enumerate(prompts)}
            m.update(shapes_scores(predictions, kinds, subject.trait, class_noun))
        result[method] = {k: v for k, v in m.items() if v is not None}
    return {"methods": result, "notes": notes}


def json_safe(value):
    """``value`` with every NaN/inf float replaced by None: an undefined metric (diversity with
    one seed) is "not measured", and JSON has no NaN (browsers' JSON.parse rejects it).

    >>> json_safe({"a": float("nan"), "b": [1.0, float("inf")]})
    {'a': None, 'b': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_metrics(path: str | Path, metrics: dict) -> Path:
    """Write ``metrics`` as strict JSON (undefined values as null); returns the path."""
    path = Path(path)
    path.write_text(json.dumps(json_safe(metrics), indent=1, allow_nan=False))
    return path
