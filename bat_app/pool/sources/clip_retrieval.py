"""clip-retrieval output, taken as is: embeddings are copied, no model is run.

    embeddings/img_emb/img_emb_0.npy         (n, dim) float16/32, row-aligned with
    embeddings/metadata/metadata_0.parquet   caption, url and/or image_path columns

clip-retrieval does not record which CLIP made the vectors: the build is told (e.g.
``--clip-model ViT-L-14 --clip-pretrained openai``) and the pool records it. Items have no
local image unless the metadata has an ``image_path`` column naming files that exist (they
are referenced, not copied); LAION-style output has urls, which img2dataset can download. Rows whose vector is not finite or is zero are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bat_app.errors import PoolError
from bat_app.pool.safety import SOURCE_COLUMNS, from_metadata
from bat_app.pool.sources import _parquet_io
from bat_app.pool.sources.base import Record, Source

CAPTION_COLUMNS = ("caption", "text", "TEXT")
# Where clip-retrieval's `index` step (autofaiss) leaves its index, relative to the output.
INDEX_FILES = ("image.index", "knn.index", "index/image.index", "index/knn.index",
               "indices/image.index", "indices/knn.index")


def is_clip_retrieval_output(path: Path) -> bool:
    return path.is_dir() and (path / "img_emb").is_dir() and (path / "metadata").is_dir()


class ClipRetrievalSource(Source):
    kind = "clip-retrieval"
    has_embeddings = True

    def __init__(self, path: Path | str):
        super().__init__(path)
        if not is_clip_retrieval_output(self.path):
            raise PoolError(f"{self.path} is not clip-retrieval output: expected the folders "
                            "img_emb/ (img_emb_N.npy) and metadata/ (metadata_N.parquet) in it.")
        emb = {_number(p): p for p in (self.path / "img_emb").glob("img_emb_*.npy")}
        meta = {_number(p): p for p in (self.path / "metadata").glob("metadata_*.parquet")}
        if not emb:
            raise PoolError(f"No img_emb_N.npy files in {self.path / 'img_emb'}: nothing to index.")
        for n in sorted(set(emb) ^ set(meta)):
            have, lack = (emb[n], f"metadata/metadata_{n}.parquet") if n in emb else (meta[n], f"img_emb/img_emb_{n}.npy")
            raise PoolError(f"{have} has no partner {lack} in {self.path}: clip-retrieval writes "
                            "them in pairs; restore the missing file or remove this one.")
        self._pairs = [(emb[n], meta[n]) for n in sorted(emb)]
        self._arrays = [np.load(e, mmap_mode="r") for e, _ in self._pairs]
        self._tables = [_parquet_io.open_parquet(m) for _, m in self._pairs]
        dims = {a.shape[1] if a.ndim == 2 else None for a in self._arrays}
        if len(dims) != 1 or None in dims:
            raise PoolError(f"The img_emb files in {self.path} do not share one (n, dim) shape: "
                            f"{[a.shape for a in self._arrays]}.")
        for (e, m), a, t in zip(self._pairs, self._arrays, self._tables):
            if a.shape[0] != t.num_rows:
                raise PoolError(f"{e.name} has {a.shape[0]} vectors but {m.name} has {t.num_rows} "
                                "rows: the pair is out of step (an interrupted clip-retrieval run?).")
        kinds = self._tables[0].column_kinds
        self.caption_column = next((c for c in CAPTION_COLUMNS if c in kinds), None)
        if self.caption_column is None:
            raise PoolError(f"{self._pairs[0][1]} has no caption column (columns: {', '.join(kinds)}).")
        self.extra_columns = [c for c in ("url", "image_path") if c in kinds]
        self.safety_columns = [c for cols in SOURCE_COLUMNS.values() for c in cols if kinds.get(c) == "number"]
        self.extra_columns += self.safety_columns
        if self.count() == 0:
            raise PoolError(f"The clip-retrieval output in {self.path} has no rows.")

    @property
    def dim(self) -> int:
        return int(self._arrays[0].shape[1])

    def files(self) -> list[Path]:
        return [p for pair in self._pairs for p in pair]

    def count(self) -> int:
        return sum(a.shape[0] for a in self._arrays)

    def records(self, start: int = 0) -> Iterator[Record]:
        first = 0
        columns = [self.caption_column, *self.extra_columns]
        for (_, meta), vectors, table in zip(self._pairs, self._arrays, self._tables):
            n = vectors.shape[0]
            if first + n <= start:
                first += n
                continue
            skip = max(0, start - first)
            for i, row in enumerate(table.rows(columns, start=skip), start=skip):
                yield _record(f"{meta.name}#{i}", row, self.caption_column,
                              np.asarray(vectors[i], dtype=np.float32))
            first += n


    # --- an index built by autofaiss over these embeddings ---------------------------------

    def index_file(self) -> Path | None:
        """autofaiss' index next to the output (clip-retrieval's `index` step), if any."""
        return next((self.path / f for f in INDEX_FILES if (self.path / f).is_file()), None)

    def label_orders(self, keys: list[str]) -> dict[str, np.ndarray | None]:
        """Candidate index label -> pool id maps, for pool items with these source keys
        ("metadata_N.parquet#i"): files in numeric order (this source's) and in name order
        (a plain sorted file listing: img_emb_10 before img_emb_2). None: identity."""
        sizes = {meta.name: a.shape[0] for (_, meta), a in zip(self._pairs, self._arrays)}
        orders = {"numeric": [m.name for _, m in self._pairs],
                  "lexicographic": sorted(m.name for _, m in self._pairs)}
        out = {}
        for name, files in orders.items():
            offsets, total = {}, 0
            for f in files:
                offsets[f], total = total, total + sizes[f]
            labels = np.full(total, -1, np.int64)
            for pool_id, key in enumerate(keys):
                meta, row = key.rsplit("#", 1)
                labels[offsets[meta] + int(row)] = pool_id
            identity = total == len(keys) and bool((labels == np.arange(total)).all())
            if not any(identity and v is None for v in out.values()):
                out[name] = None if identity else labels
        return out


def index_param_near(index: Path) -> str | None:
    """autofaiss' tuned search parameters ("nprobe=16,efSearch=32,ht=2048"), from the
    ``*infos*.json`` it writes beside the index; None when there is none."""
    import json

    for infos in sorted(index.parent.glob("*infos*.json")):
        try:
            value = json.loads(infos.read_text()).get("index_param")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
    return None


def _record(key: str, row: dict, caption_column: str, vector: np.ndarray) -> Record:
    url = row.get("url")
    # image_path is as clip-retrieval saw it; kept only when the file is there now.
    path = row.get("image_path")
    image_path = Path(path).resolve() if path and Path(path).is_file() else None
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm):
        return Record(key, url=url, problem="bad embedding", detail="the vector has NaN or inf values")
    if norm == 0.0:
        return Record(key, url=url, problem="bad embedding", detail="the vector is all zeros")
    caption = row.get(caption_column)
    if not isinstance(caption, str):
        return Record(key, url=url, problem="no caption", detail=f"column {caption_column!r} is empty")
    return Record(key, caption=caption.strip(), embedding=vector / norm, url=url, image_path=image_path,
                  safety=from_metadata(row))


def _number(path: Path) -> int:
    m = re.search(r"_(\d+)$", path.stem)
    if not m:
        raise PoolError(f"Unexpected file name {path.name}: clip-retrieval names them img_emb_N.npy "
                        "and metadata_N.parquet.")
    return int(m.group(1))
