"""Content flags: source columns (punsafe/pwatermark) or a zero-shot CLIP check score items;
flagged items never come out of search, random_ids or allowed_ids while their filter is on.

The zero-shot check runs on ``ColourEmbedder``, whose vectors are set by hand: red images
embed next to the "unsafe" prompts, blue ones next to the "watermark" prompts, green ones
next to the neutral prompts, so which items get flagged is known exactly.
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from bat_app.pool import Pool, PoolError, SafetyConfig, build_pool
from bat_app.pool.index import build_index
from bat_app.pool.safety import _prompts
from test_pool import add, png_bytes, tiny_embedder
from test_pool_cli import run

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


class ColourEmbedder:
    """dim 3: an image embeds as its mean colour; texts by what they name."""

    model_id, dim = "colour-test", 3

    def encode_images(self, images):
        v = np.asarray([np.asarray(im.convert("RGB"), np.float32).mean(axis=(0, 1)) for im in images])
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def encode_texts(self, texts):
        p = _prompts()
        axis = {t: 0 for t in p["unsafe"]["flagged"]} | {t: 2 for t in p["watermark"]["flagged"]}
        rows = []
        for t in texts:
            named = [i for i, c in enumerate(COLOURS) if c in t]
            rows.append(np.eye(3)[axis.get(t, named[0] if named else 1)])
        return np.asarray(rows, np.float32)


def colour_folder(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (24, 24), COLOURS[name]).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(f"a {name} square")
    return root


NAMES = ["red", "green", "blue", "green", "red", "green"]  # ids 0,4 unsafe; 2 watermark


@pytest.fixture
def clip_pool(tmp_path):
    return build_pool(colour_folder(tmp_path / "src", NAMES), tmp_path / "pool", ColourEmbedder(),
                      safety=SafetyConfig(clip="on"))


def test_zero_shot_check_flags_and_filters(clip_pool):
    pool = clip_pool
    checks = pool.manifest["safety"]["checks"]
    assert checks["unsafe"] == {"checked": True, "threshold": 0.5, "column": None, "from_column": 0,
                                "from_clip": 6, "unscored": 0, "flagged": 2}
    assert checks["watermark"]["flagged"] == 1
    assert [pool.flags_of(i) for i in range(6)] == [["unsafe"], [], ["watermark"], [], ["unsafe"], []]
    assert pool.item(0).flags == ["unsafe"] and pool.is_allowed(1) and not pool.is_allowed(2)
    assert pool.allowed_ids().tolist() == [1, 3, 5]
    red = ColourEmbedder().encode_texts(["red"])
    _, ids = pool.search(red, k=6)
    assert set(ids[0][ids[0] >= 0].tolist()) == {1, 3, 5}  # the red ones are never returned
    _, ids = pool.search(red, k=2, include_flagged=True)
    assert set(ids[0].tolist()) == {0, 4}
    assert sorted(pool.random_ids(3, seed=0)) == [1, 3, 5]
    with pytest.raises(PoolError, match="3 of the pool's 6 pass the content filters"):
        pool.random_ids(4, seed=0)
    info = pool.describe()
    assert "unsafe: 2 flagged > 0.5 (6 by CLIP zero-shot; filter on)" in info
    assert "clip check: on (forced)" in info


def test_each_filter_turns_off(clip_pool, monkeypatch):
    pool = clip_pool
    pool.set_filters(("watermark",))
    assert pool.allowed_ids().tolist() == [0, 1, 3, 4, 5]
    assert "unsafe: 2 flagged > 0.5 (6 by CLIP zero-shot; filter OFF)" in pool.describe()
    pool.set_filters("none")
    assert len(pool.allowed_ids()) == 6 and pool.safety_summary()["hidden_now"] == 0
    monkeypatch.setenv("BAT_POOL_FILTERS", "unsafe")
    reopened = Pool.open(pool.folder)
    assert reopened.filters == ("unsafe",) and reopened.allowed_ids().tolist() == [1, 2, 3, 5]
    assert reopened.safety_summary()["filters_on"] == ["unsafe"]
    with pytest.raises(PoolError, match=r"Unknown pool filter\(s\) \['nsfw'\].*unsafe, watermark"):
        Pool.open(pool.folder, filters="nsfw")


def test_clip_check_is_skipped_for_models_not_trained_on_the_web(tmp_path):
    pool = build_pool(colour_folder(tmp_path / "src", NAMES), tmp_path / "pool", ColourEmbedder())
    safety = pool.manifest["safety"]
    assert safety["clip"].startswith("not run: colour-test is not a known web-trained CLIP")
    assert safety["checks"]["unsafe"]["unscored"] == 6 and safety["checks"]["unsafe"]["flagged"] == 0
    assert len(pool.allowed_ids()) == 6


def test_build_settings_turn_checks_off_and_set_thresholds(tmp_path):
    cfg = SafetyConfig(clip="on", watermark=False, unsafe_threshold=0.999999)
    pool = build_pool(colour_folder(tmp_path / "src", NAMES), tmp_path / "pool", ColourEmbedder(), safety=cfg)
    checks = pool.manifest["safety"]["checks"]
    assert checks["watermark"] == {"checked": False, "note": "off (--no-watermark-check)", "flagged": 0}
    assert checks["unsafe"]["threshold"] == 0.999999
    assert pool.manifest["safety"]["config"]["watermark"] is False
    assert "watermark: not checked (off (--no-watermark-check))" in pool.describe()
    with pytest.raises(PoolError, match="unsafe_threshold must be a number in \\[0, 1\\], got 2"):
        SafetyConfig(unsafe_threshold=2)
    with pytest.raises(PoolError, match="must be one of auto, on, off, got 'always'"):
        SafetyConfig(clip="always")


def test_parquet_columns_are_used_before_clip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.table({
        "jpg": [png_bytes(i) for i in range(4)], "caption": [f"c{i}" for i in range(4)],
        "punsafe": pa.array([0.9, 0.1, None, 0.2], pa.float32()),
        "pwatermark": [0.0, 0.7, 0.1, 0.3]}), src / "part-0.parquet")
    pool = build_pool(src, tmp_path / "pool", tiny_embedder(0), safety=SafetyConfig(clip="off"))
    checks = pool.manifest["safety"]["checks"]
    assert checks["unsafe"] == {"checked": True, "threshold": 0.5, "column": "punsafe",
                                "from_column": 3, "from_clip": 0, "unscored": 1, "flagged": 1}
    assert checks["watermark"]["column"] == "pwatermark" and checks["watermark"]["flagged"] == 1
    assert pool.allowed_ids().tolist() == [2, 3]
    scores = np.load(pool.folder / "safety.npy")
    assert np.isnan(scores[2, 0]) and scores[0, 0] == pytest.approx(0.9)


def test_coyo_column_names_are_read_too(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "src").mkdir()
    pq.write_table(pa.table({"jpg": [png_bytes(i) for i in range(3)], "caption": ["a", "b", "c"],
                             "nsfw_score_opennsfw2": [0.1, 0.8, 0.2], "watermark_score": [0.9, 0.0, 0.1]}),
                   tmp_path / "src" / "coyo.parquet")
    pool = build_pool(tmp_path / "src", tmp_path / "pool", tiny_embedder(0))
    checks = pool.manifest["safety"]["checks"]
    assert checks["unsafe"]["column"] == "nsfw_score_opennsfw2" and checks["watermark"]["column"] == "watermark_score"
    assert pool.flags_of(1) == ["unsafe"] and pool.flags_of(0) == ["watermark"] and pool.allowed_ids().tolist() == [2]


def test_webdataset_json_scores(tmp_path):
    """img2dataset --save_additional_columns '["punsafe","pwatermark"]' puts them in KEY.json."""
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "00000.tar", "w") as tar:
        for i, p in enumerate([0.95, 0.01, 0.6]):
            add(tar, f"{i:09d}.png", png_bytes(i))
            add(tar, f"{i:09d}.txt", f"caption {i}".encode())
            add(tar, f"{i:09d}.json", json.dumps({"url": f"u{i}", "punsafe": p}).encode())
    pool = build_pool(tmp_path / "shards", tmp_path / "pool", tiny_embedder(0))
    assert pool.manifest["safety"]["checks"]["unsafe"]["from_column"] == 3
    assert pool.allowed_ids().tolist() == [1]


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_every_index_leaves_blocked_ids_out(tmp_path, kind):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((8, 16))
    x = (centres[rng.integers(0, 8, 800)] + 0.3 * rng.standard_normal((800, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    blocked = np.zeros(800, bool)
    blocked[rng.choice(800, 120, replace=False)] = True
    index = build_index(kind, x, tmp_path, **({"tune_k": 50} if kind != "flat" else {}))
    scores, ids = index.search(x[:5], 50, blocked=blocked)
    assert (ids >= 0).all() and not blocked[ids].any()
    # exact answer among the allowed ids, for comparison
    allowed = np.flatnonzero(~blocked)
    truth = allowed[np.argsort(-(x[:5] @ x[allowed].T), axis=1)[:, :50]]
    hit = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(ids.tolist(), truth.tolist())])
    assert hit == 1.0 if kind == "flat" else hit >= 0.9
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_cli_build_settings_and_info(tmp_path, capsys):
    src = colour_folder(tmp_path / "src", NAMES)
    from test_pool import save_open_clip_dir

    clip = save_open_clip_dir(tmp_path / "clip")
    assert run("pool", "build", src, "--out", tmp_path / "pool", "--clip-model", clip, "--clip-safety",
               "off", "--no-watermark-check", "--unsafe-threshold", "0.3") == 0
    m = Pool.open(tmp_path / "pool").manifest["safety"]
    assert m["config"] == {"unsafe": True, "watermark": False, "clip": "off", "unsafe_threshold": 0.3,
                           "watermark_threshold": 0.5}
    capsys.readouterr()
    run("pool", "info", tmp_path / "pool")
    assert "safety:   unsafe: 0 flagged > 0.3 (6 unscored; filter on)" in capsys.readouterr().out


def test_pools_built_before_content_checks_open_unfiltered(clip_pool):
    manifest = json.loads((clip_pool.folder / "manifest.json").read_text())
    del manifest["safety"]
    (clip_pool.folder / "manifest.json").write_text(json.dumps(manifest))
    old = Pool.open(clip_pool.folder)
    assert len(old.allowed_ids()) == 6 and old.flags_of(0) == []
    assert "not checked (pool built before content checks)" in old.describe()
