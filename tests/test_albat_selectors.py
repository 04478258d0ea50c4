"""One shared suite run against every selector, plus ALBAT's own guarantees (with the score
passed in as a parameter), on a tiny pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bat_app.albat import SELECTORS, AlbatSelector, ScoreResult, SelectionContext, SelectionParams, select
from bat_app.albat.run import run_selection, train_with_selection
from bat_app.albat.selection import Selection
from bat_app.errors import InputError
from bat_app.pool import Pool
from bat_app.train import TrainConfig

CONFIG = TrainConfig(token="sks", class_noun="disc", steps=8, lr=5e-3, rank=4, checkpoint_every=0)
PARAMS = SelectionParams(m=6, k=20, draws=2, surrogate_steps=4, batch_size=8, seed=0)


@pytest.fixture
def pool(tiny_pool_dir, tiny_embedder):
    return Pool.open(tiny_pool_dir, tiny_embedder)


def ctx(comps, images, pool, embedder, tmp_path, params=PARAMS):
    return SelectionContext(comps, images, CONFIG, pool, embedder, params, cache_root=tmp_path / "cache")


@pytest.mark.parametrize("method", SELECTORS)
def test_every_selector_honours_the_interface(method, comps, images, pool, tiny_embedder, tmp_path):
    sel = select(method, ctx(comps, images, pool, tiny_embedder, tmp_path))
    assert sel.method == method and len(sel) <= PARAMS.m
    assert sel.params == PARAMS.to_dict()
    if method == "none":
        assert len(sel) == 0
    else:
        assert len(sel) > 0
    ids = [r.pool_id for r in sel.rows if r.pool_id is not None]
    assert len(ids) == len(set(ids)) and all(0 <= i < len(pool) for i in ids)
    for row in sel.rows:
        assert row.caption and row.reason
        if row.pool_id is not None:
            assert row.caption == pool.item(row.pool_id).caption
    examples = sel.examples(pool)
    assert len(examples) == len(sel) and all(e.image.mode == "RGB" for e in examples)
    # saved and read back unchanged
    sel.save(tmp_path / "saved")
    again = Selection.load(tmp_path / "saved")
    assert again.rows == sel.rows and again.method == method
    assert all(json.loads(line) for line in (tmp_path / "saved" / "selection.jsonl").read_text().splitlines())


@pytest.mark.parametrize("method", SELECTORS)
def test_every_selector_is_deterministic_for_a_seed(method, comps, images, pool, tiny_embedder, tmp_path):
    a = select(method, ctx(comps, images, pool, tiny_embedder, tmp_path))
    b = select(method, ctx(comps, images, pool, tiny_embedder, tmp_path))
    assert [(r.pool_id, r.path, r.score) for r in a.rows] == [(r.pool_id, r.path, r.score) for r in b.rows]


def test_random_differs_with_the_seed(comps, images, pool, tiny_embedder, tmp_path):
    a = select("random", ctx(comps, images, pool, tiny_embedder, tmp_path))
    b = select("random", ctx(comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=6, seed=1)))
    assert [r.pool_id for r in a.rows] != [r.pool_id for r in b.rows]


def test_clip_ranks_by_similarity(comps, images, pool, tiny_embedder, tmp_path):
    sel = select("clip", ctx(comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=6, dedupe=1.0)))
    scores = [r.score for r in sel.rows]
    assert scores == sorted(scores, reverse=True)
    query = tiny_embedder.encode_images([u.image for u in images])
    best = (pool.embeddings() @ query.T).max(axis=1)
    np.testing.assert_allclose(scores, np.sort(best)[::-1][:len(scores)], rtol=1e-5)


def test_pool_methods_need_a_pool(comps, images, tiny_embedder, tmp_path):
    for method in ("random", "clip", "albat", "shortlist"):
        with pytest.raises(InputError, match="--pool"):
            select(method, ctx(comps, images, None, tiny_embedder, tmp_path))


class FakeScore:
    """A score passed to AlbatSelector: fixed values, counts its calls."""

    name = "fake"

    def __init__(self, values):
        self.values, self.calls = values, 0

    def __call__(self, ctx, examples, surrogate):
        self.calls += 1
        values = np.asarray(self.values(len(examples)), dtype=float)
        return ScoreResult(values, values * 0.001, 7, {"timesteps": [1, 2]})


ALTERNATING = lambda n: [(-1) ** i * (i + 1) * 0.01 for i in range(n)]  # +, -, +, -, ... growing


def test_albat_ranks_by_the_score_it_is_given(comps, images, pool, tiny_embedder, tmp_path):
    score = FakeScore(ALTERNATING)
    sel = AlbatSelector(score=score).select(ctx(comps, images, pool, tiny_embedder, tmp_path,
                                                SelectionParams(m=50, k=20, dedupe=1.0)))
    assert score.calls == 1 and sel.stats["score"] == "fake" and sel.stats["unet_forward_passes"] == 7
    assert sel.rows and all(r.score > 0 for r in sel.rows)
    assert len(sel) == 10  # exactly the positive half of 20 candidates
    assert [r.score for r in sel.rows] == sorted((r.score for r in sel.rows), reverse=True)
    assert sel.stats["positive"] == 10 and sel.stats["candidates"] == 20 and sel.stats["anchors"] == 0


def test_albat_uses_the_score_named_in_its_params(comps, images, pool, tiny_embedder, tmp_path, monkeypatch):
    from bat_app.albat import score as score_module

    fake = FakeScore(ALTERNATING)
    monkeypatch.setitem(score_module.SCORES, "prompt_specific", fake)
    select("albat", ctx(comps, images, pool, tiny_embedder, tmp_path,
                        SelectionParams(m=4, k=20, score="prompt_specific", surrogate_steps=2)))
    assert fake.calls == 1
    with pytest.raises(InputError, match="Unknown ALBAT score 'nope'"):
        SelectionParams(score="nope")


def test_negative_fraction_takes_anchors_from_the_bottom(comps, images, pool, tiny_embedder, tmp_path):
    run = lambda frac: AlbatSelector(score=FakeScore(ALTERNATING)).select(
        ctx(comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=6, k=20, dedupe=1.0,
                                                                          negative_fraction=frac)))
    both = run(0.5)
    scores = [r.score for r in both.rows]
    assert scores[:3] == [0.19, 0.17, 0.15] and scores[3:] == [-0.2, -0.18, -0.16]
    assert both.stats["anchors"] == 3 and "anchor" in both.rows[-1].reason
    bottom = run(1.0)
    assert [r.score for r in bottom.rows] == [-0.2, -0.18, -0.16, -0.14, -0.12, -0.1]
    with pytest.raises(InputError, match="negative_fraction"):
        SelectionParams(negative_fraction=1.5)


def test_albat_records_parameters_timings_and_delta(comps, images, pool, tiny_embedder, tmp_path):
    sel = select("albat", ctx(comps, images, pool, tiny_embedder, tmp_path))
    assert set(sel.timings) == {"retrieve", "reference", "surrogate", "score"}
    assert sel.stats["unet_forward_passes"] == 2 * PARAMS.draws * sel.stats["candidates"]
    assert {"mean", "q50", "positive_fraction"} <= set(sel.stats["delta"])
    assert sel.stats["surrogate_steps"] == PARAMS.surrogate_steps
    assert sel.stats["score"] == "loss_reduction" and len(sel.stats["timesteps"]) == PARAMS.draws
    assert sel.params["score_seed"] == 0


def test_albat_selection_follows_the_score_seed_not_the_training_seed(comps, images, pool, tiny_embedder,
                                                                      tmp_path):
    run = lambda **kw: [r.score for r in select("albat", ctx(comps, images, pool, tiny_embedder, tmp_path,
                                                             SelectionParams(**{**PARAMS.to_dict(), **kw}))).rows]
    assert run(seed=0) == run(seed=3)
    assert run(score_seed=0) != run(score_seed=1)


@pytest.fixture
def dup_pool(tiny_embedder, tmp_path):
    """Six copies of one image ("copy" captions), then six distinct random-noise images."""
    from PIL import Image

    from bat_app.pool import build_pool

    src = tmp_path / "dups"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = np.full((40, 40, 3), (200, 30, 30), np.uint8) if i < 6 else rng.integers(0, 255, (40, 40, 3), np.uint8)
        Image.fromarray(pixels).save(src / f"{i:02d}.png")
        (src / f"{i:02d}.txt").write_text("copy" if i < 6 else f"noise {i}")
    pool = build_pool(src, tmp_path / "dup-pool", tiny_embedder)
    emb = pool.embeddings()
    distinct = [i for i in range(len(pool)) if pool.item(i).caption != "copy"]
    sims = emb[distinct] @ emb[distinct].T
    # the tiny random CLIP puts everything close together: the tests use a threshold above the
    # distinct items' cosines and below the copies' (1.0)
    assert sims[~np.eye(6, dtype=bool)].max() < DUP_THRESHOLD
    return pool


DUP_THRESHOLD = 0.999


def test_near_duplicates_are_dropped(comps, images, dup_pool, tiny_embedder, tmp_path):
    """A pool whose first six items are copies of one image: ALBAT keeps a single one of them."""
    score = FakeScore(lambda n: np.linspace(1, 0.5, n))
    everything = SelectionParams(m=12, k=12, dedupe=DUP_THRESHOLD)
    sel = AlbatSelector(score=score).select(ctx(comps, images, dup_pool, tiny_embedder, tmp_path, everything))
    captions = [r.caption for r in sel.rows]
    assert captions.count("copy") == 1 and len(captions) == 7 and sel.stats["near_duplicates"] == 5


@pytest.mark.parametrize("method", ["clip", "shortlist"])
def test_clip_and_shortlist_are_deduplicated_like_albat(method, comps, images, dup_pool, tiny_embedder, tmp_path):
    sel = select(method, ctx(comps, images, dup_pool, tiny_embedder, tmp_path,
                             SelectionParams(m=12, k=12, dedupe=DUP_THRESHOLD)))
    captions = [r.caption for r in sel.rows]
    assert captions.count("copy") == 1 and len(captions) == 7 and sel.stats["near_duplicates"] == 5
    undeduplicated = select(method, ctx(comps, images, dup_pool, tiny_embedder, tmp_path,
                                        SelectionParams(m=12, k=12, dedupe=1.0)))
    assert len(undeduplicated) == 12


def test_shortlist_draws_at_random_from_the_clip_shortlist(comps, images, pool, tiny_embedder, tmp_path):
    from bat_app.albat.retrieval import nearest_items, user_embeddings

    shortlist, _ = nearest_items(pool, user_embeddings(tiny_embedder, images), 10)
    run = lambda seed: [r.pool_id for r in select("shortlist", ctx(
        comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=4, k=10, dedupe=1.0, seed=seed))).rows]
    a, b = run(0), run(1)
    assert set(a) <= set(shortlist) and set(b) <= set(shortlist) and len(a) == 4
    assert a != b and a == run(0)


def test_select_then_train_end_to_end(comps, images, tiny_pool_dir, tiny_embedder, tmp_path):
    pool = Pool.open(tiny_pool_dir, tiny_embedder)
    sel = run_selection("albat", comps, images, CONFIG, pool=pool, embedder=tiny_embedder, params=PARAMS,
                        out_dir=tmp_path / "sel", cache_root=tmp_path / "cache")
    assert (tmp_path / "sel" / "contact_sheet.png").is_file() and (tmp_path / "sel" / "selection.jsonl").is_file()
    result = train_with_selection(comps, images, CONFIG, sel, tmp_path / "lora", cache_root=tmp_path / "cache")
    log = json.loads(result.files["log"].read_text())
    assert log["augmentation_examples"] == len(sel) > 0
    assert result.files["diffusers"].is_file()


def test_score_seed_from_the_cli_and_the_compare_config():
    from bat_app.cli import _selection_params, build_parser
    from bat_app.compare import CompareConfig

    args = build_parser().parse_args(["select", "--images", "photos", "--pool", "p", "--out", "o", "--model", "shapes",
                                      "--score-seed", "5", "--seed", "2"])
    params = _selection_params(args)
    assert params.score_seed == 5 and params.seed == 2 and params.draws == SelectionParams().draws
    plain = build_parser().parse_args(["select", "--images", "photos", "--pool", "p", "--out", "o", "--model", "shapes"])
    assert _selection_params(plain).score_seed == 0
    config = CompareConfig(class_noun="star", model="shapes", score_seed=3, train={"seed": 1})
    assert config.selection_params().score_seed == 3 and config.selection_params().seed == 1
    assert CompareConfig.from_dict({**config.to_dict()}).selection_params().score_seed == 3
    with pytest.raises(InputError, match="score_seed"):
        CompareConfig(class_noun="star", model="shapes", score_seed=3, selection={"score_seed": 4})
    with pytest.raises(InputError, match="score_seed"):
        CompareConfig(class_noun="star", model="shapes", score_seed=-1)


def test_each_selector_says_whether_it_needs_the_pool():
    from bat_app.albat import METHODS, SELECTORS, needs_pool
    from bat_app.compare.config import CompareConfig

    assert {m for m in SELECTORS if needs_pool(m)} == {"random", "clip", "albat", "shortlist"}
    # (prior preservation off: on, the default shapes recipe refuses the `prior` method)
    assert CompareConfig(methods=list(METHODS), train={"prior": False}).pool_methods() == ["random", "clip", "albat"]
    with pytest.raises(InputError, match="Unknown selection method"):
        needs_pool("nearest")


def test_fill_takes_the_next_items_by_score_when_few_are_positive():
    from bat_app.albat.albat import rank_and_pick

    candidates = [10, 11, 12, 13, 14, 15]
    values = np.array([0.5, -0.1, 0.2, -0.9, -0.05, -0.4])
    embeddings = np.eye(16, dtype=np.float32)  # all distinct
    chosen, _, positive = rank_and_pick(candidates, values, embeddings, m=4, dedupe=0.95)
    assert chosen == [10, 12] and positive == 2
    chosen, _, _ = rank_and_pick(candidates, values, embeddings, m=4, dedupe=0.95, fill=True)
    assert chosen == [10, 12, 14, 11]  # the positives, then the closest to 0
    chosen, _, _ = rank_and_pick(candidates, values, embeddings, m=4, dedupe=0.95, negative_fraction=0.25, fill=True)
    assert chosen == [10, 12, 14, 13]  # one anchor (the most negative) keeps its slot
    with pytest.raises(InputError, match="fill"):
        SelectionParams(fill="yes")
