"""A finished pool: items, their embeddings (memory-mapped) and the vector index.

    pool = Pool.open("pools/laion", embedder)     # refuses an embedder of another model
    scores, ids = pool.search(embedder.encode_images(photos), k=1000)
    pool.item(ids[0, 0]).caption, pool.load_image(ids[0, 0])
    pool.random_ids(100, seed=0)                  # the `random` selector's draw
    print(pool.describe())                        # what `pool info` prints

Content filters (bat_app.pool.safety): items flagged unsafe or watermarked are left out of
``search``, ``random_ids`` and ``allowed_ids`` while their filter is on (default: all; set
with ``Pool.open(..., filters=...)``, ``pool.set_filters(...)`` or BAT_POOL_FILTERS).
Selectors that go through these methods never see flagged items; ``item`` and
``load_image`` still open any id (a flagged one says so in ``PoolItem.flags``).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bat_app.pool import store
from bat_app.errors import PoolError
from bat_app.pool.index import VectorIndex, load_index
from bat_app.pool.safety import FlagTable, filters_from_env, parse_filters

FORMAT = "bat-pool"
VERSION = 1


@dataclass
class PoolItem:
    id: int
    caption: str
    path: str | None        # a local image file (referenced, not stored), or None
    source: str             # where it came from: "00001.tar:000010023", "part-0.parquet#17", "a/b.jpg"
    url: str | None = None  # the original url, when the source had one
    flags: list[str] = field(default_factory=list)  # content flags: "unsafe", "watermark"


class Pool:
    """Open with :meth:`Pool.open`; build with :func:`bat_app.pool.build_pool`."""

    def __init__(self, folder: Path, manifest: dict, vectors: np.ndarray, index: VectorIndex,
                 filters=None):
        self.folder = folder
        self.manifest = manifest
        self._vectors = vectors
        self.index = index
        self._items = store.ItemTable(folder)
        self._images_fd: int | None = None
        self.flag_table = FlagTable(folder, manifest)
        self.set_filters(filters_from_env() if filters is None else filters)

    @classmethod
    def open(cls, folder: Path | str, embedder=None, filters=None) -> "Pool":
        """Open the pool in ``folder``; with ``embedder``, check it is the pool's model.

        ``filters``: content flags whose items are left out ("unsafe", "watermark"; a
        comma-separated string, an iterable, or "none"); default BAT_POOL_FILTERS, else all.
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        if embedder is not None:
            check_model(manifest, embedder.model_id, folder)
        vectors = np.load(folder / store.EMBEDDINGS, mmap_mode="r")
        if vectors.shape != (manifest["size"], manifest["dim"]):
            raise PoolError(f"{folder / store.EMBEDDINGS} has shape {vectors.shape}, the manifest "
                            f"says ({manifest['size']}, {manifest['dim']}): the pool is damaged. "
                            "Build it again.")
        index = load_index(manifest["index"]["type"], folder, vectors, manifest["index"]["params"])
        return cls(folder, manifest, vectors, index, filters)

    # --- vectors -------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.manifest["model_id"]

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    def __len__(self) -> int:
        return self.manifest["size"]

    def embeddings(self) -> np.ndarray:
        """(N, dim) float32, L2-normalized, memory-mapped read-only."""
        return self._vectors

    def check_embedder(self, embedder) -> None:
        """PoolError unless ``embedder`` is the model this pool was built with."""
        check_model(self.manifest, embedder.model_id, self.folder)

    def search(self, queries: np.ndarray, k: int, include_flagged: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Inner-product search: (scores, ids), each (n_queries, k), best first. When fewer
        than k are found (k > N, or an approximate index) ids are -1 and scores -inf there.
        A single (dim,) query is taken as one row. Items the active filters flag are left
        out unless ``include_flagged``."""
        return self.index.search(queries, k, None if include_flagged else self._blocked)

    # --- content filters -----------------------------------------------------------------

    @property
    def filters(self) -> tuple[str, ...]:
        """The content flags whose items are left out, e.g. ("unsafe", "watermark")."""
        return self._filters

    def set_filters(self, filters) -> None:
        """Which flags exclude items: an iterable of names, "unsafe,watermark" or "none"."""
        self._filters = parse_filters(filters)
        self._blocked = self.flag_table.blocked(self._filters)

    def allowed_ids(self) -> np.ndarray:
        """int64 ids of the items the active filters let through (all ids when none flag)."""
        if self._blocked is None:
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(~self._blocked).astype(np.int64)

    def is_allowed(self, id: int) -> bool:
        return self._blocked is None or not bool(self._blocked[self._check_id(id)])

    def flags_of(self, id: int) -> list[str]:
        """The content flags of an item (whether or not their filter is on)."""
        return self.flag_table.flags_of(self._check_id(id))

    def safety_summary(self) -> dict:
        """What was checked at build and what is filtered now (for reports and the UI)."""
        section = self.manifest.get("safety")
        return {"checks": section["checks"] if section else None,
                "clip": section["clip"] if section else None,
                "filters_on": list(self._filters),
                "hidden_now": 0 if self._blocked is None else int(np.count_nonzero(self._blocked))}

    # --- items ---------------------------------------------------------------------------

    def item(self, id: int) -> PoolItem:
        i = self._check_id(id)
        row = self._items.get(i)
        path = row.get("path")
        if path is not None and not Path(path).is_absolute():
            path = str(self.folder / path)
        return PoolItem(id=i, caption=row["caption"], path=path, source=row["source"], url=row.get("url"),
                        flags=self.flag_table.flags_of(i))

    def load_image(self, id: int) -> Image.Image:
        """The item's image as RGB: stored bytes, else its local file."""
        i = self._check_id(id)
        row = self._items.get(i)
        if "blob" in row:
            offset, length = row["blob"]
            data = os.pread(self._images(), length, offset)
            name = f"item {i} ({row['source']}) in {self.folder / store.IMAGES}"
        elif "path" in row:
            name = f"item {i}: {row['path']}"
            try:
                data = Path(row["path"]).read_bytes()
            except OSError as exc:
                raise PoolError(f"The image of {name} cannot be read ({exc}). The pool references "
                                "it instead of storing it: restore the file, or rebuild the pool "
                                "with images copied in.") from exc
        else:
            where = f" from {row['url']}" if row.get("url") else ""
            raise PoolError(f"Item {i} ({row['source']}) has no local image: this pool was built "
                            f"from embeddings only (images: {self.manifest.get('images')}). The "
                            f"image must be downloaded{where} first, e.g. with img2dataset, then "
                            "the pool built from the downloaded shards.")
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except OSError as exc:
            raise PoolError(f"The image of {name} no longer decodes ({exc}): the pool is "
                            "damaged or the file changed. Build the pool again.") from exc

    def random_ids(self, n: int, seed: int) -> list[int]:
        """n distinct allowed ids drawn uniformly (numpy default_rng(seed)): same seed, same
        draw. Flagged items (active filters) are never drawn."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise PoolError(f"n must be a non-negative integer, got {n!r}.")
        rng = np.random.default_rng(seed)
        if self._blocked is None:
            if n > len(self):
                raise PoolError(f"Cannot draw {n} distinct items from a pool of {len(self)}; ask "
                                f"for at most {len(self)}, or build a bigger pool.")
            return [int(i) for i in rng.choice(len(self), size=int(n), replace=False)]
        allowed = self.allowed_ids()
        if n > len(allowed):
            raise PoolError(f"Cannot draw {n} distinct items: {len(allowed)} of the pool's "
                            f"{len(self)} pass the content filters ({', '.join(self._filters)}). "
                            f"Ask for at most {len(allowed)}, or build a bigger pool.")
        return [int(i) for i in allowed[rng.choice(len(allowed), size=int(n), replace=False)]]

    def describe(self) -> str:
        """Human-readable summary (``pool info``)."""
        m = self.manifest
        index = m["index"]
        params = ", ".join(f"{k}={v}" for k, v in index["params"].items())
        sources = "; ".join(f"{s['kind']} {s['path']} ({s.get('records', '?')} records)"
                            for s in m["sources"])
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(m["skipped"]["by_reason"].items())) or "none"
        return "\n".join([
            f"pool:     {self.folder}",
            f"size:     {len(self)} items",
            f"model:    {m['model_id']} (dim {m['dim']})",
            f"index:    {index['type']} ({'exact' if index['exact'] else 'approximate'}"
            f"{', ' + params if params else ''})",
            f"images:   {m['images']}" + ("" if m["has_images"] else " (download them to load images)"),
            f"sources:  {sources}",
            f"skipped:  {m['skipped']['total']} ({skipped})",
            f"safety:   {self.flag_table.describe(self._filters)}",
            f"created:  {m['created']} (build {m['build_seconds']} s)",
        ])

    def close(self) -> None:
        self._items.close()
        if self._images_fd is not None:
            os.close(self._images_fd)
            self._images_fd = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pool({str(self.folder)!r}, {len(self)} items, {self.model_id!r}, {self.index.kind})"

    def _check_id(self, id) -> int:
        if not isinstance(id, (int, np.integer)) or not 0 <= id < len(self):
            raise PoolError(f"Pool item id {id!r} is out of range: this pool has ids 0..{len(self) - 1}.")
        return int(id)

    def _images(self) -> int:
        if self._images_fd is None:
            self._images_fd = os.open(self.folder / store.IMAGES, os.O_RDONLY)
        return self._images_fd


def check_model(manifest: dict, model_id: str, folder: Path) -> None:
    if manifest["model_id"] != model_id:
        raise PoolError(f"The pool {folder} was built with {manifest['model_id']!r}, but the "
                        f"query embedder is {model_id!r}: their vectors are not comparable. Query "
                        "it with the model it was built with, or build a pool with this model.")


def _read_manifest(folder: Path) -> dict:
    path = folder / store.MANIFEST
    if not path.is_file():
        if (folder / store.STATE).is_file():
            raise PoolError(f"The pool build in {folder} is unfinished: run `python -m bat_app pool "
                            "build` again with the same source and model to finish it.")
        raise PoolError(f"{folder} is not a pool (no {store.MANIFEST}). Build one with "
                        "`python -m bat_app pool build SOURCE --out FOLDER`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PoolError(f"{path} is unreadable ({exc}); build the pool again.") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise PoolError(f"{path} is format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}; this BAT Studio reads {FORMAT!r} version "
                        f"{VERSION}. Build the pool again with this version.")
    return manifest
