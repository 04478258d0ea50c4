"""ALBAT's successive halving (racing.py): the survivors' scores are exactly the full scores,
half the passes, the top stays the top, anchors survive at the bottom, and the score on the
tiny model agrees with full scoring wherever a candidate got every draw."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bat_app.albat import SelectionContext, SelectionParams, get_score
from bat_app.albat.racing import keep_count, planned_passes, race, race_rounds
from bat_app.albat.score import aggregate
from bat_app.albat.surrogate import train_surrogate
from bat_app.train import TrainConfig
from bat_app.train.data import Example

CONFIG = TrainConfig(token="sks", class_noun="disc", steps=40, lr=5e-3, rank=4, checkpoint_every=0)


def synthetic(k: int = 400, draws: int = 16, seed: int = 0) -> np.ndarray:
    """Per-draw entries: an item effect plus per-draw noise, like a real loss matrix."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, k)[None, :] + rng.normal(0, 1.5, (draws, k))


def run_race(full: np.ndarray, m: int, negative_fraction: float = 0.0):
    calls = []

    def evaluate(rows, idx):
        calls.append(len(rows) * len(idx))
        return full[np.ix_(rows, idx)]

    matrix = race(evaluate, full.shape[1], full.shape[0], m, lambda x: aggregate(x, False), negative_fraction)
    return matrix, sum(calls)


def test_rounds_cover_every_draw_once():
    for draws in (8, 12, 16, 32):
        rows = [r for rnd in race_rounds(draws) for r in rnd]
        assert sorted(rows) == list(range(draws)) and len(race_rounds(draws)) == 3


def test_survivors_get_the_full_score_for_half_the_passes():
    full = synthetic()
    matrix, passes = run_race(full, m=50)
    assert passes == planned_passes(400, 16, 50) == 3200 == full.size // 2
    complete = ~np.isnan(matrix).any(axis=0)
    assert complete.sum() == keep_count(keep_count(400, 50), 50) == 100
    np.testing.assert_array_equal(aggregate(matrix, False)[complete], full.mean(axis=0)[complete])
    # the race keeps what full scoring ranks at the top: most of its top 50 got every draw
    top_full = set(np.argsort(-full.mean(axis=0))[:50])
    assert len(top_full & set(np.flatnonzero(complete))) >= 40


def test_anchor_share_survives_at_the_bottom():
    full = synthetic(seed=1)
    matrix, _ = run_race(full, m=50, negative_fraction=0.5)
    complete = np.flatnonzero(~np.isnan(matrix).any(axis=0))
    values = full.mean(axis=0)
    bottom, top = set(np.argsort(values)[:25]), set(np.argsort(-values)[:25])
    assert len(bottom & set(complete)) >= 15 and len(top & set(complete)) >= 15


def test_few_candidates_are_all_scored_fully():
    full = synthetic(k=60)
    matrix, passes = run_race(full, m=50)
    assert not np.isnan(matrix).any() and passes == full.size


def test_raced_score_equals_the_full_score_where_complete(comps, images, tmp_path):
    """On the tiny model: the same draws, so a candidate that got every draw scores as with full
    scoring (up to float rounding, which differs with the batch's make-up); the reported passes
    are what was spent."""
    surrogate = train_surrogate(comps, images, CONFIG, 20, tmp_path)
    colours = [(i * 23 % 256, i * 71 % 256, i * 131 % 256) for i in range(20)]
    examples = [Example(u.image, CONFIG.prompt) for u in images] + \
        [Example(Image.new("RGB", (32, 32), c), "a square") for c in colours]

    def score(race: bool):  # each its own cache root: no reference losses shared between the two
        params = SelectionParams(draws=8, m=3, race=race, score_seed=3)
        ctx = SelectionContext(comps, images, CONFIG, None, params=params, cache_root=tmp_path / f"race-{race}")
        return get_score("loss_reduction")(ctx, examples, surrogate)

    full, raced = score(False), score(True)
    n = len(examples)
    assert raced.forward_passes == 2 * planned_passes(n, 8, 3) < full.forward_passes == 2 * 8 * n
    got_all = np.isclose(raced.values, full.values, rtol=1e-4, atol=1e-9)
    assert got_all.sum() >= raced.details["fully_scored"] == keep_count(keep_count(n, 3), 3) > 0, \
        (raced.values, full.values)
