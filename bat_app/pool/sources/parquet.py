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
from pathlib import Path

from bat_app.pool.errors import PoolError
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
        kinds = self._tables[0].column_kinds
        self.caption_column = caption_column or _pick(kinds, CAPTION_COLUMNS, ("string",), "caption",
                                                     self._files[0], "--caption-column")
        self.image_column = image_column or _pick(kinds, BYTES_COLUMNS + PATH_COLUMNS,
                                                 ("binary", "image-struct", "string"), "image",
                                                 self._files[0], "--image-column")
        self.url_column = next((c for c in URL_COLUMNS if kinds.get(c) == "string"), None)
        # LAION's punsafe / pwatermark: kept as the items' content scores
        self.safety_columns = [c for cols in SOURCE_COLUMNS.values() for c in cols
                               if kinds.get(c) == "number"]
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
        columns = ([self.caption_column, self.image_column] + ([self.url_column] if self.url_column else [])
                   + self.safety_columns)
        first = 0
        for table in self._tables:
            if first + table.num_rows <= start:
                first += table.num_rows
                continue
            skip = max(0, start - first)
            for i, row in enumerate(table.rows(columns, start=skip), start=skip):
                yield self._record(table.path, i, row)
            first += table.num_rows

    def _record(self, file: Path, i: int, row: dict) -> Record:
        key = f"{file.name}#{i}"
        caption, image = row.get(self.caption_column), row.get(self.image_column)
        url = row.get(self.url_column) if self.url_column else None
        safety = from_metadata(row) if self.safety_columns else None
        if isinstance(image, dict):  # {"bytes": ..., "path": ...}
            image = image.get("bytes") or image.get("path")
        if image is None or image == b"" or image == "":
            return Record(key, url=url, problem="no image", detail=f"column {self.image_column!r} is empty")
        if not isinstance(caption, str):
            return Record(key, url=url, problem="no caption", detail=f"column {self.caption_column!r} is empty")
        if isinstance(image, str):
            path = Path(image)
            return Record(key, caption=caption.strip(), image_path=path if path.is_absolute() else file.parent / path,
                          url=url, safety=safety)
        return Record(key, caption=caption.strip(), image_bytes=bytes(image), url=url, safety=safety)


def _pick(kinds: dict[str, str], names: tuple[str, ...], allowed: tuple[str, ...], what: str,
          file: Path, flag: str) -> str:
    for name in names:
        if kinds.get(name) in allowed:
            return name
    raise PoolError(f"Cannot tell which column of {file} holds the {what} (columns: "
                    f"{', '.join(f'{k} ({v})' for k, v in kinds.items())}). Name it with {flag}.")
