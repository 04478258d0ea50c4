"""Selecting backbone data to train with: ALBAT and its baselines behind one interface.

    sel = select("albat", SelectionContext(components, images, config, pool, embedder))
    result = train_lora(components, images, config, out, augment=sel.examples(pool))

    # the score is a parameter: any object with Score's interface (score.py)
    sel = AlbatSelector(score=get_score("prompt_specific")).select(ctx)
"""

from __future__ import annotations

from ..errors import InputError
from .albat import AlbatSelector
from .baselines import ClipSelector, NoneSelector, PriorSelector, RandomSelector, ShortlistSelector
from .score import SCORES, Score, ScoreResult, get_score
from .selection import Selection, SelectionContext, SelectionParams, SelectionRow, Selector

# The app's methods (UI, jobs, compare). SELECTORS also holds the benchmark-only `shortlist` arm.
METHODS = ("none", "prior", "random", "clip", "albat")
SELECTORS: dict[str, type] = {cls.name: cls for cls in (NoneSelector, PriorSelector, RandomSelector, ClipSelector,
                                                        AlbatSelector, ShortlistSelector)}


def get_selector(method: str) -> Selector:
    if method not in SELECTORS:
        raise InputError(f"Unknown selection method {method!r}; choose one of {', '.join(SELECTORS)}.")
    return SELECTORS[method]()


def needs_pool(method: str) -> bool:
    """Whether ``method`` draws from the backbone's pool (unknown methods: InputError)."""
    if method not in SELECTORS:
        raise InputError(f"Unknown selection method {method!r}; choose one of {', '.join(SELECTORS)}.")
    return SELECTORS[method].needs_pool


def select(method: str, ctx: SelectionContext) -> Selection:
    return get_selector(method).select(ctx)


__all__ = ["METHODS", "SCORES", "SELECTORS", "AlbatSelector", "Score", "ScoreResult", "Selection",
           "SelectionContext", "SelectionParams", "SelectionRow", "get_score", "get_selector", "needs_pool", "select"]
