"""Selection then training, the way the CLI and the job pipeline run them.

    sel = run_selection("albat", components, images, config, pool_dir="pools/shapes", out_dir="runs/x/selection")
    result = train_with_selection(components, images, config, sel, "runs/x")
"""

from __future__ import annotations

from pathlib import Path

from ..images.grid import image_grid
from . import SelectionContext, SelectionParams, needs_pool, select
from .selection import Selection


def open_pool(pool_dir: str | Path | None, clip_model: str | None = None, clip_pretrained: str | None = None):
    """(pool, embedder) for a pool folder; the embedder is the model the pool was built with
    (or the one given, which must be that same model)."""
    if pool_dir is None:
        return None, None
    from ..pool import Pool, embedder_for_pool

    pool = Pool.open(pool_dir)
    return pool, embedder_for_pool(pool, clip_model, clip_pretrained)


def run_selection(method: str, components, images, config, *, pool_dir=None, pool=None, embedder=None,
                  params: SelectionParams | None = None, out_dir: str | Path | None = None,
                  cache_root=None, progress=None, cancel=None, helper=None) -> Selection:
    if pool is None and pool_dir is not None and needs_pool(method):
        pool, embedder = open_pool(pool_dir)
    ctx = SelectionContext(components, images, config, pool, embedder, params or SelectionParams(seed=config.seed),
                           cache_root=cache_root, progress=progress, cancel=cancel, helper=helper)
    selection = select(method, ctx)
    selection.pool = pool
    if out_dir is not None:
        selection.save(Path(out_dir))
        if selection.rows:
            contact_sheet(selection, pool).save(Path(out_dir) / "contact_sheet.png")
    return selection


def contact_sheet(selection: Selection, pool, limit: int = 64, cell: int = 96):
    """The selected items with their scores, best first."""
    rows = selection.rows[:limit]
    images = Selection(selection.method, rows, pool=pool).examples()
    labels = [f"{r.score:.3g} {r.caption}" if r.score is not None else r.caption for r in rows]
    return image_grid([e.image for e in images], columns=min(8, max(1, len(rows))), cell=cell, labels=labels)


def train_with_selection(components, images, config, selection: Selection, out_dir, **train_kwargs):
    """Train on the user images + the selected items (own captions, weight config.aug_weight)."""
    from ..train import train_lora

    augment = selection.examples()
    return train_lora(components, images, config, out_dir, augment=augment, **train_kwargs)
