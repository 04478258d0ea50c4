"""Pool sources: one interface (:class:`Source`), one implementation per input layout.

    from bat_app.pool.sources import open_source
    src = open_source("shards/")            # detected from the layout, or kind="parquet" etc.

Detection, in order: an ``hf://datasets/...`` address (streamed from the Hub), clip-retrieval output (img_emb/ + metadata/), .tar shards
(webdataset; img2dataset also writes a .parquet per shard, which is then ignored), .parquet
files, a folder of images with .txt captions.
"""

from __future__ import annotations

from pathlib import Path

from bat_app.errors import PoolError
from bat_app.pool.sources.base import Record, Source, sorted_files
from bat_app.pool.sources.clip_retrieval import ClipRetrievalSource, is_clip_retrieval_output
from bat_app.pool.sources.folder import FolderSource
from bat_app.pool.sources.hub import HubSource, is_hub_url
from bat_app.pool.sources.parquet import ParquetSource
from bat_app.pool.sources.webdataset import SHARD_SUFFIXES, WebDatasetSource

SOURCE_TYPES: dict[str, type[Source]] = {
    "folder": FolderSource,
    "webdataset": WebDatasetSource,
    "parquet": ParquetSource,
    "clip-retrieval": ClipRetrievalSource,
    "hub": HubSource,
}

__all__ = ["SOURCE_TYPES", "ClipRetrievalSource", "FolderSource", "HubSource", "ParquetSource", "Record",
           "Source", "WebDatasetSource", "detect_kind", "open_source"]


def detect_kind(path: Path | str) -> str:
    """Which source type ``path`` looks like; PoolError when it is none of them."""
    if is_hub_url(str(path)):
        return "hub"
    path = Path(path)
    if not path.exists():
        raise PoolError(f"Pool source {path} does not exist.")
    if is_clip_retrieval_output(path):
        return "clip-retrieval"
    if path.is_file():
        name = path.name.lower()
        if name.endswith(SHARD_SUFFIXES):
            return "webdataset"
        if name.endswith(".parquet"):
            return "parquet"
        raise PoolError(f"Pool source {path} is a file but neither a .tar shard nor a .parquet "
                        "file. Give a folder of images with .txt captions, webdataset .tar "
                        "shards, parquet files, or clip-retrieval output.")
    if sorted_files(path, SHARD_SUFFIXES):
        return "webdataset"
    if sorted_files(path, (".parquet",)):
        return "parquet"
    return "folder"


def open_source(path: Path | str, kind: str | None = None, **options) -> Source:
    """The source at ``path``: ``kind`` forces a type, ``options`` go to its constructor
    (``caption_column``/``image_column`` for parquet)."""
    kind = kind or detect_kind(path)
    if kind not in SOURCE_TYPES:
        raise PoolError(f"Unknown source kind {kind!r}; use one of {', '.join(SOURCE_TYPES)}.")
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "hub":
        return HubSource(str(path), **options)
    if options and kind != "parquet":
        raise PoolError(f"Options {sorted(options)} apply to parquet sources only; {path} is a "
                        f"{kind} source.")
    return SOURCE_TYPES[kind](path, **options)
