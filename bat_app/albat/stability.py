"""How much ALBAT's ranking depends on the score seed: rank correlation and top-m overlap.

    a, _ = loss_matrix(..., draws=16, seed=0)        # (16, N) per-draw loss reductions
    b, _ = loss_matrix(..., draws=16, seed=1)
    rows = stability_curve(a, b, [2, 4, 8, 16], m=30)  # one row per R: rank_corr, jaccard

Scoring twice with R draws each costs 2R draws per point of the curve; this module gets every
R that divides R_max from one R_max-draw matrix per seed. R_max stratified draws have one
timestep in each of R_max strata; picking, in each of R coarse strata, one of its R_max / R
fine strata at random gives a timestep uniform over the coarse stratum, i.e. exactly the
distribution of an R-draw stratified score, with its own independent noises. Two seeds give
two independent such scores; ``repeats`` random picks average out which fine strata were
taken (at R = R_max there is a single pick).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .score import aggregate


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of the ranks; ties are broken by position)."""
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def top_m(values: np.ndarray, m: int) -> set[int]:
    """Indices of the m largest values."""
    return set(np.argsort(-np.asarray(values), kind="stable")[:m].tolist())


def jaccard(a: Sequence, b: Sequence) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a or b else 1.0


def substrata_pick(r_max: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of an R-draw stratified subset of R_max stratified draws (R divides R_max)."""
    if r_max % r:
        raise ValueError(f"R = {r} does not divide R_max = {r_max}.")
    group = r_max // r
    return np.arange(r) * group + rng.integers(0, group, r)


def stability_curve(a: np.ndarray, b: np.ndarray, draws: Sequence[int], m: int, *, standardise: bool = True,
                    repeats: int = 20, seed: int = 0) -> list[dict]:
    """For each R: mean (and min, max) over ``repeats`` picks of the rank correlation and the
    top-m Jaccard between the two seeds' R-draw scores. ``a`` and ``b`` are (R_max, N)
    loss_matrix outputs with different seeds."""
    rng = np.random.default_rng(seed)
    r_max = a.shape[0]
    rows = []
    for r in draws:
        n = 1 if r == r_max else repeats
        corr, jac = [], []
        for _ in range(n):
            sa = aggregate(a[substrata_pick(r_max, r, rng)], standardise)
            sb = aggregate(b[substrata_pick(r_max, r, rng)], standardise)
            corr.append(rank_correlation(sa, sb))
            jac.append(jaccard(top_m(sa, m), top_m(sb, m)))
        rows.append({"draws": r, "standardise": standardise, "picks": n, "rank_corr": float(np.mean(corr)),
                     "rank_corr_range": [float(min(corr)), float(max(corr))], "jaccard": float(np.mean(jac)),
                     "jaccard_range": [float(min(jac)), float(max(jac))]})
    return rows


def pair_stability(a: np.ndarray, b: np.ndarray, m: int) -> dict:
    """Rank correlation and top-m Jaccard of two score vectors (e.g. the former scheme's)."""
    return {"rank_corr": rank_correlation(a, b), "jaccard": jaccard(top_m(a, m), top_m(b, m))}
