"""ALBAT: pick the backbone items that the adaptation itself pulls towards.

1. retrieval prefilter: the K pool items nearest (CLIP) to the user images;
2. surrogate: a short LoRA phi_s on the user images alone;
3. score: Delta(x) = l(x, c; 0) - l(x, c; phi_s) with shared (t, noise) draws (see score.py);
4. reject Delta <= 0 (the adapted model fits x worse: x would pull the optimum away), drop
   near-duplicates (CLIP cosine > 0.95), keep the top m by Delta.
The final training (G + S, weight lambda) is the caller's. docs/albat.md has the reasoning.
"""

from __future__ import annotations

import time

import numpy as np

from ..paths import cache_dir
from ..train.data import Example
from ..train.progress import ProgressEvent
from .baselines import _need_pool, _row
from .retrieval import drop_near_duplicates, nearest_items, user_embeddings
from .score import loss_reduction, train_surrogate
from .selection import Selection, SelectionContext


class AlbatSelector:
    name = "albat"

    def select(self, ctx: SelectionContext) -> Selection:
        pool = _need_pool(ctx, self.name)
        p = ctx.params
        emit = ctx.progress or (lambda e: None)
        cache_root = ctx.cache_root or cache_dir()
        resolution = ctx.config.resolution or ctx.components.spec.resolution
        timings = {}

        start = time.perf_counter()
        emit(ProgressEvent("retrieve", 0, 1, message=f"top {p.k} of {len(pool)}"))
        candidates, sims = nearest_items(pool, user_embeddings(ctx.embedder, ctx.images), p.k)
        emit(ProgressEvent("retrieve", 1, 1))
        timings["retrieve"] = time.perf_counter() - start

        start = time.perf_counter()
        steps = p.surrogate_steps or max(1, round(p.surrogate_fraction * ctx.config.steps))
        surrogate = train_surrogate(ctx.components, ctx.images, ctx.config, steps, cache_root, emit)
        timings["surrogate"] = time.perf_counter() - start

        start = time.perf_counter()
        examples = [Example(pool.load_image(i), pool.item(i).caption) for i in candidates]
        deltas = loss_reduction(ctx.components, examples, resolution, surrogate, ctx.config, draws=p.draws,
                                batch_size=p.batch_size, seed=p.seed, cache_root=cache_root, progress=emit)
        timings["score"] = time.perf_counter() - start

        order = [i for i in np.argsort(-deltas, kind="stable") if deltas[i] > 0]
        positive_ids = [candidates[i] for i in order]
        kept, dropped = drop_near_duplicates(positive_ids, pool.embeddings()[positive_ids], p.dedupe) \
            if positive_ids else ([], [])
        chosen = kept[:p.m]
        by_id = {candidates[i]: (deltas[i], sims[i]) for i in range(len(candidates))}
        rows = [_row(pool, i, by_id[i][0], f"Delta {by_id[i][0]:.4g} > 0 (CLIP {by_id[i][1]:.3f})")
                for i in chosen]
        stats = {"candidates": len(candidates), "positive": len(positive_ids), "near_duplicates": len(dropped),
                 "selected": len(rows), "surrogate_steps": steps, "delta": _describe(deltas),
                 "unet_forward_passes": 2 * p.draws * len(candidates)}
        return Selection(self.name, rows, p.to_dict(), timings, stats)


def _describe(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {"mean": float(values.mean()), "std": float(values.std()), "positive_fraction": float((values > 0).mean()),
            **{f"q{int(k * 100):02d}": float(v) for k, v in zip([0, .1, .25, .5, .75, .9, 1], q)}}
