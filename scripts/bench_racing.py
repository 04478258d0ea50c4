"""Does racing (bat_app/albat/racing.py) pick what full scoring picks? The table in docs/albat.md.

    python scripts/bench_racing.py checkered_square striped_heart      # ~5 min per subject, 2 cores
    python scripts/bench_racing.py checkered_square striped_heart --k 400 --shortlist 5   # docs/albat.md
    python scripts/bench_racing.py --quick                             # code path: K = 40, R = 8

For each subject, the example job's ALBAT settings (its photos, the shapes recipe, K, m, R):
the full (R, K) per-draw matrix of the loss reduction for score seeds 0 and 1, then racing,
full scoring and R/2-draw scoring replayed on the same numbers. Printed: the Jaccard overlap of
the selected sets (score > 0, top m; no de-duplication, the same for every scheme) between
racing and full scoring with the same seed, and between the two seeds for each scheme. With
``--shortlist F``, also a shorter CLIP shortlist K' = F x m (the first K' candidates, which are
exactly the K' nearest): raced on its columns of the same matrices, against the full shortlist
with the same seed, and between the seeds. Matrices are kept in --work (reused when present).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np


def matrices(subject: str, work: Path, quick: bool = False, k: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(seed-0 matrix, seed-1 matrix, m) for the subject's example job, with ``k`` candidates
    instead of the recipe's when given (cached in ``work``)."""
    cached = work / f"{subject}{'' if k is None else f'-k{k}'}.npz"
    if cached.is_file():
        data = np.load(cached)
        return data["s0"], data["s1"], int(data["m"])
    from bat_app.albat.retrieval import nearest_items, user_embeddings
    from bat_app.albat.score import loss_matrix
    from bat_app.albat.surrogate import train_surrogate
    from bat_app.compare.config import CompareConfig
    from bat_app.compare.pools import ensure_shapes_pool
    from bat_app.images import load_user_images
    from bat_app.models import load_components
    from bat_app.paths import assets_dir
    from bat_app.pool import Pool, embedder_for_pool
    from bat_app.shapes.subjects import get_subject
    from bat_app.train.data import Example

    photos = sorted((assets_dir() / "subjects" / subject).glob("*.png"))
    config = CompareConfig.from_dict({"token": "sks", "class_noun": get_subject(subject).class_noun,
                                      "model": "shapes", "pool": "shapes", "methods": ["albat"]})
    train, params = config.train_config(len(photos)), config.selection_params(len(photos))
    if k is not None:
        params = replace(params, k=k)
    if quick:  # the code path only: a small pool, shortlist, draw count and surrogate
        from bat_app.compare import pools

        pools.SHAPES_POOL_SIZE = 1000
        params = replace(params, k=40, m=5, draws=8, surrogate_steps=5)
    comps = load_components("shapes")
    images = load_user_images(photos, resolution=comps.spec.resolution).images
    pool = Pool.open(ensure_shapes_pool())
    candidates, _ = nearest_items(pool, user_embeddings(embedder_for_pool(pool), images), params.k)
    steps = params.surrogate_steps_for(train.steps)
    surrogate = train_surrogate(comps, images, train, steps, work / "cache")
    examples = [Example(pool.load_image(i), pool.item(i).caption) for i in candidates]
    out = {}
    for seed in (0, 1):
        out[f"s{seed}"], _ = loss_matrix(comps, examples, comps.spec.resolution, surrogate, train,
                                         draws=params.draws, seed=seed, batch_size=params.batch_size,
                                         cache_root=work / "cache")
    np.savez(cached, m=params.m, **out)
    return out["s0"], out["s1"], params.m


def picked(values: np.ndarray, m: int) -> list[int]:
    order = np.argsort(-values, kind="stable")
    return [int(i) for i in order if values[i] > 0][:m]


def replay_race(full: np.ndarray, m: int) -> np.ndarray:
    from bat_app.albat.racing import race
    from bat_app.albat.score import aggregate

    matrix = race(lambda rows, idx: full[np.ix_(rows, idx)], full.shape[1], full.shape[0], m,
                  lambda x: aggregate(x, False))
    return aggregate(matrix, False)


def main() -> None:
    from bat_app.albat.stability import jaccard

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subjects", nargs="*", default=["checkered_square"])
    parser.add_argument("--quick", action="store_true", help="smoke test of the code path; not results")
    parser.add_argument("--work", type=Path, default=Path("bench-racing"))
    parser.add_argument("--k", type=int, default=None, help="candidates scored (default: the recipe's k)")
    parser.add_argument("--shortlist", type=float, default=None,
                        help="also a shortlist of K' = F x m candidates (the recipe's is k_per_m x m)")
    args = parser.parse_args()
    if args.quick:
        args.work = args.work / "quick"
    args.work.mkdir(parents=True, exist_ok=True)
    short = f" | K' = {args.shortlist:g}m vs K, racing, same seed (0 / 1) | K' = {args.shortlist:g}m: seeds 0 vs 1" \
        if args.shortlist else ""
    print(f"| subject | racing vs full, same seed (0 / 1) | seeds 0 vs 1: full | racing | R/2 draws{short} |")
    print("|---|---|---:|---:|---:|" + ("---|---:|" if args.shortlist else ""))
    for subject in args.subjects:
        a, b, m = matrices(subject, args.work, args.quick, args.k)
        full = [picked(x.mean(axis=0), m) for x in (a, b)]
        raced = [picked(replay_race(x, m), m) for x in (a, b)]
        half = [picked(x[::2].mean(axis=0), m) for x in (a, b)]  # every other stratum: R/2 stratified draws
        row = (f"| {subject} | {jaccard(raced[0], full[0]):.2f} / {jaccard(raced[1], full[1]):.2f} "
               f"| {jaccard(*full):.2f} | {jaccard(*raced):.2f} | {jaccard(*half):.2f} |")
        if args.shortlist:
            k = min(a.shape[1], max(m, round(args.shortlist * m)))
            shorter = [picked(replay_race(x[:, :k], m), m) for x in (a, b)]  # candidate i keeps its index
            row += (f" {jaccard(shorter[0], raced[0]):.2f} / {jaccard(shorter[1], raced[1]):.2f} "
                    f"| {jaccard(*shorter):.2f} |")
        print(row, flush=True)


if __name__ == "__main__":
    main()
