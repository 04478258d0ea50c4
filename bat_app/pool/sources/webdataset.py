"""webdataset .tar shards, as img2dataset writes them (``--output_format webdataset``).

    shards/00000.tar: 000000000.jpg 000000000.txt 000000000.json 000000001.jpg ...
    shards/00000_stats.json ("successes": records in the shard, used for the progress total)

Members that share a key (the path up to the first dot of the file name) make one record:
the image (jpg, jpeg, png, webp), the caption (txt, else the json's "caption") and the url
(the json's "url"). A shard that is truncated or damaged part way yields what it could read,
then one skipped record saying where it broke (the record it was reading is lost with it).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from bat_app.errors import PoolError
from bat_app.pool.safety import from_metadata
from bat_app.pool.sources.base import Record, Source, sorted_files

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class WebDatasetSource(Source):
    kind = "webdataset"

    def __init__(self, path: Path | str):
        super().__init__(path)
        self._shards = sorted_files(self.path, SHARD_SUFFIXES)
        if not self._shards:
            raise PoolError(f"No .tar shards found at {self.path}. A webdataset source is a "
                            ".tar file or a folder of them (img2dataset --output_format "
                            "webdataset).")

    def files(self) -> list[Path]:
        return self._shards

    def count(self) -> int | None:
        total = 0
        for shard in self._shards:
            stats = shard.with_name(shard.name.split(".")[0] + "_stats.json")
            try:
                total += int(json.loads(stats.read_text())["successes"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return total

    def records(self, start: int = 0) -> Iterator[Record]:
        seen = 0
        for shard in self._shards:
            for members, tar, problem in _groups(shard):
                if seen >= start:
                    yield (_record(shard, members, tar) if problem is None
                           else Record(f"{shard.name}:{members}", problem="unreadable shard",
                                       detail=problem))
                seen += 1


def _groups(shard: Path):
    """(members of one key, open tar, None) per key in file order; after a read error one
    (position, None, message), and the shard ends there."""
    try:
        tar = tarfile.open(shard, "r:*")
    except (tarfile.TarError, OSError) as exc:
        yield "<whole shard>", None, f"cannot open {shard.name}: {exc}"
        return
    with tar:
        group, key, read = [], None, 0
        try:
            for member in tar:  # headers only: data of skipped records is seeked over
                read += 1
                if not member.isfile():
                    continue
                this = _split(member.name)[0]
                if key is not None and this != key:
                    yield group, tar, None
                    group = []
                key = this
                group.append(member)
        except (tarfile.TarError, OSError, EOFError) as exc:
            # The record being read may be missing members: it is lost with the rest.
            lost = f" (record {key} and the rest of the shard are lost)" if group else ""
            yield f"after member {read}", None, f"{shard.name} is damaged after member {read}{lost}: {exc}"
            return
        if group:
            yield group, tar, None


def _record(shard: Path, members: list[tarfile.TarInfo], tar: tarfile.TarFile) -> Record:
    by_ext = {_split(m.name)[1]: m for m in members}
    key = f"{shard.name}:{_split(members[0].name)[0]}"
    image_ext = next((e for e in IMAGE_EXTS if e in by_ext), None)
    try:
        raw = {ext: _read(tar, by_ext[ext]) for ext in ("json", "txt", image_ext) if ext in by_ext}
    except (tarfile.TarError, OSError) as exc:
        return Record(key, problem="unreadable member", detail=f"{type(exc).__name__}: {exc}")
    return record_from_members(key, raw, sorted(by_ext))


def record_from_members(key: str, raw: dict[str, bytes], extensions: list[str]) -> Record:
    """One webdataset sample -> Record: ``raw`` maps extensions (jpg, txt, json) to bytes."""
    image_ext = next((e for e in IMAGE_EXTS if e in raw), None)
    try:
        meta = json.loads(raw["json"]) if "json" in raw else {}
    except ValueError:
        meta = {}  # metadata is optional: a broken json only loses the url
    meta = meta if isinstance(meta, dict) else {}
    url = meta.get("url") if isinstance(meta.get("url"), str) else None
    if image_ext is None:
        return Record(key, url=url, problem="no image",
                      detail=f"no {'/'.join(IMAGE_EXTS)} member (has: {', '.join(extensions)})")
    try:
        caption = raw["txt"].decode("utf-8").strip() if "txt" in raw else meta.get("caption")
    except UnicodeDecodeError as exc:
        return Record(key, url=url, problem="unreadable caption", detail=str(exc))
    data = raw[image_ext]
    if not isinstance(caption, str):
        return Record(key, url=url, problem="no caption", detail="no .txt member and no json caption")
    return Record(key, caption=caption, image_bytes=data, url=url, safety=from_metadata(meta))


def stream_records(fileobj, shard_name: str,
                   damage: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, EOFError)
                   ) -> Iterator[Record]:
    """Records of a shard read front to back from a non-seekable stream (a file on the Hub):
    each member's bytes are read as its header passes, since a stream cannot seek back. An
    error in ``damage`` ends the shard with one "unreadable shard" record, as for local
    shards; others (a remote stream's transport errors) propagate."""
    wanted = set(IMAGE_EXTS) | {"txt", "json"}
    key, raw, exts, read = None, {}, [], 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                read += 1
                if not member.isfile():
                    continue
                this, ext = _split(member.name)
                if key is not None and this != key:
                    yield record_from_members(f"{shard_name}:{key}", raw, sorted(exts))
                    raw, exts = {}, []
                key = this
                exts.append(ext)
                if ext in wanted:
                    raw[ext] = _read(tar, member)
    except damage as exc:
        lost = f" (record {key} and the rest of the shard are lost)" if exts else ""
        yield Record(f"{shard_name}:after member {read}", problem="unreadable shard",
                     detail=f"{shard_name} is damaged after member {read}{lost}: {exc}")
        return
    if exts:
        yield record_from_members(f"{shard_name}:{key}", raw, sorted(exts))


def _split(name: str) -> tuple[str, str]:
    """webdataset convention: "dir/000012.seg.jpg" -> key "dir/000012", extension "seg.jpg"."""
    base = name.rsplit("/", 1)[-1]
    stem, _, ext = base.partition(".")
    return name[:len(name) - len(base)] + stem, ext.lower()


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise OSError(f"{member.name} is not a regular file")
    return f.read()
