"""An index built elsewhere (autofaiss IVF-PQ, clip-retrieval's ``index`` step), adopted as
the pool's index without re-indexing: labels mapped to pool ids, search knobs from autofaiss'
``index_param`` or tuned, flagged items left out inside faiss, candidates re-scored exactly.

    index = AdoptedIndex.adopt(Path("embeddings/index/knn.index"), pool_folder, vectors,
                               {"numeric": None, "lexicographic": label_map}, "nprobe=64")
    index.params    # {"label_order": "numeric", "rerank": 4, "tuned_recall": 0.99, ...}
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bat_app.errors import PoolError
from bat_app.pool.index import INDEX_FILE, TARGET_RECALL, TUNE_K, TUNE_QUERIES, _FaissFileIndex


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
