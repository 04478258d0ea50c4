"""Successive halving for ALBAT's score: spend the draws where the ranking is decided.

ALBAT keeps about the top m of K candidates (K = 8 m in the recipes). A candidate far below
the cut after a few draws stays below it after all of them, so scoring every candidate with
all R draws spends most UNet passes on items that cannot be picked. Instead, in rounds:

    round 1: every candidate,                R/4 draws (one per coarse stratum)    K   x R/4
    round 2: the better half,                R/4 more draws                        K/2 x R/4
    round 3: the better half of those,       the remaining R/2 draws               K/4 x R/2

which is half the passes of K x R. The survivors' scores are exactly the full R-draw score
(the same shared draws, see draws.py); the others keep the mean over the draws they got. A
round never keeps fewer than 2 m candidates, and with anchors (``negative_fraction``) it keeps
that share from the bottom of the ranking, where the anchors come from.

Measured before adopting it (docs/albat.md, "Racing"): on checkered_square (K = 400, m = 50,
R = 16, two score seeds) the selected set was 82% and 96% the same (Jaccard) as full scoring
with the same seed, closer than full scoring with two seeds is to itself (61%), and the two
seeds agreed as well as before (64% against 61%).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def race_rounds(draws: int) -> list[list[int]]:
    """The draw indices scored in each round; a single round of every draw unless R is a
    multiple of 4 and at least 8. Each round's draws are spread evenly over the timestep strata.

    >>> race_rounds(16)
    [[0, 4, 8, 12], [2, 6, 10, 14], [1, 3, 5, 7, 9, 11, 13, 15]]
    >>> race_rounds(6)
    [[0, 1, 2, 3, 4, 5]]
    """
    if draws < 8 or draws % 4:
        return [list(range(draws))]
    return [list(range(0, draws, 4)), list(range(2, draws, 4)), list(range(1, draws, 2))]


def keep_count(alive: int, m: int) -> int:
    """How many of ``alive`` candidates go on to the next round: half, but at least 2 m.

    >>> keep_count(400, 50), keep_count(200, 50), keep_count(120, 50), keep_count(60, 50)
    (200, 100, 100, 60)
    """
    return min(alive, max((alive + 1) // 2, 2 * m))


def survivors(alive: np.ndarray, values: np.ndarray, keep: int, negative_fraction: float = 0.0) -> np.ndarray:
    """The ``keep`` candidates of ``alive`` (indices into ``values``) to score further: the
    highest values, and ``negative_fraction`` of them from the lowest (the anchors' end).

    >>> survivors(np.arange(6), np.array([5., 1., 4., 0., 3., 2.]), 2).tolist()
    [0, 2]
    >>> survivors(np.arange(6), np.array([5., 1., 4., 0., 3., 2.]), 2, negative_fraction=0.5).tolist()
    [0, 3]
    """
    order = alive[np.argsort(-values[alive], kind="stable")]
    low = int(round(keep * negative_fraction))
    chosen = np.concatenate([order[:keep - low], order[len(order) - low:] if low else order[:0]])
    return np.sort(chosen)


def race(evaluate: Callable[[list[int], np.ndarray], np.ndarray], candidates: int, draws: int, m: int,
         aggregate: Callable[[np.ndarray], np.ndarray], negative_fraction: float = 0.0) -> np.ndarray:
    """The (draws, candidates) per-draw matrix, NaN where a candidate was not scored.

    ``evaluate(rows, idx)`` returns the (len(rows), len(idx)) entries for draws ``rows`` and
    candidates ``idx``; ``aggregate(matrix)`` turns a matrix with NaNs into one value per
    candidate (the score's own aggregation), which ranks the candidates between rounds.
    """
    matrix = np.full((draws, candidates), np.nan)
    alive = np.arange(candidates)
    rounds = race_rounds(draws)
    for i, rows in enumerate(rounds):
        matrix[np.ix_(rows, alive)] = evaluate(rows, alive)
        if i + 1 < len(rounds):
            alive = survivors(alive, aggregate(matrix), keep_count(len(alive), m), negative_fraction)
    return matrix


def planned_passes(candidates: int, draws: int, m: int) -> int:
    """(draw, candidate) evaluations a race makes, for progress bars and cost reports.

    >>> planned_passes(400, 16, 50), 400 * 16
    (3200, 6400)
    """
    total, alive = 0, candidates
    rounds = race_rounds(draws)
    for i, rows in enumerate(rounds):
        total += len(rows) * alive
        if i + 1 < len(rounds):
            alive = keep_count(alive, m)
    return total

