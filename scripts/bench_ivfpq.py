"""Benchmark an IVF-PQ index (the kind autofaiss builds for LAION-scale pools) on synthetic
768-d unit vectors: memory, single-query latency and recall@1000 against exact search.

    nice -n 10 .venv/bin/python scripts/bench_ivfpq.py --n 1000000          # ~3-4 min on 2 cores
    .venv/bin/python scripts/bench_ivfpq.py --n 10000000 --dir /big/disk   # 31 GB of vectors
    .venv/bin/python scripts/bench_ivfpq.py --quick                         # smoke run (seconds)

What it does: draws N clustered unit vectors (scripts/bench_faiss.py's two-level mixture,
close to CLIP embeddings) into a memory-mapped .npy, trains the ``--factory`` index on a
sample, adds every vector, writes the index and reopens it with faiss' mmap flag, as a pool
that adopts an autofaiss index does. Queries are fresh draws (not in the index). For each
nprobe it measures p50/p99 latency of single-query searches for k results and recall@k
against faiss brute force over the same vectors; with ``--rerank R`` also the variant that
takes R*k PQ candidates and re-scores them exactly from the memory-mapped vectors (what a
pool can do, since it keeps embeddings.npy).

Memory: the index file size (what a search process maps; PQ codes + ids + centroids) next to
the raw float32 vectors it replaces. Prints a table and, with ``--json``, writes the figures.
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
from bench_faiss import Clustered, make_vectors  # the same synthetic data; run as a script, scripts/ is on the path

from bat_app.pool.index import recall


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="vectors in the index (default 1M)")
    p.add_argument("--dim", type=int, default=768, help="width (default 768: ViT-L/14)")
    p.add_argument("--factory", default=None,
                   help="faiss index_factory string (default IVF{sqrt(N)/4 rounded to 2^k},PQ{dim/4}x4fs)")
    p.add_argument("--train", type=int, default=None, help="training sample (default 40 per list, >= 20k)")
    p.add_argument("--nprobe", default="4,16,64", help="comma-separated nprobe values")
    p.add_argument("--k", type=int, default=1000, help="results per query (default 1000)")
    p.add_argument("--queries", type=int, default=100, help="single-vector queries (default 100)")
    p.add_argument("--rerank", type=int, default=4, help="also re-rank R*k candidates exactly (0: off)")
    p.add_argument("--threads", type=int, default=1,
                   help="faiss threads (default 1: OpenMP threads spin badly on busy shared cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None,
                   help="where the vectors/index go, kept (default a temp dir, deleted); a "
                        "vectors.npy of the same size there is reused")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--quick", action="store_true", help="10k x 768, 10 queries, k=100: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.k, args.nprobe = 10_000, 10, 100, "4,16"
    if args.n < 1000 or args.k < 1 or args.queries < 1 or args.dim % 8:
        p.error(f"need --n >= 1000, --k >= 1, --queries >= 1 and --dim divisible by 8 "
                f"(got n={args.n}, k={args.k}, queries={args.queries}, dim={args.dim})")
    return args


def default_factory(n: int, dim: int) -> str:
    # 4-bit fast-scan PQ: 8-bit PQ (autofaiss' default) trained >5 min on 20k vectors on this
    # machine's shared cores, while x4fs trains in seconds and scans with SIMD. dim/4
    # sub-quantizers of 4 bits = dim/8 bytes per vector. Few lists: assigning 1M vectors to
    # them is the build's main cost on 2 cores.
    nlist = 2 ** int(round(np.log2(max(16, np.sqrt(n) / 4))))
    return f"IVF{nlist},PQ{dim // 4}x4fs"


def single_queries(index, queries, k, vectors=None, rerank=0):
    """Per-query latency (ms) and the ids found, one search call per query."""
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        if rerank:
            _, cand = index.search(q[None], rerank * k)
            cand = np.sort(cand[0][cand[0] >= 0])          # sorted ids: sequential mmap reads
            exact = np.asarray(vectors[cand], np.float32) @ q
            ids = cand[np.argsort(-exact)[:k]]
        else:
            _, ids = index.search(q[None], k)
            ids = ids[0]
        times.append((time.perf_counter() - t) * 1000)
        found.append(np.pad(ids, (0, k - len(ids)), constant_values=-1))
    return times, np.stack(found)


def run(args) -> dict:
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-ivfpq-"))
    folder.mkdir(parents=True, exist_ok=True)
    factory = args.factory or default_factory(args.n, args.dim)
    gen = Clustered(args.n, args.dim, args.seed)
    t0 = time.perf_counter()
    existing = folder / "vectors.npy"
    if existing.is_file() and np.load(existing, mmap_mode="r").shape == (args.n, args.dim):
        vectors = np.load(existing, mmap_mode="r")  # same seed, same draw: a rerun skips it
    else:
        vectors = make_vectors(existing, gen, args.n, args.seed)
    gen_s = time.perf_counter() - t0
    queries = gen.sample(args.queries, np.random.default_rng(args.seed + 99))

    index = faiss.index_factory(args.dim, factory, faiss.METRIC_INNER_PRODUCT)
    nlist = faiss.extract_index_ivf(index).nlist
    n_train = min(args.n, args.train or max(20_000, 40 * nlist))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(vectors[np.sort(rng.choice(args.n, n_train, replace=False))]))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, args.n, 100_000):
        index.add(np.ascontiguousarray(vectors[start:start + 100_000]))
    add_s = time.perf_counter() - t0
    path = folder / "knn.index"
    faiss.write_index(index, str(path))
    del index
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)

    t0 = time.perf_counter()
    _, truth = faiss.knn(queries, np.asarray(vectors), args.k, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t0

    ivf = faiss.extract_index_ivf(index)
    rows = []
    for nprobe in [int(x) for x in args.nprobe.split(",")]:
        ivf.nprobe = min(nprobe, nlist)
        for rerank in ([0, args.rerank] if args.rerank > 1 else [0]):
            single_queries(index, queries[:3], args.k, vectors, rerank)  # warm the page cache
            times, found = single_queries(index, queries, args.k, vectors, rerank)
            rows.append({"nprobe": ivf.nprobe, "rerank": rerank,
                         "p50_ms": round(float(np.percentile(times, 50)), 2),
                         "p99_ms": round(float(np.percentile(times, 99)), 2),
                         "recall_at_k": round(recall(found, truth), 4)})
    load = os.getloadavg()
    return {"n": args.n, "dim": args.dim, "factory": factory, "nlist": nlist, "train_vectors": n_train,
            "k": args.k, "queries": args.queries, "index_bytes": path.stat().st_size,
            "index_bytes_per_vector": round(path.stat().st_size / args.n, 1),
            "raw_float32_bytes": args.n * args.dim * 4,
            "generate_s": round(gen_s, 1), "train_s": round(train_s, 1), "add_s": round(add_s, 1),
            "exact_ms_per_query": round(1000 * exact_s / args.queries, 1),
            "rows": rows, "threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count(),
            "loadavg_after": [round(x, 1) for x in load], "machine": platform.platform(),
            "faiss": faiss.__version__, "folder": str(folder)}


def table(r: dict) -> str:
    mb = r["index_bytes"] / 2**20
    lines = [f"IVF-PQ benchmark: N={r['n']:,} x {r['dim']}-d clustered unit vectors, {r['factory']} "
             f"(train {r['train_vectors']:,} vectors: {r['train_s']} s; add: {r['add_s']} s)",
             f"index file {mb:,.1f} MiB ({r['index_bytes_per_vector']} B/vector) vs "
             f"{r['raw_float32_bytes'] / 2**20:,.0f} MiB of float32 vectors; exact search "
             f"{r['exact_ms_per_query']} ms/query (batched)",
             f"{r['queries']} single-vector queries, k={r['k']}, {r['threads']} faiss threads on "
             f"{r['cpus']} CPUs, load average after {r['loadavg_after']}",
             "", "| nprobe | exact re-rank | p50 ms | p99 ms | recall@k |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        rr = f"{row['rerank']} x k candidates" if row["rerank"] else "-"
        lines.append(f"| {row['nprobe']} | {rr} | {row['p50_ms']} | {row['p99_ms']} | {row['recall_at_k']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.dir is None:  # a temp dir of our own: the vectors are GBs at full size
        import shutil

        shutil.rmtree(result["folder"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
