"""Hub datasets as pool sources (``hf://datasets/OWNER/NAME[@REV][/SUBDIR]``), offline.

A local folder laid out like a dataset repo (README.md, data/train-0000N-of-0000M.parquet or
.tar shards) is served by ``FakeHub``: a loopback HTTP server answering the few endpoints
huggingface_hub calls (revision info, tree listing, paths-info, resolve with byte ranges).
Its request log shows what was fetched: resumed builds must not fetch finished shards again.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bat_app.pool import Pool, PoolError, build_pool
from bat_app.pool.sources import open_source
from bat_app.pool.sources.hub import HubSource, parse_hub_url
from test_pool import CORRUPT, CountingEmbedder, Killed, add, kill_after, png_bytes, pool_files, tiny_embedder
from test_pool_cli import run

REPO = "me/captions"

class FakeHub:
    """Local folders served as Hub dataset repos, with the endpoints huggingface_hub calls."""

    def __init__(self, repos: dict):
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.log = []
        self.cut = set()  # file names whose download drops half way (a lost connection)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def do_HEAD(self): hub.handle(self, head=True)
            def do_GET(self): hub.handle(self)
            def do_POST(self): hub.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def sha(self, repo):
        h = hashlib.sha1(repo.encode())
        for p in self.files(repo):
            h.update(f"{p.relative_to(self.repos[repo])}{p.stat().st_size}".encode())
        return h.hexdigest()

    def files(self, repo):
        return sorted(p for p in self.repos[repo].rglob("*") if p.is_file())

    def entry(self, repo, p):
        rel = p.relative_to(self.repos[repo]).as_posix()
        if p.is_dir():
            return {"type": "directory", "oid": "0" * 40, "size": 0, "path": rel}
        return {"type": "file", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": p.stat().st_size, "path": rel}

    def handle(self, req, head=False):
        u = urllib.parse.urlparse(req.path)
        self.log.append((req.command, urllib.parse.unquote(u.path), req.headers.get("Range")))
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        parts = [urllib.parse.unquote(x) for x in u.path.split("/")]
        try:
            if parts[1:3] == ["api", "datasets"]:
                repo, op = "/".join(parts[3:5]), (parts[5] if len(parts) > 5 else "revision")
                rev, rest = self.revision(repo, parts[6:])
                if op == "revision":
                    return self.json(req, {"id": repo, "sha": self.sha(repo), "private": False,
                                           "siblings": [{"rfilename": p.relative_to(self.repos[repo]).as_posix()} for p in self.files(repo)]})
                if op == "tree":
                    q = urllib.parse.parse_qs(u.query)
                    base = self.repos[repo] / "/".join(rest)
                    if not base.exists():
                        return self.error(req, 404, "EntryNotFound")
                    it = base.rglob("*") if q.get("recursive", ["false"])[0].lower() == "true" else base.iterdir()
                    return self.json(req, [self.entry(repo, p) for p in sorted(it)])
                if op == "paths-info":
                    form = urllib.parse.parse_qs(body.decode()) if not body.startswith(b"{") else json.loads(body)
                    paths = form.get("paths", [])
                    return self.json(req, [self.entry(repo, self.repos[repo] / p) for p in paths if (self.repos[repo] / p).exists()])
            if parts[1] == "datasets" and parts[4] == "resolve":
                repo = "/".join(parts[2:4])
                rev, rest = self.revision(repo, parts[5:])
                path = self.repos[repo] / "/".join(rest)
                if not path.is_file():
                    return self.error(req, 404, "EntryNotFound")
                data = path.read_bytes()
                status, start, end = 200, 0, len(data)
                rng = req.headers.get("Range")
                if rng:
                    a, b = rng.removeprefix("bytes=").split("-")
                    start, end = int(a), min(len(data), int(b) + 1 if b else len(data))
                    status = 206
                req.send_response(status)
                req.send_header("Content-Length", str(end - start))
                req.send_header("ETag", f'"{self.entry(repo, path)["oid"]}"')
                req.send_header("X-Repo-Commit", self.sha(repo))
                req.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    req.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                req.end_headers()
                if not head:
                    if path.name in self.cut:
                        req.wfile.write(data[start:start + (end - start) // 2])
                        req.close_connection = True
                        return
                    req.wfile.write(data[start:end])
                return
            return self.error(req, 404, "RepoNotFound")
        except KeyError:
            return self.error(req, 404, "RepoNotFound")
        except LookupError:
            return self.error(req, 404, "RevisionNotFound")

    def revision(self, repo, rest):
        if repo not in self.repos:
            raise KeyError(repo)
        rev = rest[0] if rest else "main"
        if rev not in ("main", self.sha(repo)):
            raise LookupError(rev)
        return rev, rest[1:]

    def json(self, req, obj):
        data = json.dumps(obj).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def error(self, req, code, kind):
        data = json.dumps({"error": kind}).encode()
        req.send_response(code)
        req.send_header("X-Error-Code", kind)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


# --- fixtures ---------------------------------------------------------------------------------

def parquet_repo(root: Path, shards: int = 2, rows: int = 4) -> Path:
    """A dataset repo as `datasets` pushes it: data/train-0000N-of-0000M.parquet with an Image
    feature ({"bytes", "path"} struct), a `text` caption and LAION's punsafe."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# captions\n")
    for s in range(shards):
        n = range(s * rows, (s + 1) * rows)
        pq.write_table(pa.table({
            "image": [{"bytes": png_bytes(i), "path": f"{i}.png"} for i in n],
            "text": [f"caption {i}" for i in n],
            "alt": [f"alt {i}" for i in n],
            "punsafe": [0.9 if i == 1 else 0.01 for i in n]}),
            root / "data" / f"train-{s:05d}-of-{shards:05d}.parquet", row_group_size=2)
    return root


def tar_repo(root: Path) -> Path:
    """img2dataset webdataset shards in a repo: 3 + 3 records, one of them corrupt."""
    (root / "shards").mkdir(parents=True)
    for s in range(2):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for i in range(3):
                key = f"{s}{i:04d}"
                add(tar, f"{key}.jpg", CORRUPT if (s, i) == (1, 1) else png_bytes(10 * s + i))
                add(tar, f"{key}.txt", f"caption {s} {i}".encode())
                add(tar, f"{key}.json", json.dumps({"url": f"http://x/{key}"}).encode())
    (root / "shards" / "00000.parquet").write_bytes(b"img2dataset metadata: ignored beside tars")
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake Hub on loopback serving two repos; offline mode lifted for it alone."""
    from huggingface_hub import constants

    server = FakeHub({REPO: parquet_repo(tmp_path / "repo"), "me/shards": tar_repo(tmp_path / "tars")})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # must stay empty: nothing cached
    yield server
    server.close()


def fetched(hub, name: str) -> int:
    """Bytes requests (resolve) for files whose path ends with ``name``."""
    return sum(1 for method, path, _ in hub.log if "/resolve/" in path and path.endswith(name))


@pytest.fixture(scope="module")
def emb():
    return tiny_embedder(0)


# --- addresses --------------------------------------------------------------------------------

def test_parse_hub_addresses():
    assert parse_hub_url("hf://datasets/a/b") == ("a/b", None, "")
    assert parse_hub_url("hf://datasets/a/b@v1.0/data/train") == ("a/b", "v1.0", "data/train")
    assert parse_hub_url("hf://datasets/a/b@refs%2Fconvert%2Fparquet/default") == (
        "a/b", "refs/convert/parquet", "default")
    with pytest.raises(PoolError, match="not a Hub dataset address: write hf://datasets/OWNER/NAME"):
        parse_hub_url("hf://openai/clip-vit-base-patch32")
    with pytest.raises(PoolError, match="empty revision"):
        parse_hub_url("hf://datasets/a/b@")


def test_offline_mode_says_how_to_build_instead():
    # conftest sets HF_HUB_OFFLINE=1 for every test
    with pytest.raises(PoolError, match="HF_HUB_OFFLINE is set.*hf download --repo-type dataset a/b"):
        open_source("hf://datasets/a/b")


# --- parquet repos ----------------------------------------------------------------------------

def test_parquet_repo_streams_into_a_pool(hub, emb, tmp_path):
    pool = build_pool(f"hf://datasets/{REPO}", tmp_path / "pool", emb, batch_size=3)
    assert len(pool) == 8 and [pool.item(i).caption for i in (0, 7)] == ["caption 0", "caption 7"]
    src = pool.manifest["sources"][0]
    assert src["kind"] == "hub" and src["format"] == "parquet" and src["files"] == 2
    assert src["commit"] == hub.sha(REPO) and src["image_column"] == "image" and src["caption_column"] == "text"
    assert pool.item(5).source == "data/train-00001-of-00002.parquet#1"
    np.testing.assert_array_equal(np.asarray(pool.load_image(3)),
                                  np.asarray(__import__("PIL.Image").Image.open(io.BytesIO(png_bytes(3))).convert("RGB")))
    assert pool.flags_of(1) == ["unsafe"] and 1 not in pool.allowed_ids()  # punsafe kept
    assert not any((tmp_path / "hf-home").rglob("*.parquet"))  # streamed, not downloaded to a cache
    # the same repo as a local folder makes the same items and vectors
    local = build_pool(tmp_path / "repo", tmp_path / "local", emb, batch_size=3)
    np.testing.assert_array_equal(local.embeddings(), pool.embeddings())
    assert [local.item(i).caption for i in range(8)] == [pool.item(i).caption for i in range(8)]


def test_columns_named_on_the_command_line(hub, tmp_path):
    from test_pool import save_open_clip_dir

    clip = save_open_clip_dir(tmp_path / "clip")
    assert run("pool", "build", f"hf://datasets/{REPO}/data", "--out", tmp_path / "pool", "--clip-model",
               clip, "--caption-col", "alt", "--image-col", "image") == 0
    pool = Pool.open(tmp_path / "pool")
    assert pool.item(2).caption == "alt 2" and pool.manifest["sources"][0]["caption_column"] == "alt"
    with pytest.raises(PoolError, match="has no column 'caption_text' \\(given with --caption-column\\)"):
        run("pool", "build", f"hf://datasets/{REPO}", "--out", tmp_path / "p2", "--clip-model", clip,
            "--caption-col", "caption_text")


def test_pinned_revision_and_errors(hub, emb, tmp_path):
    sha = hub.sha(REPO)
    src = HubSource(f"hf://datasets/{REPO}@{sha}/data")
    assert src.commit == sha and len(src.files()) == 2
    with pytest.raises(PoolError, match="the revision 'v9' does not exist in me/captions"):
        HubSource(f"hf://datasets/{REPO}@v9")
    with pytest.raises(PoolError, match="no dataset 'me/nothing'"):
        HubSource("hf://datasets/me/nothing")
    with pytest.raises(PoolError, match="nothing at images of me/captions .*no such folder, or it is empty"):
        HubSource(f"hf://datasets/{REPO}/images")
    (hub.repos[REPO] / "docs").mkdir()
    (hub.repos[REPO] / "docs" / "notes.md").write_text("x")
    with pytest.raises(PoolError, match=r"has no \.parquet or \.tar shards \(found: notes.md\).*refs%2Fconvert%2Fparquet"):
        HubSource(f"hf://datasets/{REPO}/docs")


def test_parquet_resume_skips_finished_shards(hub, emb, tmp_path):
    url = f"hf://datasets/{REPO}"
    with pytest.raises(Killed):
        build_pool(url, tmp_path / "pool", emb, batch_size=5, progress=kill_after(5))
    hub.log.clear()
    second = CountingEmbedder(emb)
    build_pool(url, tmp_path / "pool", second, batch_size=5)
    assert second.images == 3  # records 5..7 only
    build_pool(url, tmp_path / "whole", emb, batch_size=5)
    assert pool_files(tmp_path / "pool") == pool_files(tmp_path / "whole")


# --- webdataset repos -------------------------------------------------------------------------

def test_tar_shards_stream_and_resume_per_shard(hub, emb, tmp_path):
    url = "hf://datasets/me/shards"
    first = CountingEmbedder(emb)
    with pytest.raises(Killed):  # dies at record 4: inside the second shard
        build_pool(url, tmp_path / "pool", first, batch_size=4, progress=kill_after(4))
    hub.log.clear()
    second = CountingEmbedder(emb)
    pool = build_pool(url, tmp_path / "pool", second, batch_size=4)
    assert fetched(hub, "00000.tar") == 0 and fetched(hub, "00001.tar") == 1  # finished shard not refetched
    assert len(pool) == 5 and pool.manifest["skipped"]["by_reason"] == {"cannot decode image": 1}
    assert pool.manifest["sources"][0]["format"] == "webdataset"
    assert pool.item(0).url == "http://x/00000" and pool.item(0).source == "shards/00000.tar:00000"
    whole = CountingEmbedder(emb)
    build_pool(url, tmp_path / "whole", whole, batch_size=4)
    assert first.images + second.images == whole.images
    assert pool_files(tmp_path / "pool") == pool_files(tmp_path / "whole")


def test_tar_repo_refuses_parquet_column_options(hub):
    with pytest.raises(PoolError, match="apply to parquet shards.*webdataset .tar shards"):
        open_source("hf://datasets/me/shards", caption_column="text")


def test_source_changed_on_the_hub_is_not_resumed(hub, emb, tmp_path):
    url = "hf://datasets/me/shards"
    with pytest.raises(Killed):
        build_pool(url, tmp_path / "pool", emb, batch_size=2, progress=kill_after(2))
    with tarfile.open(hub.repos["me/shards"] / "shards" / "00002.tar", "w") as tar:
        add(tar, "x.jpg", png_bytes(1))
        add(tar, "x.txt", b"new")
    with pytest.raises(PoolError, match="is not that source as it was"):
        build_pool(url, tmp_path / "pool", emb, batch_size=2)


def test_a_dropped_connection_stops_the_build_and_a_rerun_resumes(hub, emb, tmp_path):
    url = "hf://datasets/me/shards"
    hub.cut.add("00001.tar")
    with pytest.raises(PoolError, match="Reading shards/00001.tar from hf://datasets/me/shards failed.*Run the same command again"):
        build_pool(url, tmp_path / "pool", emb, batch_size=3)  # commits at 3: shard 0 complete
    hub.cut.clear()
    pool = build_pool(url, tmp_path / "pool", emb, batch_size=3)
    assert len(pool) == 5 and pool.manifest["skipped"]["by_reason"] == {"cannot decode image": 1}
    assert fetched(hub, "00000.tar") == 1  # read once, before the drop: the rerun skips it


def test_resume_without_shard_counts_reads_past_finished_shards(hub, emb, tmp_path):
    """A build state without the hint (older build.json): shards are read past, not skipped,
    and the result is still the uninterrupted build."""
    url = "hf://datasets/me/shards"
    with pytest.raises(Killed):
        build_pool(url, tmp_path / "pool", emb, batch_size=4, progress=kill_after(4))
    state = json.loads((tmp_path / "pool" / "build.json").read_text())
    assert state["source_hint"] == {"shard_records": {"shards/00000.tar": 3}}
    del state["source_hint"]
    (tmp_path / "pool" / "build.json").write_text(json.dumps(state))
    hub.log.clear()
    build_pool(url, tmp_path / "pool", emb, batch_size=4)
    assert fetched(hub, "00000.tar") == 1
    build_pool(url, tmp_path / "whole", emb, batch_size=4)
    assert pool_files(tmp_path / "pool") == pool_files(tmp_path / "whole")
