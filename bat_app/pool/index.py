"""Vector indexes over a pool's embeddings (inner product on unit vectors = cosine).

One interface, four faiss implementations:

    flat   exact; no file of its own: brute force over the memory-mapped embeddings.npy
    ivf    IndexIVFFlat, nlist ~ sqrt(N) lists; nprobe tuned at build time until
           recall@k on a query sample reaches ``target_recall`` against exact search
    hnsw   IndexHNSWFlat (M=32); efSearch tuned the same way (must be >= k)
    faiss  an index built elsewhere (autofaiss IVF-PQ, ...) adopted as is (AdoptedIndex)

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

from bat_app.pool.errors import PoolError

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


class AdoptedIndex(_FaissFileIndex):
    """A faiss index built elsewhere (autofaiss, clip-retrieval's ``index`` step), used as is.

    Its labels are rows of the embeddings it was built from, in that tool's file order; when
    the pool skipped rows (bad vectors, no caption) or the order differs, ``index_ids.npy``
    maps label -> pool id (-1: not in the pool). Search knobs come from autofaiss'
    ``index_param`` ("nprobe=16,efSearch=32") or, without it, nprobe is tuned like ivf's.
    Candidates are re-scored exactly from the pool's embeddings (``rerank`` x k of them).
    """

    kind, exact, knob = "faiss", False, "nprobe"
    LABELS = "index_ids.npy"

    def __init__(self, vectors, params, index, labels=None):
        super().__init__(vectors, params, index)
        self.labels = labels  # label -> pool id, or None (identity)
        self._refs = []

    @classmethod
    def build(cls, vectors, folder, **params):
        raise PoolError("An adopted index is not built here: give it to `pool build` with "
                        "--index-file (or put autofaiss' knn.index in the clip-retrieval folder).")

    @classmethod
    def adopt(cls, path: Path, folder: Path, vectors: np.ndarray, orders: dict,
              index_param: str | None = None, source: dict | None = None,
              target_recall: float = TARGET_RECALL, tune_k: int = TUNE_K) -> "AdoptedIndex":
        """Link (or copy) ``path`` into the pool as its index; check it fits the vectors.

        ``orders``: candidate label -> pool id maps by name (None: identity), e.g. the
        source files in numeric and in lexicographic order (tools differ): the one under
        which the index finds the pool's own vectors is kept.
        """
        started = time.perf_counter()
        for name, labels in orders.items():
            self = cls._adopt_as(path, folder, vectors, labels, index_param, source)
            hits = self.self_hits()
            if hits >= 0.5:
                self.params["label_order"] = name
                break
        else:
            raise PoolError(f"The index {path} does not index these embeddings: searching the "
                            f"pool's own vectors does not find them (under the file orders "
                            f"{', '.join(orders)}). Give the index built from this output, or "
                            "build the pool without it (--index auto).")
        ivf = self._ivf()
        if self._compressed():
            # PQ/SQ codes cap recall@1000 (~0.76 for PQ192x4fs at 1M, scripts/bench_ivfpq.py)
            # whatever nprobe is; re-scoring 4k candidates exactly brings it to ~0.995.
            self.params["rerank"] = 4
        if ivf is not None and not index_param:
            least = max(1, ivf.nlist // 1024)
            self._tune(sorted({min(ivf.nlist, least * 2 ** i) for i in range(18)}), tune_k,
                       target_recall, TUNE_QUERIES, 0)
        else:
            self._tune([None], tune_k, target_recall, TUNE_QUERIES, 0)  # measure only
        if self.params["tuned_recall"] < target_recall and self._compressed():
            self.knob = "rerank"  # wider exact re-scoring is the remaining lever
            self._tune([8, 16], tune_k, target_recall, TUNE_QUERIES, 0)
            self.knob = type(self).knob
        self.params["build_s"] = round(time.perf_counter() - started, 2)
        return self

    def self_hits(self, n: int = 16, k: int = 10) -> float:
        """Share of sampled pool vectors the index returns among their own k nearest."""
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(len(self.vectors), size=min(n, len(self.vectors)), replace=False))
        queries = np.ascontiguousarray(self.vectors[sample], dtype=np.float32)
        ivf = self._ivf()
        before = None if ivf is None else int(ivf.nprobe)
        if ivf is not None:  # a wide probe: this checks the labels, not the recall
            ivf.nprobe = max(before, min(ivf.nlist, 16))
        try:
            _, ids = self._search(queries, min(k, len(self.vectors)))
        finally:
            if ivf is not None:
                ivf.nprobe = before
        return float(np.mean([i in row for i, row in zip(sample, ids)]))

    @classmethod
    def _adopt_as(cls, path, folder, vectors, labels, index_param, source) -> "AdoptedIndex":
        import os
        import shutil

        import faiss

        probe = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        expected = len(labels) if labels is not None else len(vectors)
        if probe.d != vectors.shape[1] or probe.ntotal != expected:
            raise PoolError(f"The index {path} holds {probe.ntotal} vectors of width {probe.d}, but "
                            f"the embeddings it should index have {expected} rows of width "
                            f"{vectors.shape[1]}: it was built from other embeddings. Build the pool "
                            "without it (--index auto) or give the matching index.")
        metric = "l2" if probe.metric_type == faiss.METRIC_L2 else "inner_product"
        del probe
        target = Path(folder) / INDEX_FILE
        target.unlink(missing_ok=True)
        try:
            os.link(path, target)  # same disk: no copy of a possibly huge file
        except OSError:
            shutil.copyfile(path, target)
        params = {"adopted_from": str(Path(path).resolve()), "metric": metric,
                  "label_map": labels is not None, **(source or {})}
        if labels is not None:
            np.save(Path(folder) / cls.LABELS, labels.astype(np.int64))
        else:
            (Path(folder) / cls.LABELS).unlink(missing_ok=True)
        if index_param:
            params["index_param"] = index_param
        return cls.load(folder, vectors, params)

    @classmethod
    def load(cls, folder, vectors, params):
        import faiss

        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise PoolError(f"{path} is missing: the pool's adopted index is gone. Build the pool "
                            "again.")
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        labels = np.load(Path(folder) / cls.LABELS, mmap_mode="r") if params.get("label_map") else None
        if params.get("index_param"):
            faiss.ParameterSpace().set_index_parameters(index, params["index_param"])
        return cls(vectors, params, index, None if labels is None else np.asarray(labels))

    def _compressed(self) -> bool:
        """Whether the index stores codes rather than the vectors (its scores are estimates)."""
        import faiss

        inner = self._ivf() or faiss.downcast_index(self.index)
        return not isinstance(faiss.downcast_index(inner), (faiss.IndexIVFFlat, faiss.IndexFlat,
                                                            faiss.IndexHNSWFlat))

    def _ivf(self):
        import faiss

        try:
            return faiss.extract_index_ivf(self.index)
        except RuntimeError:
            return None

    def _search(self, queries, k, sel=None):
        if self.params.get("nprobe"):
            self._ivf().nprobe = int(self.params["nprobe"])
        if sel is None and self.labels is not None:
            sel = self._selector(self.labels >= 0)  # rows the pool skipped are never returned
        params = self._search_params(sel)
        wide = int(min(self.index.ntotal, k * int(self.params.get("rerank", 1))))
        _, labels = self.index.search(queries, max(k, wide), params=params)
        self._refs.clear()
        ids = labels if self.labels is None else np.where(labels >= 0, self.labels[np.maximum(labels, 0)], -1)
        return self._rescore(queries, ids, k)

    def _rescore(self, queries, ids, k):
        """Exact cosines from the pool's embeddings for the candidates, best first: an
        adopted index is usually compressed (PQ), and its own scores are only estimates
        (and distances, for L2 indexes). ``params["rerank"]`` > 1 widens the candidates."""
        out_s = np.full((len(ids), k), -np.inf, np.float32)
        out_i = np.full((len(ids), k), -1, np.int64)
        for r, (q, row) in enumerate(zip(queries, ids)):
            row = row[row >= 0]
            if len(row) == 0:
                continue
            order = np.argsort(row)  # sorted reads from the memory-mapped vectors
            exact = np.asarray(self.vectors[row[order]], np.float32) @ q
            best = np.argsort(-exact, kind="stable")[:k]
            out_s[r, :len(best)], out_i[r, :len(best)] = exact[best], row[order][best]
        return out_s, out_i

    def _search_allowed(self, queries, k, blocked):
        allowed = ~blocked if self.labels is None else (
            (self.labels >= 0) & ~blocked[np.maximum(self.labels, 0)])
        return self._search(queries, k, sel=self._selector(allowed))

    def _selector(self, allowed: np.ndarray):
        import faiss

        bitmap = np.packbits(allowed, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        self._refs += [bitmap, sel]  # faiss keeps raw pointers: hold them until the search ends
        return sel

    def _search_params(self, sel):
        """faiss search parameters carrying ``sel`` through a pre-transform (OPQ) to the IVF
        or HNSW index below it; None when there is nothing to pass."""
        import faiss

        if sel is None:
            return None
        index = faiss.downcast_index(self.index)
        outer = None
        if isinstance(index, faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform()
            index = faiss.downcast_index(index.index)
        if isinstance(index, faiss.IndexIVF):
            inner = faiss.SearchParametersIVF(nprobe=int(index.nprobe), sel=sel)
        elif isinstance(index, faiss.IndexHNSW):
            inner = faiss.SearchParametersHNSW(efSearch=int(index.hnsw.efSearch), sel=sel)
        else:
            inner = faiss.SearchParameters(sel=sel)
        self._refs += [inner, outer]
        if outer is None:
            return inner
        outer.index_params = inner
        return outer


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
