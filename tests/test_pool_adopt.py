"""clip-retrieval output with its autofaiss index, adopted as is: no re-embedding, no new
index. The index is built here the way autofaiss does (an IVF-PQ factory string over the
embedding files listed in name order, so img_emb_10 comes before img_emb_2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bat_app.pool import Pool, PoolError, SafetyConfig, build_pool
from test_pool import NoModel as _NoModel
from test_pool import make_clip_retrieval, save_open_clip_dir, write_table
from test_pool_cli import run

DIM = 32  # the tiny test CLIP's width


class NoModel(_NoModel):
    dim = DIM


NO_CLIP = SafetyConfig(clip="off")  # NoModel's text vectors are random: no zero-shot flags
FILES, ROWS = 12, 40


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((16, DIM))
    x = centres[rng.integers(0, 16, n)] + 0.2 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def autofaiss_like(root, vectors: list[np.ndarray], factory="IVF16,Flat", index_param="nprobe=16",
                   name="knn.index"):
    """An index over the files in name order (as a sorted listing reads them) + its infos."""
    import faiss

    order = sorted(range(len(vectors)), key=lambda i: f"img_emb_{i}.npy")
    x = np.concatenate([vectors[i] for i in order])
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    faiss.write_index(index, str(root / name))
    if index_param:
        (root / "index_infos.json").write_text(json.dumps({"index_key": factory, "index_param": index_param}))
    return root / name


@pytest.fixture
def output(tmp_path):
    """12 embedding files of 40 rows; row 5 of file 3 has no caption (the pool skips it)."""
    vectors = [clustered(ROWS, seed) for seed in range(FILES)]
    rows = [{"caption": [f"file {f} row {r}" for r in range(ROWS)]} for f in range(FILES)]
    rows[3]["caption"][5] = None
    root = make_clip_retrieval(tmp_path / "cr", lambda p, c, k: write_table(p, c, k, real=True), vectors, rows)
    return root, vectors


def test_autofaiss_index_is_adopted_in_its_file_order(output, tmp_path):
    root, vectors = output
    autofaiss_like(root, vectors)
    pool = build_pool(root, tmp_path / "pool", NoModel(), safety=NO_CLIP)
    index = pool.manifest["index"]
    assert index["type"] == "faiss" and index["params"]["label_order"] == "lexicographic"
    assert index["params"]["index_param"] == "nprobe=16" and index["params"]["tuned_recall"] >= 0.9
    assert len(pool) == FILES * ROWS - 1 and (pool.folder / "index_ids.npy").is_file()
    emb = pool.embeddings()
    for pool_id in (0, 130, 200, len(pool) - 1):  # before and after the skipped row
        _, ids = pool.search(emb[pool_id], k=1)
        assert ids[0, 0] == pool_id
    assert pool.item(130).caption == "file 3 row 11"  # row 5 of file 3 was skipped
    _, ids = pool.search(emb[:20], k=50)
    assert (ids >= 0).all() and (ids < len(pool)).all()  # the skipped row's label never leaks out


def test_without_autofaiss_params_nprobe_is_tuned(output, tmp_path):
    root, vectors = output
    autofaiss_like(root, vectors, index_param=None)
    params = build_pool(root, tmp_path / "pool", NoModel(), safety=NO_CLIP).manifest["index"]["params"]
    assert params["nprobe"] >= 1 and params["tuned_recall"] >= 0.95 and "index_param" not in params


def test_flagged_items_never_come_out_of_an_adopted_index(tmp_path):
    vectors = [clustered(ROWS, seed) for seed in range(2)]
    rows = [{"caption": [f"c{f}{r}" for r in range(ROWS)]} for f in range(2)]
    root = make_clip_retrieval(tmp_path / "cr", lambda p, c, k: write_table(p, c, k, real=True), vectors, rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = root / "metadata" / "metadata_0.parquet"
    table = pq.read_table(meta)
    pq.write_table(table.append_column("punsafe", pa.array([0.99] + [0.0] * (ROWS - 1))), meta)
    autofaiss_like(root, vectors, factory="IVF4,Flat")
    pool = build_pool(root, tmp_path / "pool", NoModel(), safety=NO_CLIP)
    assert pool.manifest["index"]["type"] == "faiss" and pool.flags_of(0) == ["unsafe"]
    _, ids = pool.search(pool.embeddings()[0], k=20)
    assert 0 not in ids[0] and (ids[0] >= 0).all()
    _, ids = pool.search(pool.embeddings()[0], k=1, include_flagged=True)
    assert ids[0, 0] == 0
    reopened = Pool.open(pool.folder)  # labels and knobs come back from the folder
    assert reopened.search(pool.embeddings()[5], k=1)[1][0, 0] == 5


def test_an_index_of_other_embeddings_is_refused(output, tmp_path):
    root, vectors = output
    autofaiss_like(root, [clustered(ROWS, 100 + s) for s in range(FILES)])
    with pytest.raises(PoolError, match="does not index these embeddings.*numeric, lexicographic"):
        build_pool(root, tmp_path / "pool", NoModel(), safety=NO_CLIP)
    other = tmp_path / "small.index"
    autofaiss_like(tmp_path, [clustered(50, 0)], factory="IVF4,Flat", name="small.index")
    with pytest.raises(PoolError, match="holds 50 vectors of width 32, but the embeddings it should index have 480"):
        build_pool(root, tmp_path / "p2", NoModel(), index_file=other, safety=NO_CLIP)


def test_cli_index_file_and_rebuilding_instead(output, tmp_path):
    root, vectors = output
    path = autofaiss_like(tmp_path, vectors, name="elsewhere.index")
    clip = save_open_clip_dir(tmp_path / "clip")  # the model the embeddings came from (width 32)
    assert run("pool", "build", root, "--out", tmp_path / "pool", "--clip-model", clip,
               "--index-file", path) == 0
    assert Pool.open(tmp_path / "pool").manifest["index"]["params"]["adopted_from"] == str(path.resolve())
    (root / "knn.index").symlink_to(path)
    assert run("pool", "build", root, "--out", tmp_path / "own", "--clip-model", clip,
               "--index", "flat") == 0
    assert Pool.open(tmp_path / "own").manifest["index"]["type"] == "flat"  # an explicit --index wins
    from test_pool import make_folder

    folder = make_folder(tmp_path / "src", n=2)
    with pytest.raises(PoolError, match="adopts an index built over a source's own embeddings"):
        build_pool(folder, tmp_path / "p3", NoModel(), index_file=path, safety=NO_CLIP)
