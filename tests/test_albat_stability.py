"""ALBAT's selection does not hinge on the score seed: the measures (rank correlation, Jaccard,
stratified sub-picks) by hand, and two score seeds selecting overlapping sets on the shapes pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bat_app.albat.stability import jaccard, rank_correlation, stability_curve, substrata_pick, top_m
from bat_app.paths import assets_dir

HAVE_SHAPES = (assets_dir() / "shapes" / "backbone" / "model_index.json").is_file()


def test_measures_by_hand():
    assert rank_correlation(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert rank_correlation(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and jaccard([], []) == 1.0
    assert top_m(np.array([0.1, 0.9, 0.5, 0.7]), 2) == {1, 3}


def test_substrata_pick_takes_one_fine_stratum_inside_each_coarse_one():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = substrata_pick(16, 4, rng)
        assert (rows // 4).tolist() == [0, 1, 2, 3]
    seen = {int(substrata_pick(16, 4, rng)[0]) for _ in range(200)}
    assert seen == {0, 1, 2, 3}  # every fine stratum is reachable: t stays uniform in the coarse one
    with pytest.raises(ValueError, match="divide"):
        substrata_pick(16, 3, rng)


def test_stability_curve_rises_with_the_draws_on_synthetic_scores():
    """Items with a true score plus draw noise: more draws, more agreement between seeds."""
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, 200)
    a = truth + rng.normal(0, 4, (16, 200))
    b = truth + rng.normal(0, 4, (16, 200))
    rows = stability_curve(a, b, [1, 4, 16], m=20, standardise=False)
    corr = [r["rank_corr"] for r in rows]
    assert corr[0] < corr[1] < corr[2] and rows[2]["picks"] == 1


@pytest.mark.slow  # ~2.3 CPU-minutes: 2 x 16 draws x 100 candidates x 2 UNet passes, plus the surrogate
@pytest.mark.skipif(not HAVE_SHAPES, reason="shapes backbone not built (python -m bat_app shapes build)")
def test_two_score_seeds_select_overlapping_sets_on_the_shapes_pool(tmp_path, shapes_pool_dir):
    """The issue's bar: Jaccard >= 0.45 between the top-m sets of two score seeds, with the
    default R and aggregation, the same surrogate (same training seed) and candidates.
    Measured on the shipped backbone (unet 937f9ccc505f): 10 and 10 items, Jaccard 0.538."""
    from bat_app.albat import SelectionContext, SelectionParams, select
    from bat_app.pool import embedder_for_pool
    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.pool import Pool
    from bat_app.train import TrainConfig

    pool = Pool.open(shapes_pool_dir)
    embedder = embedder_for_pool(pool)
    comps = load_components("shapes")
    folder = assets_dir() / "subjects" / "dot_star"
    meta = json.loads((folder / "subject.json").read_text())
    images = load_user_images([folder / p["file"] for p in meta["photos"][:3]]).images
    config = TrainConfig(token="sks", class_noun="star", steps=200, lr=1e-3, rank=8, checkpoint_every=0)
    selections = []
    for score_seed in (0, 1):
        params = SelectionParams(m=10, k=100, surrogate_steps=50, score_seed=score_seed)
        ctx = SelectionContext(comps, images, config, pool, embedder, params, cache_root=tmp_path / "cache")
        selections.append({r.pool_id for r in select("albat", ctx).rows})
    overlap = jaccard(*selections)
    print(f"score seeds 0 vs 1: {len(selections[0])} and {len(selections[1])} items, Jaccard {overlap:.3f}")
    assert all(selections) and overlap >= 0.45, (selections, overlap)
