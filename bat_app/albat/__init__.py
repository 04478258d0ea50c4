"""Selecting backbone data to train with: ALBAT and its baselines behind one interface.

    sel = select("albat", SelectionContext(components, images, config, pool, embedder))
    result = train_lora(components, images, config, out, augment=sel.examples(pool))
"""

from __future__ import annotations

from ..errors import InputError
from .albat import AlbatSelector
from .baselines import ClipSelector, NoneSelector, PriorSelector, RandomSelector
from .selection import Selection, SelectionContext, SelectionParams, SelectionRow, Selector

SELECTORS: dict[str, type] = {cls.name: cls for cls in
                              (NoneSelector, PriorSelector, RandomSelector, ClipSelector, AlbatSelector)}
METHODS = tuple(SELECTORS)


def get_selector(method: str) -> Selector:
    if method not in SELECTORS:
        raise InputError(f"Unknown selection method {method!r}; choose one of {', '.join(METHODS)}.")
    return SELECTORS[method]()


def select(method: str, ctx: SelectionContext) -> Selection:
    return get_selector(method).select(ctx)


__all__ = ["METHODS", "SELECTORS", "Selection", "SelectionContext", "SelectionParams", "SelectionRow",
           "get_selector", "select"]
