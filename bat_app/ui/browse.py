"""The Pools tab: look inside a backbone pool before training on it.

    sheet, rows = browse_pool(settings, "shapes", "a red star on a blue background", k=20)

Only the pools this server offers (by name, as in the Train tab's menu) can be searched; the
result is a contact sheet rendered here (no pool file is served) and one row per hit. Items
the pool's content filters flag are left out (docs/pool.md).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..limits import Limits, check_range, check_text
from .settings import AppSettings

K_MAX = 60
_LOCK = threading.Lock()  # one search at a time: CLIP on a shared CPU is the cost


def _offers(settings: AppSettings) -> dict:
    """name -> source of every existing pool offered for any model this server offers (not
    'none', not 'generated': neither is a pool to look into)."""
    from .handlers import GENERATED, NO_POOL, model_offers, pool_offers

    found = {}
    for model in model_offers(settings):
        for offer in pool_offers(settings, model.name):
            if offer.name not in (NO_POOL, GENERATED):
                found.setdefault(offer.name, offer.source)
    return found


def browsable_pools(settings: AppSettings) -> list[str]:
    return list(_offers(settings))


def pool_folder(settings: AppSettings, name: str, progress=None) -> Path:
    """The folder behind an offered pool name (the shapes pool is built on first use)."""
    from ..compare.pools import ensure_shapes_pool

    source = _offers(settings).get(name)
    if source is not None:
        return ensure_shapes_pool(progress=progress) if source == "shapes" else Path(source)
    raise InputError(f"Pool {name!r} is not offered by this server: choose one of "
                     f"{', '.join(browsable_pools(settings)) or 'none (no pool is configured)'}.")


@lru_cache(maxsize=2)
def _open(folder: str, clip_model: str | None):
    """The pool and its own CLIP (a pool built with a local CLIP folder needs the operator's
    BAT_CLIP_MODEL: its manifest records the model's hash, not where it lives)."""
    from ..errors import PoolError
    from ..pool import Pool, embedder_for_pool

    pool = Pool.open(folder)
    try:
        return pool, embedder_for_pool(pool)
    except PoolError:
        if clip_model is None:
            raise
        return pool, embedder_for_pool(pool, clip_model)


def browse_pool(settings: AppSettings, name: str, query: str, k: int | float = 20, progress=None
                ) -> tuple[Image.Image, list[list]]:
    """(contact sheet, rows of [rank, similarity, caption, flags]) for ``query`` in pool ``name``."""
    from ..pool.search import contact_sheet, search

    query = (query or "").strip()
    if not query:
        raise InputError("The search text is empty: describe what to look for, e.g. 'a red star'.")
    check_text("The search text", query, Limits.from_env().prompt_chars, "BAT_LIMIT_PROMPT_CHARS")
    check_range("results", k, 1, K_MAX)
    k = int(k)
    folder = pool_folder(settings, name, progress)
    with _LOCK:
        pool, embedder = _open(str(folder), settings.clip_model)
        hits = search(pool, embedder, query, k=k)
        sheet = contact_sheet(pool, hits, columns=min(6, max(1, len(hits))), cell=128)
    rows = [[h.rank, round(h.score, 3), h.caption, ", ".join(h.flags)] for h in hits]
    return sheet, rows
