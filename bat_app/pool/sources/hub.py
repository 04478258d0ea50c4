"""A dataset repository on the Hugging Face Hub, streamed shard by shard (no full download).

    hf://datasets/OWNER/NAME                      every parquet / webdataset shard in the repo
    hf://datasets/OWNER/NAME@REV/SUBDIR           at a branch, tag or commit, below SUBDIR
    hf://datasets/OWNER/NAME@refs%2Fconvert%2Fparquet/default/train   the Hub's parquet export

The revision is pinned to its commit when the source is opened, so a build (and its resume)
reads one fixed set of files. Shards are read through huggingface_hub's ``HfFileSystem``:
parquet with ranged reads (the footer, then only the needed columns), ``.tar`` shards as one
forward stream; nothing is written to disk but the pool. A resumed build skips the shards it
finished without fetching them again (their record counts are kept in the build state) and
re-reads only the shard it was in. Columns are found by name as for local parquet, or named
(``--caption-col``, ``--image-col``). Needs network access to the Hub (or ``HF_ENDPOINT``).
"""

from __future__ import annotations

import hashlib
import tarfile
import urllib.parse
from collections.abc import Iterator

from bat_app.errors import PoolError
from bat_app.pool.sources.base import Record, Source
from bat_app.pool.sources.parquet import detect_columns, make_record
from bat_app.pool.sources.webdataset import SHARD_SUFFIXES, stream_records

PREFIX = "hf://"
PARQUET_BLOCK = 8 << 20     # ranged reads of parquet files: a row group's column chunks at a time


def is_hub_url(path) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse_hub_url(url: str) -> tuple[str, str | None, str]:
    """``hf://datasets/OWNER/NAME[@REV][/SUBDIR]`` -> (repo id, revision or None, subdir)."""
    rest = url[len(PREFIX):] if url.startswith(PREFIX) else url
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 3 or parts[0] != "datasets":
        raise PoolError(f"{url!r} is not a Hub dataset address: write hf://datasets/OWNER/NAME"
                        "[@REVISION][/SUBFOLDER] (models and spaces are not pool sources).")
    owner, name = parts[1], parts[2]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = urllib.parse.unquote(revision)  # refs%2Fconvert%2Fparquet -> refs/convert/parquet
        if not revision:
            raise PoolError(f"{url!r} has an empty revision after '@': name a branch, tag or commit.")
    return f"{owner}/{name}", revision, "/".join(parts[3:])


class HubSource(Source):
    """Parquet or webdataset shards of a Hub dataset repo, streamed."""

    kind = "hub"

    def __init__(self, url: str, caption_column: str | None = None, image_column: str | None = None,
                 endpoint: str | None = None, token: str | bool | None = None):
        self.url = url
        self.path = url  # what messages and the manifest show
        self.repo_id, self.revision, self.subdir = parse_hub_url(url)
        self._fs, self.commit = _connect(self.repo_id, self.revision, endpoint, token)
        root = f"datasets/{self.repo_id}@{urllib.parse.quote(self.commit, safe='')}"
        self._root = root
        listing = _list(self._fs, f"{root}/{self.subdir}" if self.subdir else root, url)
        if not listing:
            raise PoolError(f"{url}: nothing at {self.subdir or 'the top'} of {self.repo_id} "
                            f"(commit {self.commit[:12]}): no such folder, or it is empty. Check the "
                            f"path on https://huggingface.co/datasets/{self.repo_id}/tree/main.")
        tars = {p: size for p, size in listing.items() if p.lower().endswith(SHARD_SUFFIXES)}
        parquets = {p: size for p, size in listing.items() if p.lower().endswith(".parquet")}
        # Like local sources: img2dataset writes a .parquet beside each .tar; the tars win.
        self.format, shards = ("webdataset", tars) if tars else ("parquet", parquets)
        if not shards:
            seen = ", ".join(sorted(p.rsplit("/", 1)[-1] for p in listing)[:8])
            raise PoolError(f"{url} (commit {self.commit[:12]}) has no .parquet or .tar shards "
                            f"(found: {seen}). Point at the folder holding them, e.g. "
                            f"{PREFIX}datasets/{self.repo_id}/data, or at the Hub's parquet "
                            f"export: {PREFIX}datasets/{self.repo_id}@refs%2Fconvert%2Fparquet.")
        self._shards = sorted(shards, key=lambda p: p)
        self._sizes = shards
        self._counts: dict[str, int] = {}  # shard -> records, for shards read to the end
        self.columns = None
        self.safety_columns: list[str] = []
        if self.format == "parquet":
            first = self._parquet(self._shards[0])
            self.columns = detect_columns(first.column_kinds, self._name(self._shards[0]),
                                          caption_column, image_column)
            self.safety_columns = self.columns.safety
        elif caption_column or image_column:
            raise PoolError(f"--caption-col/--image-col apply to parquet shards; {url} holds "
                            "webdataset .tar shards (caption from KEY.txt, image from KEY.jpg/png/webp).")

    # --- Source interface ------------------------------------------------------------------

    def files(self) -> list[str]:
        return list(self._shards)

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.repo_id}@{self.commit}\n".encode())
        for shard in self._shards:
            h.update(f"{self._name(shard)}\0{self._sizes[shard]}\n".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        out = {"kind": self.kind, "path": self.url, "repo": self.repo_id, "revision": self.revision,
               "commit": self.commit, "format": self.format, "files": len(self._shards),
               "fingerprint": self.fingerprint()}
        if self.columns is not None:
            out |= {"caption_column": self.columns.caption, "image_column": self.columns.image}
        return out

    def resume_hint(self) -> dict:
        return {"shard_records": {self._name(s): n for s, n in self._counts.items()}}

    def restore_hint(self, hint: dict | None) -> None:
        counts = (hint or {}).get("shard_records", {})
        self._counts = {s: counts[self._name(s)] for s in self._shards if self._name(s) in counts}

    def records(self, start: int = 0) -> Iterator[Record]:
        first = 0
        for shard in self._shards:
            n = self._counts.get(shard)
            if n is None and self.format == "parquet" and first < start:
                n = self._parquet(shard).num_rows  # the footer only: a ranged read
            if n is not None and first + n <= start:
                first += n  # finished before the resume point: not fetched again
                continue
            skip = max(0, start - first)
            try:
                yield from self._counted(shard, self._shard_records(shard, skip), skip)
            except PoolError:
                raise
            except Exception as exc:  # HTTP errors (huggingface_hub's are OSErrors), dropped
                # connections (httpx), ...: nothing committed is lost; a rerun resumes.
                raise PoolError(f"Reading {self._name(shard)} from {self.url} failed ({_why(exc)}). "
                                "Run the same command again: the build resumes where it stopped.") from exc
            first += self._counts[shard]

    def _counted(self, shard: str, records: Iterator[tuple[int, Record]], skip: int) -> Iterator[Record]:
        """Yield the shard's records from number ``skip`` on, recording the shard's count
        *before* its last record goes out (one record of lookahead): a commit that ends
        exactly on a shard boundary then marks the shard finished, and a resume does not
        fetch it again. ``records`` yields (number in the shard, record)."""
        current = next(records, None)
        if current is None:
            self._counts.setdefault(shard, 0)  # an empty shard (parquet's count is set already)
            return
        while current is not None:
            following = next(records, None)
            if following is None:
                self._counts[shard] = current[0] + 1
            if current[0] >= skip:
                yield current[1]
            current = following

    # --- reading ---------------------------------------------------------------------------

    def _shard_records(self, shard: str, skip: int) -> Iterator[tuple[int, Record]]:
        name = self._name(shard)
        if self.format == "parquet":
            table = self._parquet(shard)  # skips whole row groups before ``skip`` unread
            self._counts[shard] = table.num_rows  # a fact from the footer: safe to record early
            for i, row in enumerate(table.rows(self.columns.read, start=skip), start=skip):
                yield i, make_record(f"{name}#{i}", row, self.columns, None)
            return
        # block_size=0: one streamed GET, read front to back (tar headers sit between members).
        # Only a malformed tar counts as a damaged shard; transport errors propagate (resume).
        with self._fs.open(shard, "rb", block_size=0) as stream:
            # records before ``skip`` are read past (a stream cannot seek) but counted
            yield from enumerate(stream_records(stream, name, damage=(tarfile.TarError, EOFError)))

    def _parquet(self, shard: str):
        from bat_app.pool.sources._parquet_io import open_parquet_stream

        try:
            stream = self._fs.open(shard, "rb", block_size=PARQUET_BLOCK)
        except Exception as exc:
            raise PoolError(f"Cannot open {self._name(shard)} in {self.url}: {_why(exc)}") from exc
        return open_parquet_stream(stream, self._name(shard))

    def _name(self, shard: str) -> str:
        """The shard's path inside the repo (stable across endpoints and revisions)."""
        return shard[len(self._root) + 1:] if shard.startswith(self._root + "/") else shard


def _connect(repo_id: str, revision: str | None, endpoint: str | None, token):
    """(HfFileSystem, commit sha) for the repo at ``revision``; PoolError saying what failed."""
    import os

    from huggingface_hub import HfApi, HfFileSystem, constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if constants.HF_HUB_OFFLINE:
        raise PoolError(f"hf://datasets/{repo_id} streams from the Hub, but HF_HUB_OFFLINE is set. "
                        "Unset it, or download the dataset (e.g. `hf download --repo-type "
                        f"dataset {repo_id} --local-dir DIR`) and build from DIR.")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    where = f"hf://datasets/{repo_id}" + (f"@{revision}" if revision else "")
    try:
        info = HfApi(endpoint=endpoint, token=token).dataset_info(repo_id, revision=revision)
    except GatedRepoError as exc:
        raise PoolError(f"{where} is gated: accept its terms on the Hub and log in "
                        "(`hf auth login` or HF_TOKEN), then build again.") from exc
    except RevisionNotFoundError as exc:
        raise PoolError(f"{where}: the revision {revision!r} does not exist in {repo_id}. "
                        "Use a branch, tag or commit of the dataset.") from exc
    except RepositoryNotFoundError as exc:
        raise PoolError(f"{where}: no dataset {repo_id!r} on {endpoint} (or it is private: log "
                        "in with `hf auth login` or set HF_TOKEN).") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise PoolError(f"Cannot reach {endpoint} for {where}: {_why(exc)}. Check the network "
                        "(or HF_ENDPOINT) and build again; a build resumes where it stopped.") from exc
    return HfFileSystem(endpoint=endpoint, token=token), info.sha


def _list(fs, root: str, url: str) -> dict[str, int]:
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as exc:
        raise PoolError(f"Cannot list the files of {url}: {_why(exc)}") from exc
    return {path: int(info.get("size") or 0) for path, info in found.items()
            if info.get("type") == "file"}


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
