"""One test suite run against every vector index type (flat, ivf, hnsw, and faiss: an index
built elsewhere, here an IVF + 8-bit scalar quantizer as autofaiss might, then adopted) on
synthetic vectors."""

from __future__ import annotations

import numpy as np
import pytest

from bat_app.pool import PoolError, choose_index
from bat_app.pool.index import INDEX_TYPES, build_index, load_index, recall

N, DIM, K = 3000, 32, 50


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    """Clustered unit vectors (60 clusters), like CLIP embeddings rather than pure noise."""
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((60, DIM)))
    return unit(centres[rng.integers(0, 60, N)] + 0.6 * rng.standard_normal((N, DIM)) / np.sqrt(DIM))


@pytest.fixture(scope="module")
def queries(vectors) -> np.ndarray:
    rng = np.random.default_rng(1)
    return unit(vectors[rng.integers(0, N, 40)] + 0.3 * rng.standard_normal((40, DIM)) / np.sqrt(DIM))


def exact(vectors, queries, k):
    scores = queries @ vectors.T
    ids = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.fixture(scope="module", params=sorted(INDEX_TYPES))
def index(request, vectors, tmp_path_factory):
    """Each index type, built into a folder and reopened from it as a pool does (mmap)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "faiss":
        import faiss

        from bat_app.pool.index import AdoptedIndex

        made = faiss.index_factory(DIM, "IVF32,SQ8", faiss.METRIC_INNER_PRODUCT)
        made.train(vectors)
        made.add(vectors)
        faiss.write_index(made, str(folder / "made-elsewhere.index"))
        built = AdoptedIndex.adopt(folder / "made-elsewhere.index", folder, vectors,
                                   {"identity": None}, tune_k=K)
        return load_index("faiss", folder, vectors, built.params)
    params = {} if request.param == "flat" else {"tune_k": K}
    built = build_index(request.param, vectors, folder, **params)
    return load_index(request.param, folder, vectors, built.params)


def test_finds_the_true_nearest_neighbours(index, vectors, queries):
    true_scores, true_ids = exact(vectors, queries, K)
    scores, ids = index.search(queries, K)
    assert scores.shape == ids.shape == (len(queries), K) and ids.dtype == np.int64
    found = ids >= 0
    assert np.array_equal(found, np.isfinite(scores)), "ids -1 exactly where scores are -inf"
    assert all(np.all(np.diff(row[ok]) <= 1e-5) for row, ok in zip(scores, found)), "best first"
    got = recall(ids, true_ids)
    if index.exact:
        assert got == 1.0
        np.testing.assert_allclose(scores, true_scores, atol=1e-5)
    else:
        assert got >= 0.9, f"{index.kind} recall@{K} {got:.3f} with {index.params}"
        # the scores returned are the true inner products of the ids returned
        true = np.take_along_axis(queries @ vectors.T, np.where(found, ids, 0), axis=1)
        np.testing.assert_allclose(scores[found], true[found], atol=1e-5)


def test_a_pool_vector_finds_itself_first(index, vectors):
    _, ids = index.search(vectors[[5, 500, 2999]], 1)
    assert list(ids[:, 0]) == [5, 500, 2999]


def test_k_larger_than_pool_pads_with_minus_one(index, vectors):
    small_k = N + 7
    scores, ids = index.search(vectors[0], small_k)  # a (dim,) query is one row
    found = ids[0] >= 0
    assert ids.shape == (1, small_k) and found.sum() <= N and not found[-7:].any()
    assert np.all(np.isneginf(scores[0][~found])) and np.all(np.isfinite(scores[0][found]))
    if index.exact:
        assert found.sum() == N


def test_bad_queries_and_k_are_refused(index):
    with pytest.raises(PoolError, match=r"Queries must be \(n, 32\) vectors.*got shape \(2, 16\)"):
        index.search(np.ones((2, 16), np.float32), 3)
    with pytest.raises(PoolError, match="k must be a positive integer, got 0"):
        index.search(np.ones((1, DIM), np.float32), 0)
    scores, ids = index.search(np.zeros((0, DIM), np.float32), 3)
    assert scores.shape == ids.shape == (0, 3)


def test_parameters_are_recorded(index):
    if index.exact:
        assert index.params == {}
    else:
        assert index.params["tuned_recall"] >= index.params["target_recall"] == 0.95
        assert index.params["tune_k"] == K
        assert {"ivf": "nprobe", "hnsw": "ef_search", "faiss": "nprobe"}[index.kind] in index.params


def test_blocked_ids_are_never_returned(index, vectors, queries):
    blocked = np.zeros(N, bool)
    blocked[np.random.default_rng(3).choice(N, 300, replace=False)] = True
    _, ids = index.search(queries, K, blocked=blocked)
    # an approximate index may fill fewer than K from the lists it probes (ids -1 there)
    assert not blocked[ids[ids >= 0]].any() and (ids >= 0).mean() > 0.9
    allowed = np.flatnonzero(~blocked)
    truth = allowed[np.argsort(-(queries @ vectors[allowed].T), axis=1)[:, :K]]
    assert recall(ids, truth) == 1.0 if index.exact else recall(ids, truth) >= 0.9


def test_choice_by_size_and_unknown_types():
    assert choose_index(100) == "flat" and choose_index(10_000_000) == "ivf"
    assert choose_index(11, flat_max=10) == "ivf" and choose_index(10, flat_max=10) == "flat"
    with pytest.raises(PoolError, match="Unknown index type 'annoy'"):
        build_index("annoy", np.ones((2, 2), np.float32), ".")
    with pytest.raises(PoolError, match=r"Unknown ivf index parameters \['nlists'\]"):
        build_index("ivf", np.ones((2, 2), np.float32), ".", nlists=3)
