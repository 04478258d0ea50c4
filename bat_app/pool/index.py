"""Vector indexes over a pool's embeddings (inner product on unit vectors = cosine).

One interface, four faiss implementations:

    flat   exact; no file of its own: brute force over the memory-mapped embeddings.npy
    ivf    IndexIVFFlat, nlist ~ sqrt(N) lists; nprobe tuned at build time until
           recall@k on a query sample reaches ``target_recall`` against exact search
    hnsw   IndexHNSWFlat (M=32); efSearch tuned the same way (must be >= k)
    faiss  an index built elsewhere (autofaiss IVF-PQ, ...) adopted as is
           (bat_app.pool.adopted.AdoptedIndex)

``choose_index(n)`` picks flat up to ``FLAT_MAX`` vectors and ivf above. Measured with
scripts/bench_faiss.py (2 shared CPU cores, k=1000, 768-d): exact search costs ~0.3-0.4 ms
per 1k vectors per query (30-40 ms at 100k, 300-420 ms at 1M); ivf on clustered, CLIP-like
vectors answers in ~4 ms at 1M with recall@1000 >= 0.95. For k=1000 IVF suits better than
HNSW, which has to walk >= k candidates per query and builds slowly on few cores. On vectors
without structure (uniform on the sphere) no partition helps: tuning then ends at
nprobe = nlist, i.e. exact search. Index files are read with faiss' mmap flag, so opening a
big pool is quick and its pages are shared between processes.

    index = build_index("ivf", vectors, folder)          # writes folder/index.faiss
    index.params                                         # {"nlist": 1000, "nprobe": 16, ...}
    index = load_index("ivf", folder, vectors, index.params)
    scores, ids = index.search(queries, k=1000)          # ids -1 where fewer than k found
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from bat_app.errors import PoolError

FLAT_MAX = 50_000           # up to this many vectors: exact search (~15-20 ms a query here)
TARGET_RECALL = 0.95        # what ivf/hnsw parameters are tuned to reach at k = TUNE_K
TUNE_K = 1000               # ALBAT's retrieval prefilter default K
TUNE_QUERIES = 32
INDEX_FILE = "index.faiss"
_ADD_CHUNK = 65_536


def choose_index(n: int, flat_max: int = FLAT_MAX) -> str:
    """'flat' for n <= flat_max vectors, else 'ivf'."""
    return "flat" if n <= flat_max else "ivf"


class VectorIndex(ABC):
    """Search a fixed (N, dim) float32 matrix of unit vectors by inner product."""

    kind: ClassVar[str]
    exact: ClassVar[bool]

    def __init__(self, vectors: np.ndarray, params: dict):
        self.vectors = vectors
        self.params = dict(params)

    @classmethod
    @abstractmethod
    def build(cls, vectors: np.ndarray, folder: Path, **params) -> "VectorIndex":
        """Build over ``vectors`` and write the index files into ``folder``."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, vectors: np.ndarray, params: dict) -> "VectorIndex":
        """Open what ``build`` wrote (memory-mapped where faiss allows)."""

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss' (distances, labels) for valid, contiguous float32 queries."""

    def search(self, queries: np.ndarray, k: int, blocked: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; ids -1 and scores -inf past the
        last hit (k > N, or an approximate index that found fewer than k).

        ``blocked``: bool (N,) of ids never to return (flagged content).
        """
        queries = check_queries(queries, self.vectors.shape[1])
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise PoolError(f"k must be a positive integer, got {k!r}.")
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if blocked is not None and blocked.any():
            scores, ids = self._search_allowed(queries, int(k), blocked)
        else:
            scores, ids = self._search(queries, int(k))
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    def _search_allowed(self, queries, k, blocked):
        """Search leaving out ``blocked`` ids. Default: ask for k more than there are
        blocked ids and drop them, which is exact for an exact index (used by flat, whose
        faiss.knn takes no id selector; flagged items are a small share of a pool)."""
        n_blocked = int(np.count_nonzero(blocked))
        scores, ids = self._search(queries, int(min(len(self.vectors), k + n_blocked)))
        out_s = np.full((len(ids), k), -np.inf, np.float32)
        out_i = np.full((len(ids), k), -1, np.int64)
        for r, (row_s, row_i) in enumerate(zip(scores, ids)):
            keep = (row_i >= 0) & ~blocked[np.maximum(row_i, 0)]
            row_s, row_i = row_s[keep][:k], row_i[keep][:k]
            out_s[r, :len(row_i)], out_i[r, :len(row_i)] = row_s, row_i
        return out_s, out_i

    def __len__(self) -> int:
        return len(self.vectors)


class FlatIndex(VectorIndex):
    kind, exact = "flat", True

    @classmethod
    def build(cls, vectors, folder, **params):
        if params:
            raise PoolError(f"The flat index takes no parameters, got {sorted(params)}.")
        return cls(vectors, {})

    @classmethod
    def load(cls, folder, vectors, params):
        return cls(vectors, params)

    def _search(self, queries, k):
        import faiss

        return faiss.knn(queries, np.asarray(self.vectors), k, metric=faiss.METRIC_INNER_PRODUCT)


class _FaissFileIndex(VectorIndex):
    """Shared by the approximate indexes: a faiss index file plus one search-time knob."""

    knob: ClassVar[str]

    def __init__(self, vectors, params, index):
        super().__init__(vectors, params)
        self.index = index

    @classmethod
    def load(cls, folder, vectors, params):
        import faiss

        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise PoolError(f"{path} is missing: the pool's {cls.kind} index was not written "
                            "(interrupted build?). Run `pool build` again to finish it.")
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if index.ntotal != len(vectors):
            raise PoolError(f"{path} holds {index.ntotal} vectors but the pool has {len(vectors)}: "
                            "the index belongs to another build. Delete it and run `pool build` "
                            "again to rebuild it.")
        return cls(vectors, params, index)

    def _search_allowed(self, queries, k, blocked):
        # faiss skips the blocked ids inside the search (a bitmap of allowed ids), so the
        # approximate index still fills k from what it probes.
        import faiss

        bitmap = np.packbits(~blocked, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(blocked), faiss.swig_ptr(bitmap))
        scores, ids = self._search(queries, k, sel=sel)
        del sel, bitmap  # the selector points into bitmap: both live until the search is done
        return scores, ids

    def _write(self, folder: Path) -> None:
        import faiss

        tmp = Path(folder) / (INDEX_FILE + ".tmp")
        faiss.write_index(self.index, str(tmp))
        tmp.replace(Path(folder) / INDEX_FILE)

    def _tune(self, ladder: list[int], k: int, target: float, n_queries: int, seed: int) -> None:
        """Set ``self.params[knob]`` to the first ladder value whose recall@k on a sample of
        the pool's own vectors reaches ``target``; record the recall it measured."""
        import faiss

        n = len(self.vectors)
        k = min(k, n)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
        queries = np.ascontiguousarray(self.vectors[sample], dtype=np.float32)
        _, truth = faiss.knn(queries, np.asarray(self.vectors), k, metric=faiss.METRIC_INNER_PRODUCT)
        for value in ladder:
            if value is not None:  # None: measure the index as it is
                self.params[self.knob] = value
            _, ids = self._search(queries, k)
            got = recall(ids, truth)
            if got >= target:
                break
        self.params.update(tuned_recall=round(got, 4), tune_k=k, tune_queries=len(sample),
                           target_recall=target)


class IVFIndex(_FaissFileIndex):
    kind, exact, knob = "ivf", False, "nprobe"

    @classmethod
    def build(cls, vectors, folder, nlist: int | None = None, nprobe: int | None = None,
              train_size: int | None = None, target_recall: float = TARGET_RECALL,
              tune_k: int = TUNE_K, seed: int = 0, **unknown):
        import faiss

        _no_unknown(cls.kind, unknown)
        n, dim = vectors.shape
        nlist = nlist or max(1, min(int(round(math.sqrt(n))), n // 39 or 1, 65_536))
        train_size = min(n, train_size or 64 * nlist)
        started = time.perf_counter()
        rng = np.random.default_rng(seed)
        train = np.ascontiguousarray(vectors[np.sort(rng.choice(n, size=train_size, replace=False))],
                                     dtype=np.float32)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(train)
        del train
        _add_chunked(index, vectors)
        self = cls(vectors, {"nlist": nlist, "train_size": train_size}, index)
        if nprobe:
            self.params["nprobe"] = nprobe
        else:
            # start where the probed lists hold ~2k vectors on average: fewer cannot fill k
            least = min(nlist, math.ceil(2 * min(tune_k, n) * nlist / n))
            ladder = sorted({min(nlist, least * 2 ** i) for i in range(18)})
            self._tune(ladder, tune_k, target_recall, TUNE_QUERIES, seed)
        self.params["build_s"] = round(time.perf_counter() - started, 2)
        self._write(folder)
        return self

    def _search(self, queries, k, sel=None):
        import faiss

        params = faiss.SearchParametersIVF(nprobe=int(self.params["nprobe"]))
        if sel is not None:
            params.sel = sel
        return self.index.search(queries, k, params=params)


class HNSWIndex(_FaissFileIndex):
    kind, exact, knob = "hnsw", False, "ef_search"

    @classmethod
    def build(cls, vectors, folder, m: int = 32, ef_construction: int = 80, ef_search: int | None = None,
              target_recall: float = TARGET_RECALL, tune_k: int = TUNE_K, seed: int = 0, **unknown):
        import faiss

        _no_unknown(cls.kind, unknown)
        started = time.perf_counter()
        index = faiss.IndexHNSWFlat(vectors.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        _add_chunked(index, vectors)
        self = cls(vectors, {"m": m, "ef_construction": ef_construction}, index)
        if ef_search:
            self.params["ef_search"] = ef_search
        else:
            k = min(tune_k, len(vectors))
            self._tune([k, 2 * k, 4 * k, 8 * k], tune_k, target_recall, TUNE_QUERIES, seed)
        self.params["build_s"] = round(time.perf_counter() - started, 2)
        self._write(folder)
        return self

    def _search(self, queries, k, sel=None):
        import faiss

        # HNSW returns at most efSearch results: it has to be at least k.
        params = faiss.SearchParametersHNSW(efSearch=max(int(self.params["ef_search"]), k))
        if sel is not None:
            params.sel = sel
        return self.index.search(queries, k, params=params)


# An index built elsewhere lives in its own module; it subclasses _FaissFileIndex above.
from bat_app.pool.adopted import AdoptedIndex  # noqa: E402

INDEX_TYPES: dict[str, type[VectorIndex]] = {"flat": FlatIndex, "ivf": IVFIndex, "hnsw": HNSWIndex,
                                             "faiss": AdoptedIndex}


def build_index(kind: str, vectors: np.ndarray, folder: Path | str, **params) -> VectorIndex:
    return _index_type(kind).build(vectors, Path(folder), **params)


def load_index(kind: str, folder: Path | str, vectors: np.ndarray, params: dict) -> VectorIndex:
    return _index_type(kind).load(Path(folder), vectors, params)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (ids) that appears in the same row of ``found``."""
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise PoolError(f"Queries must be (n, {dim}) vectors for this pool, got shape "
                        f"{np.shape(queries)}: embed them with the pool's model.")
    return np.ascontiguousarray(q)


def _index_type(kind: str) -> type[VectorIndex]:
    if kind not in INDEX_TYPES:
        raise PoolError(f"Unknown index type {kind!r}; use one of {', '.join(INDEX_TYPES)} or 'auto'.")
    return INDEX_TYPES[kind]


def _add_chunked(index, vectors: np.ndarray) -> None:
    for start in range(0, len(vectors), _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start:start + _ADD_CHUNK], dtype=np.float32))


def _no_unknown(kind: str, unknown: dict) -> None:
    if unknown:
        raise PoolError(f"Unknown {kind} index parameters {sorted(unknown)}.")
