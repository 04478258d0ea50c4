"""The little of parquet the sources need, over pyarrow (an optional dependency).

    table = open_parquet(Path("part-0.parquet"))
    table.num_rows, table.column_kinds      # {"caption": "string", "jpg": "binary", ...}
    for row in table.rows(["caption", "jpg"], start=10): ...

Kept apart so that tests can stand in a fake table where pyarrow is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bat_app.errors import PoolError


def pyarrow_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


class ParquetTable:
    """One parquet file, read a row group at a time."""

    def __init__(self, path: Path, stream=None):
        """``stream``: an open binary file (e.g. a file on the Hub, read by ranges) that
        ``path`` only names."""
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise PoolError(f"Reading {path} needs pyarrow, which is not installed: "
                            "`pip install pyarrow`.") from exc
        try:
            self._file = pq.ParquetFile(path if stream is None else stream)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError on damaged files
            raise PoolError(f"{path} is not a readable parquet file: {exc}") from exc
        self.path = Path(path)
        self.num_rows = self._file.metadata.num_rows
        self.column_kinds = {f.name: _kind(f.type) for f in self._file.schema_arrow}

    def rows(self, columns: list[str], start: int = 0) -> Iterator[dict]:
        meta = self._file.metadata
        first = 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if first + n <= start:
                first += n
                continue
            skip = max(0, start - first)
            for batch in self._file.iter_batches(batch_size=1024, row_groups=[group], columns=columns):
                rows = batch.to_pylist()
                yield from rows[skip:]
                skip = max(0, skip - len(rows))
            first += n


def _kind(t) -> str:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_floating(t) or pa.types.is_integer(t):
        return "number"
    if pa.types.is_struct(t) and {t.field(i).name for i in range(t.num_fields)} & {"bytes", "path"}:
        return "image-struct"  # Hugging Face datasets' Image feature
    return "other"


def open_parquet(path: Path) -> ParquetTable:
    return ParquetTable(path)


def open_parquet_stream(stream, name: str) -> ParquetTable:
    """A parquet file read from an open binary stream (seekable: pyarrow reads the footer
    first, then the column chunks it needs)."""
    return ParquetTable(Path(name), stream)
