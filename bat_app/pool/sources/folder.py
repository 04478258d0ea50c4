"""A folder of images with same-name .txt captions (also img2dataset's "files" output).

    photos/cat1.jpg  photos/cat1.txt  ("a grey cat on a sofa")
    shards/00000/000000001.jpg  .txt  .json (img2dataset: the .json's "url" is kept)

Subfolders are walked, in sorted path order. An image without its .txt is skipped and
counted as "no caption".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from bat_app.errors import PoolError
from bat_app.pool.safety import from_metadata
from bat_app.pool.sources.base import Record, Source, sorted_files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class FolderSource(Source):
    kind = "folder"
    fingerprint_sizes = False

    def __init__(self, path: Path | str, limit: int | None = None):
        """``limit``: only the first ``limit`` images in path order (a generated pool's
        cache folder can hold more than one pool asks for)."""
        super().__init__(path)
        if not self.path.is_dir():
            raise PoolError(f"{self.path} is not a folder: a folder source is a folder of "
                            "images with same-name .txt captions.")
        self._images = sorted_files(self.path, IMAGE_SUFFIXES)[:limit]
        if not self._images:
            raise PoolError(f"No images found in {self.path} (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)} in it and its subfolders). Point the "
                            "build at a folder of images with same-name .txt captions.")

    def files(self) -> list[Path]:
        return self._images

    def count(self) -> int:
        return len(self._images)

    def records(self, start: int = 0) -> Iterator[Record]:
        for image in self._images[start:]:
            key = image.relative_to(self.path).as_posix()
            caption_file = image.with_suffix(".txt")
            try:
                caption = caption_file.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                yield Record(key, image_path=image, problem="no caption",
                             detail=f"{caption_file.name} is missing")
                continue
            except (OSError, UnicodeDecodeError) as exc:
                yield Record(key, image_path=image, problem="unreadable caption", detail=str(exc))
                continue
            meta = _meta_of(image)
            url = meta.get("url") if isinstance(meta.get("url"), str) else None
            yield Record(key, caption=caption, image_path=image, url=url, safety=from_metadata(meta))


def _meta_of(image: Path) -> dict:
    """img2dataset's KEY.json (url, and punsafe/pwatermark when saved); {} when absent."""
    meta = image.with_suffix(".json")
    if not meta.is_file():
        return {}
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # metadata is optional: a broken json only loses the url and scores
    return data if isinstance(data, dict) else {}
