"""ALBAT: pick the backbone items that the adaptation itself pulls towards.

1. retrieval prefilter: the K pool items nearest (CLIP) to the user images;
2. surrogate: a short LoRA phi_s on the user images alone (surrogate.py);
3. score: by default the loss reduction Delta(x) over R draws shared by every candidate,
   stratified over timesteps (score.py); any ``Score`` can be passed instead. A score with a
   ``prepare(ctx, examples)`` does its surrogate-free part (the backbone's losses) before step 2;
4. reject Delta <= 0 (the adapted model fits x worse: x would pull the optimum away), drop
   near-duplicates (CLIP cosine > 0.95), keep the top m by Delta. With ``negative_fraction``
   a share of the m slots goes to the most negative items instead ("anchors", a variant).
The final training (G + S, weight lambda) is the caller's. docs/albat.md has the reasoning.

    sel = AlbatSelector().select(ctx)                        # the score named in ctx.params
    sel = AlbatSelector(score=my_score).select(ctx)          # another criterion, same pipeline
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..paths import cache_dir
from ..train.data import Example
from ..progress import ProgressEvent
from .baselines import _need_pool, _row
from .retrieval import nearest_items, take_distinct, user_embeddings
from .score import Score, ScoreResult, get_score
from .selection import Selection, SelectionContext
from .surrogate import surrogate_path, train_surrogate


class AlbatSelector:
    name = "albat"
    needs_pool = True

    def __init__(self, score: Score | None = None):
        self.score = score  # None: the one ctx.params.score names

    def select(self, ctx: SelectionContext) -> Selection:
        pool = _need_pool(ctx, self.name)
        p = ctx.params
        emit = ctx.progress or (lambda e: None)
        if ctx.cache_root is None:  # the score caches latents there too
            ctx = replace(ctx, cache_root=cache_dir())
        score = self.score or get_score(p.score)
        timings = {}

        start = time.perf_counter()
        emit(ProgressEvent("retrieve", 0, 1, message=f"top {p.k} of {len(pool)}"))
        candidates, sims = nearest_items(pool, user_embeddings(ctx.embedder, ctx.images), p.k)
        emit(ProgressEvent("retrieve", 1, 1))
        timings["retrieve"] = time.perf_counter() - start

        # The backbone's side of the score first: it does not need the surrogate, which another
        # lane may be training meanwhile (compare/lanes.py); scoring then finds it cached.
        start = time.perf_counter()
        examples = [Example(pool.load_image(i), pool.item(i).caption) for i in candidates]
        prepared = score.prepare(ctx, examples) if hasattr(score, "prepare") else 0
        timings["reference"] = time.perf_counter() - start

        start = time.perf_counter()
        steps = p.surrogate_steps_for(ctx.config.steps)
        # cached: an earlier job on these photos, or this job's plain LoRA (compare.run)
        cached = surrogate_path(ctx.components, ctx.images, ctx.config, steps, ctx.cache_root).is_file()
        surrogate = train_surrogate(ctx.components, ctx.images, ctx.config, steps, ctx.cache_root, emit,
                                    ctx.cancel)
        timings["surrogate"] = time.perf_counter() - start

        start = time.perf_counter()
        result = score(ctx, examples, surrogate)
        timings["score"] = time.perf_counter() - start

        chosen, dropped, positive = rank_and_pick(candidates, result.values, pool.embeddings(), p.m,
                                                  p.dedupe, p.negative_fraction, p.fill)
        by_id = {c: i for i, c in enumerate(candidates)}
        rows = [_row(pool, c, result.values[by_id[c]], _reason(result, by_id[c], sims[by_id[c]]))
                for c in chosen]
        stats = {"candidates": len(candidates), "positive": positive, "near_duplicates": dropped,
                 "selected": len(rows), "anchors": int(sum(result.values[by_id[c]] < 0 for c in chosen)),
                 "surrogate_steps": steps, "surrogate_cached": cached, "score": getattr(score, "name", type(score).__name__),
                 "delta": describe(result.delta), "score_values": describe(result.values),
                 "unet_forward_passes": result.forward_passes + prepared, **result.details}
        return Selection(self.name, rows, p.to_dict(), timings, stats)


def rank_and_pick(candidates: list[int], values: np.ndarray, embeddings: np.ndarray, m: int, dedupe: float,
                  negative_fraction: float = 0.0, fill: bool = False) -> tuple[list[int], int, int]:
    """(chosen pool ids, near-duplicates skipped, number of positives): the positive items in
    decreasing score and, for ``negative_fraction`` of the m slots, the most negative items
    ("anchors"), each de-duplicated against everything taken before it. With ``fill``, slots
    the positives leave empty take the next items by score (Delta <= 0, closest to 0 first)."""
    values = np.asarray(values)
    order = np.argsort(-values, kind="stable")
    positive = [candidates[i] for i in order if values[i] > 0]
    negative = [candidates[i] for i in order[::-1] if values[i] < 0]
    n_anchor = int(round(negative_fraction * m))
    kept: list[np.ndarray] = []
    top, skipped_top = take_distinct(positive, embeddings, m - n_anchor, dedupe, kept)
    anchors, skipped_anchors = take_distinct(negative, embeddings, n_anchor, dedupe, kept)
    filled, skipped_fill = [], 0
    if fill and len(top) + len(anchors) < m:
        taken = set(anchors)
        rest = [candidates[i] for i in order if values[i] <= 0 and candidates[i] not in taken]
        filled, skipped_fill = take_distinct(rest, embeddings, m - len(top) - len(anchors), dedupe, kept)
    return top + filled + anchors, skipped_top + skipped_anchors + skipped_fill, len(positive)


def _reason(result: ScoreResult, i: int, sim: float) -> str:
    side = "> 0" if result.values[i] > 0 else "<= 0 (fill or anchor)"
    return f"score {result.values[i]:.4g} {side}, Delta {result.delta[i]:.4g} (CLIP {sim:.3f})"


def describe(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    values = np.asarray(values, dtype=np.float64)
    q = np.quantile(values, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {"mean": float(values.mean()), "std": float(values.std()), "positive_fraction": float((values > 0).mean()),
            **{f"q{int(k * 100):02d}": float(v) for k, v in zip([0, .1, .25, .5, .75, .9, 1], q)}}
