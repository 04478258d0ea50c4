"""Benchmark the pool's vector indexes on synthetic unit vectors (no model, no download).

    nice -n 10 .venv/bin/python scripts/bench_faiss.py --hnsw               # 100k and 1M, clustered
    nice -n 10 .venv/bin/python scripts/bench_faiss.py --data uniform        # the worst case
    .venv/bin/python scripts/bench_faiss.py --sizes 20000 --queries 50      # a quick look
    .venv/bin/python scripts/bench_faiss.py --quick                          # a smoke run (seconds)

For each size it writes N x dim float32 unit vectors to a temporary .npy (memory-mapped, as
in a pool), builds the index ``bat_app.pool`` would choose above FLAT_MAX (ivf, nprobe tuned
to recall 0.95 at k=1000 on a sample of the pool's own vectors) exactly as ``build_pool``
does, reopens it with the mmap flag, and measures on queries that are NOT in the pool:

    build time, single-query latency p50/p99 for k (default 1000), recall@k against exact
    search (faiss brute force over the same vectors), and the same for exact search itself.

Data (--data):
    clustered  a two-level mixture like CLIP embeddings: super-clusters (one per 2,000
               vectors) -> fine clusters (one per 50) -> points; cosine to their fine centre
               ~0.8, between points of one fine cluster ~0.6. Queries are fresh draws.
    uniform    isotropic Gaussian, normalized: no structure at all; the worst case for any
               partitioning index (every point is about as far as every other).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bat_app.pool.index import build_index, load_index, recall

CHUNK = 100_000


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Clustered:
    """Two-level Gaussian mixture on the sphere (see module docstring)."""

    def __init__(self, n: int, dim: int, seed: int, spread: float = 1.0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        n_super = max(1, n // 2000)
        n_fine = max(1, n // 50)
        supers = unit(rng.standard_normal((n_super, dim)))
        # fine centre = super + noise of norm ~1.0: cosine to its super ~0.7
        self.fine = unit(supers[rng.integers(0, n_super, n_fine)]
                         + spread * rng.standard_normal((n_fine, dim)).astype(np.float32) / np.sqrt(dim))
        self.noise = 0.75 * spread  # point noise norm: cosine to its fine centre ~0.8 at spread 1

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        centres = self.fine[rng.integers(0, len(self.fine), n)]
        return unit(centres + self.noise * rng.standard_normal((n, self.dim)).astype(np.float32)
                    / np.sqrt(self.dim))


class Uniform:
    def __init__(self, n: int, dim: int, seed: int, spread: float = 1.0):
        self.dim = dim

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return unit(rng.standard_normal((n, self.dim)).astype(np.float32))


def make_vectors(path: Path, gen, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, gen.dim))
    for start in range(0, n, CHUNK):
        out[start:start + CHUNK] = gen.sample(min(CHUNK, n - start), rng)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def latency(index, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """p50, p99 in ms over single-query calls; also the ids found."""
    index.search(queries[:3], k)  # warm up (page cache, threads)
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), np.stack(found)


def bench_size(n: int, args, folder: Path) -> dict:
    import faiss

    gen = (Clustered if args.data == "clustered" else Uniform)(n, args.dim, args.seed, args.spread)
    t = time.perf_counter()
    vectors = make_vectors(folder / "embeddings.npy", gen, n, args.seed)
    gen_s = time.perf_counter() - t
    queries = gen.sample(args.queries, np.random.default_rng(args.seed + 2))
    k = min(args.k, n)
    t = time.perf_counter()
    _, truth = faiss.knn(queries, np.asarray(vectors), k, metric=faiss.METRIC_INNER_PRODUCT)
    truth_s = time.perf_counter() - t
    data = args.data if args.spread == 1.0 or args.data == "uniform" else f"clustered x{args.spread:g}"
    row = {"n": n, "dim": args.dim, "data": data, "k": k, "queries": args.queries,
           "generate_s": round(gen_s, 1), "exact_batch_s": round(truth_s, 2)}

    exact = load_index("flat", folder, vectors, {})
    sample = queries[: args.exact_queries]
    p50, p99, found = latency(exact, sample, k)
    row["flat"] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                   "recall": round(recall(found, truth[: len(sample)]), 4),
                   "queries": len(sample)}
    print(f"[{n}] flat: {row['flat']}", flush=True)

    kinds = ["ivf"] + (["hnsw"] if args.hnsw and n <= args.hnsw_max else [])
    for kind in kinds:
        params = json.loads(args.ivf_params) if kind == "ivf" and args.ivf_params else {}
        t = time.perf_counter()
        built = build_index(kind, vectors, folder, **params)
        build_s = time.perf_counter() - t
        index_mb = (folder / "index.faiss").stat().st_size / 2**20
        built_params = dict(built.params)
        del built  # search the index as a pool does: reopened from its file with mmap
        index = load_index(kind, folder, vectors, built_params)
        p50, p99, found = latency(index, queries, k)
        res = {"build_s": round(build_s, 1), "params": index.params, "index_mb": round(index_mb),
               "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "recall": round(recall(found, truth), 4)}
        if kind == "ivf":
            res["sweep"] = sweep(index, queries, truth, k)
        row[kind] = res
        print(f"[{n}] {kind}: {res}", flush=True)
        (folder / "index.faiss").unlink()
    return row


def sweep(index, queries, truth, k) -> list[dict]:
    """Recall and p50 at other nprobe values around the tuned one (the trade-off)."""
    tuned = index.params["nprobe"]
    out = []
    for nprobe in sorted({max(1, tuned // 2), tuned, tuned * 2, tuned * 4} & set(range(1, index.params["nlist"] + 1))):
        index.params["nprobe"] = nprobe
        p50, _, found = latency(index, queries[: min(len(queries), 100)], k)
        out.append({"nprobe": nprobe, "p50_ms": round(p50, 2),
                    "recall": round(recall(found, truth[: len(found)]), 4)})
    index.params["nprobe"] = tuned
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200, help="held-out queries for latency/recall")
    ap.add_argument("--exact-queries", type=int, default=50, help="queries timed on exact search")
    ap.add_argument("--data", choices=("clustered", "uniform"), default="clustered")
    ap.add_argument("--spread", type=float, default=1.0,
                    help="clustered: scale both noise levels (2 = looser clusters, harder for IVF)")
    ap.add_argument("--hnsw", action="store_true", help="also build HNSW (slow at 1M on 2 cores)")
    ap.add_argument("--hnsw-max", type=int, default=200_000, help="largest size HNSW is built for")
    ap.add_argument("--ivf-params", default=None, help='JSON, e.g. \'{"nlist": 2048}\'')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--tmp", type=Path, default=None, help="where the vectors go (needs N*dim*8 bytes)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 vectors of dim 64, k=50, few queries")
    args = ap.parse_args()
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "sizes": [5000], "dim": 64, "k": 50, "queries": 10,
                                     "exact_queries": 5})

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, {platform.processor() or platform.machine()}", flush=True)
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            rows.append(bench_size(n, args, Path(tmp)))
    print("\n" + table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| N | data | index | params | build s | p50 ms | p99 ms | recall@k |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['data']} | flat (exact) | - | 0 | {r['flat']['p50_ms']} | "
                     f"{r['flat']['p99_ms']} | {r['flat']['recall']} |")
        for kind in ("ivf", "hnsw"):
            if kind in r:
                x = r[kind]
                params = ", ".join(f"{k}={v}" for k, v in x["params"].items()
                                   if k in ("nlist", "nprobe", "m", "ef_search", "tuned_recall"))
                lines.append(f"| {r['n']:,} | {r['data']} | {kind} | {params} | {x['build_s']} | "
                             f"{x['p50_ms']} | {x['p99_ms']} | {x['recall']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
