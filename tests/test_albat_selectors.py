"""One shared suite run against every selector, plus ALBAT's own guarantees, on a tiny pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bat_app.albat import METHODS, SelectionContext, SelectionParams, select
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


@pytest.mark.parametrize("method", METHODS)
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


@pytest.mark.parametrize("method", METHODS)
def test_every_selector_is_deterministic_for_a_seed(method, comps, images, pool, tiny_embedder, tmp_path):
    a = select(method, ctx(comps, images, pool, tiny_embedder, tmp_path))
    b = select(method, ctx(comps, images, pool, tiny_embedder, tmp_path))
    assert [(r.pool_id, r.path, r.score) for r in a.rows] == [(r.pool_id, r.path, r.score) for r in b.rows]


def test_random_differs_with_the_seed(comps, images, pool, tiny_embedder, tmp_path):
    a = select("random", ctx(comps, images, pool, tiny_embedder, tmp_path))
    b = select("random", ctx(comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=6, seed=1)))
    assert [r.pool_id for r in a.rows] != [r.pool_id for r in b.rows]


def test_clip_ranks_by_similarity(comps, images, pool, tiny_embedder, tmp_path):
    sel = select("clip", ctx(comps, images, pool, tiny_embedder, tmp_path))
    scores = [r.score for r in sel.rows]
    assert scores == sorted(scores, reverse=True)
    query = tiny_embedder.encode_images([u.image for u in images])
    best = (pool.embeddings() @ query.T).max(axis=1)
    np.testing.assert_allclose(scores, np.sort(best)[::-1][:len(scores)], rtol=1e-5)


def test_pool_methods_need_a_pool(comps, images, tiny_embedder, tmp_path):
    for method in ("random", "clip", "albat"):
        with pytest.raises(InputError, match="--pool"):
            select(method, ctx(comps, images, None, tiny_embedder, tmp_path))


def test_albat_never_selects_non_positive_delta(comps, images, pool, tiny_embedder, tmp_path, monkeypatch):
    from bat_app.albat import albat

    def fake_scores(components, examples, *a, **k):
        return np.array([(-1) ** i * (i + 1) * 0.01 for i in range(len(examples))])  # +, -, +, -, ...

    monkeypatch.setattr(albat, "loss_reduction", fake_scores)
    sel = select("albat", ctx(comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=50, k=20, dedupe=1.0)))
    assert sel.rows and all(r.score > 0 for r in sel.rows)
    assert len(sel) == 10  # exactly the positive half of 20 candidates
    assert [r.score for r in sel.rows] == sorted((r.score for r in sel.rows), reverse=True)
    assert sel.stats["positive"] == 10 and sel.stats["candidates"] == 20


def test_albat_records_parameters_timings_and_delta(comps, images, pool, tiny_embedder, tmp_path):
    sel = select("albat", ctx(comps, images, pool, tiny_embedder, tmp_path))
    assert set(sel.timings) == {"retrieve", "surrogate", "score"}
    assert sel.stats["unet_forward_passes"] == 2 * PARAMS.draws * sel.stats["candidates"]
    assert {"mean", "q50", "positive_fraction"} <= set(sel.stats["delta"])
    assert sel.stats["surrogate_steps"] == PARAMS.surrogate_steps


def test_near_duplicates_are_dropped(comps, images, tiny_embedder, tmp_path):
    """A pool of copies of one image: ALBAT keeps a single one of them."""
    from PIL import Image

    from bat_app.pool import build_pool

    src = tmp_path / "dups"
    src.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 40), (200, 30, 30)).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text("a red square")
    pool = build_pool(src, tmp_path / "dup-pool", tiny_embedder)
    from bat_app.albat import albat

    original = albat.loss_reduction
    albat.loss_reduction = lambda components, examples, *a, **k: np.linspace(1, 0.5, len(examples))
    try:
        sel = select("albat", ctx(comps, images, pool, tiny_embedder, tmp_path, SelectionParams(m=6, k=6)))
    finally:
        albat.loss_reduction = original
    assert len(sel) == 1 and sel.stats["near_duplicates"] == 5


def test_select_then_train_end_to_end(comps, images, tiny_pool_dir, tiny_embedder, tmp_path):
    pool = Pool.open(tiny_pool_dir, tiny_embedder)
    sel = run_selection("albat", comps, images, CONFIG, pool=pool, embedder=tiny_embedder, params=PARAMS,
                        out_dir=tmp_path / "sel", cache_root=tmp_path / "cache")
    assert (tmp_path / "sel" / "contact_sheet.png").is_file() and (tmp_path / "sel" / "selection.jsonl").is_file()
    result = train_with_selection(comps, images, CONFIG, sel, tmp_path / "lora", cache_root=tmp_path / "cache")
    log = json.loads(result.files["log"].read_text())
    assert log["augmentation_examples"] == len(sel) > 0
    assert result.files["diffusers"].is_file()
