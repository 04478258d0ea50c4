"""The interface every pool source implements, and the record it yields.

A source lists image-caption items in a fixed order so that a build killed after n records
resumes with ``records(start=n)``. Items a source can already tell are unusable (no caption,
no image, a damaged shard) come out as records with ``problem`` set: the builder skips and
counts them, and decoding failures are found by the builder the same way.

    src = open_source("laion-shards/")        # FolderSource, WebDatasetSource, ParquetSource,
    src.kind, src.count()                     # ClipRetrievalSource: chosen by the layout
    for rec in src.records(start=0):
        rec.key, rec.caption, rec.image_bytes or rec.image_path, rec.problem
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass
class Record:
    key: str                            # where it is in the source: "00001.tar:000010023", "a/b.jpg"
    caption: str | None = None
    image_bytes: bytes | None = None    # encoded image (jpeg, png, ...)
    image_path: Path | None = None      # or a local file holding it
    embedding: np.ndarray | None = None  # sources that carry embeddings (clip-retrieval)
    url: str | None = None
    safety: dict | None = None          # content scores from the source: {"unsafe": punsafe, ...}
    problem: str | None = None          # short reason when unusable: skipped and counted by it
    detail: str = ""                    # longer explanation, written to skipped.jsonl


class Source(ABC):
    """One kind of pool input. Subclasses set ``kind`` and implement ``records`` and ``files``."""

    kind: ClassVar[str]
    has_embeddings: ClassVar[bool] = False  # records carry embeddings: no model is run
    fingerprint_sizes: ClassVar[bool] = True  # False: names only (saves a stat per image)

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @abstractmethod
    def records(self, start: int = 0) -> Iterator[Record]:
        """Every record in a fixed order, beginning with the ``start``-th (0-based)."""

    @abstractmethod
    def files(self) -> list[Path]:
        """The files the records come from (for the fingerprint and the manifest)."""

    def count(self) -> int | None:
        """Number of records when known without reading everything (for progress bars)."""
        return None

    @property
    def dim(self) -> int | None:
        """Embedding width for sources that carry embeddings."""
        return None

    def resume_hint(self) -> dict | None:
        """What the source learnt while reading that makes ``records(start)`` cheaper after
        a restart (JSON; kept in the build state at each commit). None: nothing."""
        return None

    def restore_hint(self, hint: dict | None) -> None:
        """Take back what :meth:`resume_hint` returned before the build stopped."""

    def fingerprint(self) -> str:
        """Changes when files are added, removed or rewritten: a resumed build checks it."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        for f in self.files():
            try:
                size = f.stat().st_size if self.fingerprint_sizes else 0
            except OSError:
                size = -1
            h.update(f"{f.relative_to(self.path) if f != self.path else f.name}\0{size}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """What the manifest records about this source."""
        return {"kind": self.kind, "path": str(self.path.resolve()), "files": len(self.files()),
                "fingerprint": self.fingerprint()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def sorted_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under root (recursive, hidden ones left out) with one of the suffixes, sorted."""
    if root.is_file():
        return [root] if root.name.lower().endswith(suffixes) else []
    return sorted((p for p in root.rglob("*") if p.name.lower().endswith(suffixes) and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                  key=lambda p: p.relative_to(root).as_posix())
