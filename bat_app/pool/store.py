"""The files of a pool folder: appended batch by batch while building, memory-mapped after.

    manifest.json    written last; its presence marks a finished pool (see docs/pool.md)
    build.json       while building: the last committed batch (records read, file sizes)
    embeddings.npy   (N, dim) float32, row i = item i; a fixed 128-byte .npy header that is
                     rewritten with the final shape, so rows are appended in place
    items.jsonl      one JSON object per item: caption, source key, path | blob, url
    items.idx.npy    int64 byte offsets of each line of items.jsonl (N + 1 of them)
    images.bin       stored image bytes, back to back (an item's blob = [offset, length])
    skipped.jsonl    one line per skipped source record: key, reason, detail
    safety.npy       (N, 2) float32 content scores, unsafe and watermark (NaN: unscored);
                     appended like embeddings.npy (bat_app.pool.safety)
    index.faiss      the approximate index (ivf, hnsw); the flat index has no file

A kill can leave bytes past the last commit in any of the appended files; resuming
truncates each back to the size build.json recorded, so a batch is either all in or out.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from bat_app.errors import PoolError

MANIFEST = "manifest.json"
STATE = "build.json"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.jsonl"
ITEMS_INDEX = "items.idx.npy"
IMAGES = "images.bin"
SKIPPED = "skipped.jsonl"
SAFETY = "safety.npy"
SAFETY_COLUMNS = 2  # unsafe, watermark (bat_app.pool.safety.FLAGS)
APPENDED = (EMBEDDINGS, ITEMS, IMAGES, SKIPPED, SAFETY)
MATRICES = {EMBEDDINGS: None, SAFETY: SAFETY_COLUMNS}  # .npy files: name -> width (None: dim)
HEADER_BYTES = 128


def npy_header(n: int, dim: int) -> bytes:
    """A version-1.0 .npy header for (n, dim) little-endian float32, exactly 128 bytes."""
    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (n, dim)
    text = text.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def write_json(path: Path, data: dict) -> None:
    """Atomic: a reader (or a kill) sees the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


class PoolWriter:
    """Appends committed batches to a pool folder; ``state`` is build.json's content."""

    def __init__(self, folder: Path, state: dict):
        self.folder = folder
        self.state = state
        self.dim = state["dim"]
        sizes = state["sizes"]
        self._files = {}
        for name in APPENDED:
            path = folder / name
            if not path.exists():
                width = MATRICES.get(name, 0) or self.dim
                path.write_bytes(npy_header(0, width) if name in MATRICES else b"")
                sizes.setdefault(name, path.stat().st_size)
            f = open(path, "r+b")
            f.truncate(sizes.get(name, 0))  # drop whatever a kill left past the last commit
            f.seek(0, os.SEEK_END)
            self._files[name] = f

    def commit(self, items: list[dict], images: list[bytes | None], vectors: np.ndarray,
               skipped: list[dict], consumed: int, safety: np.ndarray | None = None) -> None:
        """Append one batch: items[i] gets vectors[i], safety[i] (content scores, NaN when
        the source had none) and, when images[i] is given, a blob."""
        if safety is None:
            safety = np.full((len(items), SAFETY_COLUMNS), np.nan, np.float32)
        if not len(items) == len(vectors) == len(images) == len(safety):
            raise ValueError("items, images, vectors and safety must have the same length")
        blob = self._files[IMAGES]
        lines = []
        for item, data in zip(items, images):
            if data is not None:
                item["blob"] = [blob.tell(), len(data)]
                blob.write(data)
            lines.append(json.dumps(item, ensure_ascii=False) + "\n")
        self._files[EMBEDDINGS].write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._files[SAFETY].write(np.ascontiguousarray(safety, dtype="<f4").tobytes())
        self._files[ITEMS].write("".join(lines).encode("utf-8"))
        self._files[SKIPPED].write("".join(json.dumps(s, ensure_ascii=False) + "\n"
                                           for s in skipped).encode("utf-8"))
        for f in self._files.values():
            f.flush()  # in the page cache: survives a killed process (not a power cut)
        st = self.state
        st["consumed"] = consumed
        st["items"] += len(items)
        st["stored"] += sum(data is not None for data in images)
        st["referenced"] += sum("path" in item for item in items)
        st["skipped"] += len(skipped)
        scored = st.setdefault("safety_from_column", {})
        for j, flag in enumerate(("unsafe", "watermark")):
            scored[flag] = scored.get(flag, 0) + int(np.count_nonzero(~np.isnan(safety[:, j])))
        for s in skipped:
            st["skipped_by_reason"][s["reason"]] = st["skipped_by_reason"].get(s["reason"], 0) + 1
        st["sizes"] = {name: f.tell() for name, f in self._files.items()}
        write_json(self.folder / STATE, st)

    def finish(self) -> None:
        """Stamp the final shapes into the .npy files and index the lines of items.jsonl."""
        n = self.state["items"]
        for name, width in MATRICES.items():
            width = width or self.dim
            f = self._files[name]
            if f.tell() != HEADER_BYTES + n * width * 4:
                raise PoolError(f"{self.folder / name} has {f.tell()} bytes, expected "
                                f"{HEADER_BYTES + n * width * 4} for {n} items: the folder was "
                                "changed during the build. Delete it and build again.")
            f.seek(0)
            f.write(npy_header(n, width))
        self.close()
        offsets, lines = [0], 0
        with open(self.folder / ITEMS, "rb") as f:
            for line in f:
                offsets.append(offsets[-1] + len(line))
                lines += 1
        if lines != n:
            raise PoolError(f"{self.folder / ITEMS} has {lines} lines for {n} items: the folder "
                            "was changed during the build. Delete it and build again.")
        np.save(self.folder / ITEMS_INDEX, np.asarray(offsets, np.int64))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}


class ItemTable:
    """Random access to items.jsonl through its offsets; thread-safe (pread)."""

    def __init__(self, folder: Path):
        self.offsets = np.load(folder / ITEMS_INDEX, mmap_mode="r")
        self._fd = os.open(folder / ITEMS, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> dict:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(os.pread(self._fd, end - start, start))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
