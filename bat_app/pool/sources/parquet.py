"""Parquet files with an image column (bytes or paths) and a caption column.

    ParquetSource("laion-part-0.parquet")                       # columns found by name
    ParquetSource("parts/", caption_column="TEXT", image_column="jpg")

Found by name when not given: caption from caption/text/TEXT/txt/prompt; image from a binary
column (jpg/image/img/image_bytes/png/webp/bytes), a Hugging Face ``{"bytes", "path"}``
struct, or a string column of paths (image_path/path/file/filepath/file_name), relative ones
taken from the parquet file's folder. Needs pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bat_app.errors import PoolError
from bat_app.pool.safety import SOURCE_COLUMNS, from_metadata
from bat_app.pool.sources import _parquet_io
from bat_app.pool.sources.base import Record, Source, sorted_files

CAPTION_COLUMNS = ("caption", "text", "TEXT", "txt", "prompt")
BYTES_COLUMNS = ("jpg", "image", "img", "image_bytes", "png", "webp", "bytes")
PATH_COLUMNS = ("image_path", "path", "file", "filepath", "file_name", "filename")
URL_COLUMNS = ("url", "URL")


class ParquetSource(Source):
    kind = "parquet"

    def __init__(self, path: Path | str, caption_column: str | None = None,
                 image_column: str | None = None):
        super().__init__(path)
        self._files = sorted_files(self.path, (".parquet",))
        if not self._files:
            raise PoolError(f"No .parquet files found at {self.path}.")
        self._tables = [_parquet_io.open_parquet(f) for f in self._files]
        self.columns = detect_columns(self._tables[0].column_kinds, self._files[0], caption_column,
                                      image_column)
        self.caption_column, self.image_column = self.columns.caption, self.columns.image
        self.url_column, self.safety_columns = self.columns.url, self.columns.safety
        kinds = self._tables[0].column_kinds
        for table in self._tables:
            for column in (self.caption_column, self.image_column):
                if column not in table.column_kinds:
                    raise PoolError(f"{table.path} has no column {column!r} (columns: "
                                    f"{', '.join(table.column_kinds)}). All parquet files of a "
                                    "source need the same columns.")
        self.image_kind = kinds[self.image_column]
        if sum(t.num_rows for t in self._tables) == 0:
            raise PoolError(f"The parquet files at {self.path} have no rows.")

    def files(self) -> list[Path]:
        return self._files

    def count(self) -> int:
        return sum(t.num_rows for t in self._tables)

    def describe(self) -> dict:
        return super().describe() | {"caption_column": self.caption_column,
                                     "image_column": self.image_column}

    def records(self, start: int = 0) -> Iterator[Record]:
        first = 0
        for table in self._tables:
            if first + table.num_rows <= start:
                first += table.num_rows
                continue
            skip = max(0, start - first)
            for i, row in enumerate(table.rows(self.columns.read, start=skip), start=skip):
                yield make_record(f"{table.path.name}#{i}", row, self.columns, table.path.parent)
            first += table.num_rows


@dataclass
class Columns:
    """Which parquet columns hold what (found by name unless given)."""

    caption: str
    image: str
    url: str | None
    safety: list[str]           # punsafe / pwatermark when present

    @property
    def read(self) -> list[str]:
        return [self.caption, self.image] + ([self.url] if self.url else []) + self.safety


def detect_columns(kinds: dict[str, str], file, caption_column: str | None = None,
                   image_column: str | None = None) -> Columns:
    """The columns of a table with these ``{name: kind}``; PoolError naming the flag to set."""
    for given, flag in ((caption_column, "--caption-column"), (image_column, "--image-column")):
        if given is not None and given not in kinds:
            raise PoolError(f"{file} has no column {given!r} (given with {flag}); its columns are "
                            f"{', '.join(kinds)}.")
    caption = caption_column or _pick(kinds, CAPTION_COLUMNS, ("string",), "caption", file,
                                      "--caption-column")
    image = image_column or _pick(kinds, BYTES_COLUMNS + PATH_COLUMNS,
                                  ("binary", "image-struct", "string"), "image", file, "--image-column")
    url = next((c for c in URL_COLUMNS if kinds.get(c) == "string"), None)
    # LAION's punsafe / pwatermark: kept as the items' content scores
    safety = [c for cols in SOURCE_COLUMNS.values() for c in cols if kinds.get(c) == "number"]
    return Columns(caption, image, url, safety)


def make_record(key: str, row: dict, cols: Columns, folder: Path | None) -> Record:
    """One row -> Record. Path cells are taken relative to ``folder``; None (remote files):
    paths are not followed and the row is skipped as "image not embedded"."""
    caption, image = row.get(cols.caption), row.get(cols.image)
    url = row.get(cols.url) if cols.url else None
    safety = from_metadata(row) if cols.safety else None
    if isinstance(image, dict):  # {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    if image is None or image == b"" or image == "":
        return Record(key, url=url, problem="no image", detail=f"column {cols.image!r} is empty")
    if not isinstance(caption, str):
        return Record(key, url=url, problem="no caption", detail=f"column {cols.caption!r} is empty")
    if isinstance(image, str):
        if folder is None:
            return Record(key, url=url, problem="image not embedded",
                          detail=f"column {cols.image!r} holds a path ({image}), not image bytes")
        path = Path(image)
        return Record(key, caption=caption.strip(), image_path=path if path.is_absolute() else folder / path,
                      url=url, safety=safety)
    return Record(key, caption=caption.strip(), image_bytes=bytes(image), url=url, safety=safety)


def _pick(kinds: dict[str, str], names: tuple[str, ...], allowed: tuple[str, ...], what: str,
          file: Path, flag: str) -> str:
    for name in names:
        if kinds.get(name) in allowed:
            return name
    raise PoolError(f"Cannot tell which column of {file} holds the {what} (columns: "
                    f"{', '.join(f'{k} ({v})' for k, v in kinds.items())}). Name it with {flag}.")
