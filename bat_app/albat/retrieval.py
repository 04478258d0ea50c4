"""CLIP retrieval from a pool: the items nearest to any of the user's images."""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def user_embeddings(embedder, images) -> np.ndarray:
    return np.asarray(embedder.encode_images([u.image for u in images]), dtype=np.float32)


def nearest_items(pool, queries: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Union of each query's top-k, scored by the best cosine to any query, best first."""
    if len(pool) == 0:
        raise InputError("The backbone pool is empty: build it from a source with images first "
                         "(python -m bat_app pool build SOURCE --out POOL).")
    k = min(k, len(pool))
    scores, ids = pool.search(queries, k)
    best: dict[int, float] = {}
    for row_ids, row_scores in zip(ids, scores):
        for i, s in zip(row_ids.tolist(), row_scores.tolist()):
            if i >= 0 and s > best.get(i, -np.inf):
                best[i] = s
    ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return [i for i, _ in ranked], [s for _, s in ranked]


def drop_near_duplicates(ids: list[int], embeddings: np.ndarray, threshold: float) -> tuple[list[int], list[int]]:
    """Greedy in the given order: keep an item unless its cosine to a kept one exceeds
    ``threshold``. Returns (kept, dropped)."""
    if threshold >= 1.0 or not ids:
        return list(ids), []
    kept, dropped, kept_vecs = [], [], []
    for i, vec in zip(ids, embeddings):
        if kept_vecs and float(np.max(np.stack(kept_vecs) @ vec)) > threshold:
            dropped.append(i)
        else:
            kept.append(i)
            kept_vecs.append(vec)
    return kept, dropped


def take_distinct(ids: list[int], embeddings: np.ndarray, quota: int, threshold: float,
                  kept: list[np.ndarray] | None = None) -> tuple[list[int], int]:
    """Walk ``ids`` in order and take up to ``quota`` of them, skipping an item whose CLIP cosine
    to one already taken (or to a vector in ``kept``, which is extended) exceeds ``threshold``.
    ``embeddings`` is indexed by pool id. Returns (taken, skipped before the quota was met)."""
    kept = kept if kept is not None else []
    taken, skipped = [], 0
    for i in ids:
        if len(taken) >= quota:
            break
        vec = embeddings[i]
        if threshold < 1.0 and kept and float(np.max(np.stack(kept) @ vec)) > threshold:
            skipped += 1
            continue
        taken.append(i)
        kept.append(vec)
    return taken, skipped
