"""Every open_clip folder the project ships or writes loads wherever ``--clip-model`` is taken.

Two layouts exist: open_clip's own (``open_clip_config.json`` + full ``state_dict``, what
users download and what the tests' tiny CLIP writes) and ``bat_app.shapes.clip.save_clip``'s,
which stores only the kept rows of the token table (``token_embedding.kept_ids/kept_rows``)
and fails open_clip's strict ``load_state_dict``. Both go through ``load_embedder``, which
every command with ``--clip-model`` calls (pool build/search, select, compare).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from bat_app.pool import Pool, PoolError, load_embedder
from bat_app.pool.embedder import SHAPES_MODEL_ID, has_pruned_tokens
from bat_app.shapes.paths import shapes_paths
from test_pool import image, make_folder, save_open_clip_dir
from test_pool_cli import run

SHIPPED = shapes_paths().clip
needs_assets = pytest.mark.skipif(not (SHIPPED / "open_clip_model.safetensors").is_file(),
                                  reason="shapes assets not built")


def write_pruned_clip(folder, seed: int = 0):
    """A random shapes-config CLIP saved the way the shapes build saves its CLIP."""
    from bat_app.shapes.clip import create_clip, save_clip

    torch.manual_seed(seed)
    save_clip(create_clip(), folder, {"note": "test"}, keep_token_ids=[0, 1, 320, 49406, 49407])
    return folder


@needs_assets
def test_shipped_shapes_clip_folder_is_the_shapes_model():
    assert has_pruned_tokens(SHIPPED)
    by_path = load_embedder(str(SHIPPED), None, device="cpu")
    by_name = load_embedder("shapes", device="cpu")
    # Same model, same id: a pool built with either is queried with the other.
    assert by_path.model_id == by_name.model_id == SHAPES_MODEL_ID
    pics = [image(0), image(1)]
    np.testing.assert_allclose(by_path.encode_images(pics), by_name.encode_images(pics), atol=1e-6)
    text = ["a red star on a teal background"]
    np.testing.assert_allclose(by_path.encode_texts(text), by_name.encode_texts(text), atol=1e-6)


def test_pruned_folder_loads_and_is_named_by_content(tmp_path):
    folder = write_pruned_clip(tmp_path / "my-clip")
    assert has_pruned_tokens(folder)
    emb = load_embedder(str(folder), None, device="cpu")
    assert emb.model_id.startswith("open_clip:local-dir:my-clip@") and emb.dim == 64
    v = emb.encode_images([image(3)])
    assert v.shape == (1, 64) and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(emb.encode_texts(["a star"]), axis=1), 1, atol=1e-5)
    moved = shutil.copytree(folder, tmp_path / "moved" / "my-clip")
    assert load_embedder(str(moved), None, device="cpu").model_id == emb.model_id


def test_open_clip_layout_still_loads_through_open_clip(tmp_path):
    folder = save_open_clip_dir(tmp_path / "plain")
    assert not has_pruned_tokens(folder)
    assert load_embedder(str(folder), None, device="cpu").dim == 32


def test_damaged_weights_name_the_file(tmp_path):
    folder = write_pruned_clip(tmp_path / "bad")
    (folder / "open_clip_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PoolError, match="open_clip_model.safetensors is not a readable safetensors"):
        load_embedder(str(folder), None)


@needs_assets
def test_pool_build_with_the_shipped_clip_folder(tmp_path, capsys):
    """The command from the issue: `pool build --clip-model assets/shapes/clip`."""
    src = make_folder(tmp_path / "src", n=4, corrupt=False, uncaptioned=False)
    assert run("pool", "build", src, "--out", tmp_path / "pool", "--clip-model", SHIPPED,
               "--device", "cpu") == 0
    pool = Pool.open(tmp_path / "pool", load_embedder("shapes", device="cpu"))
    assert len(pool) == 4 and pool.model_id == SHAPES_MODEL_ID


def test_pool_build_with_a_written_pruned_folder_and_selection_embedder(tmp_path):
    """A folder save_clip wrote (not the shipped one) works for pool build and for the
    selectors' embedder lookup (`select/compare --clip-model FOLDER`)."""
    from bat_app.albat.run import open_pool

    clip = write_pruned_clip(tmp_path / "clip", seed=1)
    src = make_folder(tmp_path / "src", n=3, corrupt=False, uncaptioned=False)
    assert run("pool", "build", src, "--out", tmp_path / "pool", "--clip-model", clip) == 0
    pool, emb = open_pool(tmp_path / "pool", str(clip))
    assert emb.model_id == pool.model_id and len(pool) == 3
