"""``pool search``: text and image queries with the pool's own CLIP, contact sheets, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bat_app.pool import Pool, PoolError, SafetyConfig, build_pool, contact_sheet, search
from bat_app.pool.search import query_vector
from test_pool import save_open_clip_dir
from test_pool_cli import run
from test_pool_safety import NAMES, ColourEmbedder, colour_folder


@pytest.fixture
def pool(tmp_path):
    return build_pool(colour_folder(tmp_path / "src", NAMES), tmp_path / "pool", ColourEmbedder())


def test_text_and_image_queries_rank_by_cosine(pool, tmp_path):
    emb = ColourEmbedder()
    hits = search(pool, emb, "a blue thing", k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].id == 2
    assert hits[0].caption == "a blue square" and hits[0].score == pytest.approx(230 / np.linalg.norm([20, 20, 230]), abs=1e-5)
    assert hits[0].score >= hits[1].score >= hits[2].score
    Image.new("RGB", (8, 8), (250, 5, 5)).save(tmp_path / "q.png")
    by_image = search(pool, emb, str(tmp_path / "q.png"), k=2)
    assert {h.id for h in by_image} == {0, 4}
    assert search(pool, emb, Image.new("RGB", (8, 8), (0, 250, 0)), k=1)[0].caption == "a green square"
    assert len(search(pool, emb, "red", k=50)) == 6  # k past the pool size: every item once
    assert json.loads(json.dumps(hits[0].to_dict()))["id"] == 2


def test_bad_queries_say_what_to_give(pool, tmp_path):
    emb = ColourEmbedder()
    with pytest.raises(PoolError, match="Image query 'missing.jpg' does not exist"):
        search(pool, emb, "missing.jpg")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PoolError, match="broken.png cannot be decoded"):
        search(pool, emb, str(tmp_path / "broken.png"))
    with pytest.raises(PoolError, match="text or an image path, got '  '"):
        query_vector(emb, "  ")
    with pytest.raises(PoolError, match="k must be a positive integer, got 0"):
        search(pool, emb, "red", k=0)

    class Other(ColourEmbedder):
        model_id = "another-model"

    with pytest.raises(PoolError, match="built with 'colour-test'.*'another-model'"):
        search(pool, Other(), "red")


def test_flagged_items_are_hidden_unless_asked_for(tmp_path):
    flagged = build_pool(colour_folder(tmp_path / "src", NAMES), tmp_path / "pool", ColourEmbedder(),
                         safety=SafetyConfig(clip="on"))
    emb = ColourEmbedder()
    assert {h.id for h in search(flagged, emb, "red", k=6)} == {1, 3, 5}
    shown = search(flagged, emb, "red", k=2, include_flagged=True)
    assert [h.flags for h in shown] == [["unsafe"], ["unsafe"]]


def test_contact_sheet_layout(pool):
    hits = search(pool, ColourEmbedder(), "red", k=4)
    sheet = contact_sheet(pool, hits, columns=3, cell=64)
    assert sheet.size == (3 * 64, 2 * (64 + 12 * 4 + 6))
    assert sheet.getpixel((32, 32)) == (230, 20, 20)  # hit 1 is a red item, centred in its cell
    with pytest.raises(PoolError, match="Nothing to put on a contact sheet"):
        contact_sheet(pool, [])


def test_contact_sheet_of_a_pool_without_images(tmp_path):
    from test_pool import NoModel, make_clip_retrieval, write_table

    rng = np.random.default_rng(0)
    root = make_clip_retrieval(tmp_path / "cr", lambda p, c, k: write_table(p, c, k, real=True),
                               [rng.standard_normal((3, 8)).astype(np.float32)],
                               [{"caption": ["a", "b", "c"], "url": ["http://x/0", "http://x/1", "http://x/2"]}])
    pool = build_pool(root, tmp_path / "pool", NoModel())
    hits = search(pool, NoModel(), "a", k=3)
    sheet = contact_sheet(pool, hits, cell=64)
    assert sheet.getpixel((2, 2)) == (200, 200, 200)  # the grey "no stored image" cell


def test_cli_search_prints_hits_and_writes_a_sheet(tmp_path, capsys):
    clip = save_open_clip_dir(tmp_path / "clip")
    src = colour_folder(tmp_path / "src", NAMES)
    assert run("pool", "build", src, "--out", tmp_path / "pool", "--clip-model", clip) == 0
    capsys.readouterr()
    with pytest.raises(PoolError, match="built with a local CLIP model.*--clip-model FOLDER"):
        run("pool", "search", tmp_path / "pool", "red")
    assert run("pool", "search", tmp_path / "pool", "a red square", "--k", "4", "--clip-model", clip,
               "--out", tmp_path / "out" / "sheet.png", "--columns", "2") == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "1" and "square" in lines[0]
    assert "contact sheet:" in err
    assert Image.open(tmp_path / "out" / "sheet.png").size == (2 * 192, 2 * (192 + 12 * 4 + 6))
    assert run("pool", "search", tmp_path / "pool", str(src / "000.png"), "--k", "1", "--json",
               "--clip-model", clip) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["id"] == 0 and hit["score"] == pytest.approx(1.0, abs=1e-4)  # the image itself


def test_shapes_pool_is_searchable_without_naming_its_model(tmp_path, capsys):
    """A pool built with the shipped shapes CLIP loads its model from the manifest."""
    from test_pool_clip_folders import SHIPPED, needs_assets

    if not (SHIPPED / "open_clip_model.safetensors").is_file():
        pytest.skip(needs_assets.kwargs["reason"])
    src = colour_folder(tmp_path / "src", ["red", "green"])
    build_pool(src, tmp_path / "pool", __import__("bat_app.pool", fromlist=["x"]).load_embedder("shapes"))
    assert run("pool", "search", tmp_path / "pool", "a red square", "--k", "2") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert len(Pool.open(tmp_path / "pool")) == 2
