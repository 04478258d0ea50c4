"""bat_app.pool: building from each source type, resume, model checks, items and images.

Everything runs on a tiny random open_clip model (embed_dim 32, 32 px) built from a config
dict, so the file is fast and offline. Parquet and clip-retrieval metadata are read with
pyarrow when it is installed; the same checks also run against a stand-in table reader so
that the source logic is tested where pyarrow is missing.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bat_app.errors import BatError
from bat_app.pool import OpenClipEmbedder, Pool, PoolError, build_pool, load_embedder
from bat_app.pool.sources import _parquet_io, open_source

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
HAS_PYARROW = _parquet_io.pyarrow_available()


# --- helpers (also used by test_pool_cli.py) ---------------------------------------------------

def tiny_clip(seed: int = 0):
    """(model, preprocess, tokenizer) of a random open_clip model from TINY_CLIP."""
    import open_clip
    from open_clip.model import CLIP
    from open_clip.transform import image_transform

    torch.manual_seed(seed)
    return (CLIP(**TINY_CLIP).eval(), image_transform(32, is_train=False),
            open_clip.tokenizer.SimpleTokenizer(context_length=16))


def tiny_embedder(seed: int = 0, model_id: str | None = None) -> OpenClipEmbedder:
    return OpenClipEmbedder(*tiny_clip(seed), model_id=model_id or f"tiny-clip-{seed}", device="cpu")


class CountingEmbedder:
    """Wraps an embedder and counts the images it was asked to encode."""

    def __init__(self, inner):
        self.inner, self.model_id, self.dim, self.images = inner, inner.model_id, inner.dim, 0

    def encode_images(self, images):
        self.images += len(images)
        return self.inner.encode_images(images)

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)


class NoModel:
    """For sources that carry embeddings: any call to the model is a test failure."""

    model_id, dim = "open_clip:ViT-B-32/openai", 8

    def encode_images(self, images):
        raise AssertionError("embeddings were recomputed")

    def encode_texts(self, texts):
        # the zero-shot content check embeds its prompts; images are never re-embedded
        v = np.random.default_rng(len(texts)).normal(size=(len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def image(i: int, size: int = 40) -> Image.Image:
    """A distinct test image: colour blocks chosen by i."""
    rng = np.random.default_rng(i)
    blocks = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(np.kron(blocks, np.ones((size // 4, size // 4, 1), np.uint8)))


def png_bytes(i: int) -> bytes:
    buf = io.BytesIO()
    image(i).save(buf, format="PNG")
    return buf.getvalue()


CORRUPT = b"\x89PNG\r\n\x1a\n" + b"this is not really a png" * 4


def make_folder(root: Path, n: int = 6, corrupt: bool = True, uncaptioned: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")  # subfolders are walked too
        sub.mkdir(exist_ok=True)
        (sub / f"{i:03d}.png").write_bytes(png_bytes(i))
        (sub / f"{i:03d}.txt").write_text(f"caption {i}\n")
    if corrupt:
        (root / "broken.png").write_bytes(CORRUPT)
        (root / "broken.txt").write_text("a broken image")
    if uncaptioned:
        (root / "lonely.png").write_bytes(png_bytes(99))
    return root


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(root: Path) -> Path:
    """Two img2dataset-style shards: 5 good records, a corrupt jpg, a record with no image."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i in range(3):
            add(tar, f"00000{i:04d}.png", png_bytes(i))
            add(tar, f"00000{i:04d}.txt", f"caption {i}".encode())
            add(tar, f"00000{i:04d}.json", json.dumps({"url": f"https://x.test/{i}.png"}).encode())
        add(tar, "000000003.jpg", CORRUPT)
        add(tar, "000000003.txt", b"corrupt")
    with tarfile.open(root / "00001.tar", "w") as tar:
        add(tar, "000010000.png", png_bytes(10))
        add(tar, "000010000.json", json.dumps({"caption": "caption from json", "url": "u"}).encode())
        add(tar, "000010001.txt", b"no image here")
        add(tar, "000010002.png", png_bytes(12))
        add(tar, "000010002.txt", b"caption 12")
    (root / "00000_stats.json").write_text(json.dumps({"successes": 4}))
    (root / "00001_stats.json").write_text(json.dumps({"successes": 3}))
    (root / "00000.parquet").write_bytes(b"img2dataset writes one next to each shard: ignored")
    return root


# --- stand-in parquet (where pyarrow is missing) ------------------------------------------------

class FakeTable:
    """Reads a pickled {"columns": {name: list}, "kinds": {name: kind}} written as *.parquet."""

    def __init__(self, path: Path):
        data = pickle.loads(Path(path).read_bytes())
        self.path, self.columns, self.column_kinds = Path(path), data["columns"], data["kinds"]
        self.num_rows = len(next(iter(self.columns.values())))

    def rows(self, columns, start=0):
        for i in range(start, self.num_rows):
            yield {c: self.columns[c][i] for c in columns}


def write_table(path: Path, columns: dict, kinds: dict, real: bool) -> None:
    if real:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"binary": pa.binary(), "string": pa.string()}
        pq.write_table(pa.table({k: pa.array(v, type=types[kinds[k]]) for k, v in columns.items()}),
                       path, row_group_size=2)
    else:
        path.write_bytes(pickle.dumps({"columns": columns, "kinds": kinds}))


@pytest.fixture(params=["pyarrow", "stand-in"])
def parquet_writer(request, monkeypatch):
    """Writes tables with pyarrow (skipped when it is not installed) or the stand-in."""
    real = request.param == "pyarrow"
    if real and not HAS_PYARROW:
        pytest.skip("pyarrow is not installed: real parquet files cannot be written or read "
                    "(the stand-in variant covers the source logic)")
    if not real:
        monkeypatch.setattr(_parquet_io, "open_parquet", FakeTable)
    return lambda path, columns, kinds: write_table(path, columns, kinds, real)


@pytest.fixture(scope="module")
def emb():
    return tiny_embedder(0)


# --- sources ----------------------------------------------------------------------------------

def test_folder_source_skips_and_counts_bad_items_and_keeps_images(emb, tmp_path):
    src = make_folder(tmp_path / "src")
    pool = build_pool(src, tmp_path / "pool", emb, batch_size=4)
    assert len(pool) == 6 and pool.embeddings().shape == (6, 32)
    m = pool.manifest
    assert m["skipped"] == {"total": 2, "by_reason": {"cannot decode image": 1, "no caption": 1}}
    assert m["model_id"] == "tiny-clip-0" and m["images"] == "stored" and m["has_images"]
    assert m["sources"][0]["kind"] == "folder" and m["sources"][0]["records"] == 8
    skipped = [json.loads(line) for line in (tmp_path / "pool" / "skipped.jsonl").read_text().splitlines()]
    assert {s["key"] for s in skipped} == {"broken.png", "lonely.png"}
    captions = {pool.item(i).caption: i for i in range(len(pool))}
    assert set(captions) == {f"caption {i}" for i in range(6)}
    shutil.rmtree(src)  # stored images outlive the source
    i = captions["caption 3"]
    assert pool.item(i).source == "a/003.png" and pool.item(i).path is None
    assert np.array_equal(np.asarray(pool.load_image(i)), np.asarray(image(3)))
    vec = emb.encode_images([image(3)])
    np.testing.assert_allclose(pool.embeddings()[i], vec[0], atol=1e-5)


def test_folder_source_can_reference_files_instead_of_copying(emb, tmp_path):
    src = make_folder(tmp_path / "src", corrupt=False, uncaptioned=False)
    pool = build_pool(src, tmp_path / "pool", emb, copy_images=False)
    assert pool.manifest["images"] == "referenced" and (tmp_path / "pool" / "images.bin").stat().st_size == 0
    item = pool.item(0)
    assert Path(item.path).is_file() and pool.load_image(0).size == (40, 40)
    Path(item.path).unlink()
    with pytest.raises(PoolError, match="restore the file"):
        pool.load_image(0)


def test_webdataset_shards(emb, tmp_path):
    pool = build_pool(make_shards(tmp_path / "shards"), tmp_path / "pool", emb, batch_size=3)
    m = pool.manifest
    assert m["sources"][0]["kind"] == "webdataset" and len(pool) == 5
    assert m["skipped"]["by_reason"] == {"cannot decode image": 1, "no image": 1}
    by_source = {pool.item(i).source: pool.item(i) for i in range(len(pool))}
    assert by_source["00000.tar:000000001"].url == "https://x.test/1.png"
    assert by_source["00001.tar:000010000"].caption == "caption from json"
    i = by_source["00001.tar:000010002"].id
    assert np.array_equal(np.asarray(pool.load_image(i)), np.asarray(image(12)))


def test_webdataset_truncated_shard_keeps_what_it_read(emb, tmp_path):
    root = make_shards(tmp_path / "shards")
    data = (root / "00001.tar").read_bytes()
    (root / "00001.tar").write_bytes(data[:1536])  # cut inside the first record's json member
    pool = build_pool(root, tmp_path / "pool", emb)
    assert len(pool) == 3  # shard 0's good records
    assert pool.manifest["skipped"]["by_reason"] == {"cannot decode image": 1, "unreadable shard": 1}
    skipped = (tmp_path / "pool" / "skipped.jsonl").read_text()
    assert "00001.tar is damaged after member 2 (record 000010000 and the rest" in skipped


def test_parquet_with_bytes_and_paths(emb, tmp_path, parquet_writer):
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "img").mkdir()
    image(7).save(folder / "img" / "seven.png")
    parquet_writer(folder / "part-0.parquet",
                   {"jpg": [png_bytes(0), CORRUPT, png_bytes(2), None],
                    "caption": ["zero", "corrupt", None, "no image"],
                    "url": ["u0", "u1", "u2", "u3"]},
                   {"jpg": "binary", "caption": "string", "url": "string"})
    pool = build_pool(folder, tmp_path / "pool", emb, batch_size=2)
    assert pool.manifest["sources"][0]["image_column"] == "jpg"
    assert len(pool) == 1 and pool.item(0).caption == "zero" and pool.item(0).url == "u0"
    assert pool.manifest["skipped"]["by_reason"] == {"cannot decode image": 1, "no caption": 1, "no image": 1}

    paths = tmp_path / "by-path"
    paths.mkdir()
    shutil.copytree(folder / "img", paths / "img")
    parquet_writer(paths / "p.parquet", {"image_path": ["img/seven.png", "img/missing.png"],
                                         "TEXT": ["seven", "missing"]},
                   {"image_path": "string", "TEXT": "string"})
    pool = build_pool(paths, tmp_path / "pool2", emb)
    assert len(pool) == 1 and pool.item(0).caption == "seven"
    assert pool.manifest["skipped"]["by_reason"] == {"unreadable file": 1}
    assert np.array_equal(np.asarray(pool.load_image(0)), np.asarray(image(7)))


def test_parquet_unknown_columns_are_named(tmp_path, parquet_writer):
    parquet_writer(tmp_path / "x.parquet", {"blob": [b"x"], "words": ["y"]},
                   {"blob": "binary", "words": "string"})
    with pytest.raises(PoolError, match=r"holds the caption .*--caption-column"):
        open_source(tmp_path / "x.parquet")
    src = open_source(tmp_path / "x.parquet", caption_column="words", image_column="blob")
    assert [r.caption for r in src.records()] == ["y"]


def make_clip_retrieval(root: Path, writer, vectors: list[np.ndarray], rows: list[dict]) -> Path:
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for n, (vec, meta) in enumerate(zip(vectors, rows)):
        np.save(root / "img_emb" / f"img_emb_{n}.npy", vec)
        writer(root / "metadata" / f"metadata_{n}.parquet", meta, {k: "string" for k in meta})
    return root


def test_clip_retrieval_output_taken_without_reembedding(tmp_path, parquet_writer):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5, 8)).astype(np.float16)
    vecs[1] = np.nan  # a corrupt vector
    root = make_clip_retrieval(tmp_path / "cr", parquet_writer, [vecs[:3], vecs[3:]], [
        {"caption": ["a", "b", "c"], "url": ["u0", "u1", "u2"]},
        {"caption": ["d", "e"], "url": ["u3", "u4"]}])
    pool = build_pool(root, tmp_path / "pool", NoModel(), batch_size=2)
    m = pool.manifest
    assert m["sources"][0]["kind"] == "clip-retrieval" and len(pool) == 4
    assert m["skipped"]["by_reason"] == {"bad embedding": 1}
    assert m["has_images"] is False and m["images"] == "none"
    expected = vecs[[0, 2, 3, 4]].astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(pool.embeddings(), expected, atol=1e-6)
    assert [pool.item(i).caption for i in range(4)] == ["a", "c", "d", "e"]
    assert pool.item(2).source == "metadata_1.parquet#0" and pool.item(2).url == "u3"
    with pytest.raises(PoolError, match=r"must be downloaded from u3.*img2dataset"):
        pool.load_image(2)
    # a model id string is enough for sources that carry embeddings
    assert len(build_pool(root, tmp_path / "pool-by-id", "open_clip:ViT-B-32/openai")) == 4


def test_clip_retrieval_checks_dims_and_pairs(tmp_path, parquet_writer):
    vec = np.ones((2, 16), np.float32)
    root = make_clip_retrieval(tmp_path / "cr", parquet_writer, [vec], [{"caption": ["a", "b"]}])
    with pytest.raises(PoolError, match="16 dimensions but 'open_clip:ViT-B-32/openai' makes 8"):
        build_pool(root, tmp_path / "pool", NoModel())
    np.save(root / "img_emb" / "img_emb_1.npy", vec)
    with pytest.raises(PoolError, match="no partner metadata/metadata_1.parquet"):
        open_source(root)


def test_empty_or_unusable_source_is_a_clear_error(emb, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="No images found in .*empty"):
        build_pool(tmp_path / "empty", tmp_path / "p1", emb)
    with pytest.raises(PoolError, match="does not exist"):
        build_pool(tmp_path / "nowhere", tmp_path / "p2", emb)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(CORRUPT)
    (bad / "x.txt").write_text("x")
    (bad / "y.png").write_bytes(png_bytes(1))
    with pytest.raises(PoolError, match=r"All 2 records .* skipped \(1 cannot decode image, 1 no caption\)"):
        build_pool(bad, tmp_path / "p3", emb)
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(PoolError, match="has no records"):
        build_pool(tmp_path / "empty.tar", tmp_path / "p4", emb)
    assert issubclass(PoolError, BatError)


# --- resume -----------------------------------------------------------------------------------

class Killed(Exception):
    pass


def kill_after(records: int):
    def progress(event):
        if event.stage == "embed" and event.step >= records:
            raise Killed(f"killed after {event.step} records")
    return progress


def pool_files(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("created", "started", "build_seconds"):
        manifest.pop(key)
    return {"manifest": manifest, **{name: (folder / name).read_bytes() for name in
                                     ("embeddings.npy", "items.jsonl", "images.bin", "skipped.jsonl")}}


def test_resume_after_kill_continues_without_recomputing(emb, tmp_path):
    src = make_folder(tmp_path / "src", n=14)  # 16 records: 14 good, 1 corrupt, 1 uncaptioned
    out = tmp_path / "pool"
    first = CountingEmbedder(emb)
    with pytest.raises(Killed):
        build_pool(src, out, first, batch_size=4, progress=kill_after(8))
    assert first.images == 8 and not (out / "manifest.json").exists()
    state = json.loads((out / "build.json").read_text())
    assert state["consumed"] == 8 and state["items"] == 8
    with pytest.raises(PoolError, match="unfinished"):
        Pool.open(out)
    # a kill mid-batch leaves bytes past the last commit: they must be dropped
    with open(out / "embeddings.npy", "ab") as f:
        f.write(b"\0" * 100)
    with open(out / "items.jsonl", "ab") as f:
        f.write(b'{"caption": "half a line')

    second = CountingEmbedder(emb)
    pool = build_pool(src, out, second, batch_size=4)
    records_left = 16 - 8
    assert second.images == records_left - 2  # the corrupt one is decoded, never embedded
    assert len(pool) == 14 and not (out / "build.json").exists()

    whole = build_pool(src, tmp_path / "whole", emb, batch_size=4)
    assert len(whole) == 14
    assert pool_files(out) == pool_files(tmp_path / "whole")


@pytest.mark.parametrize("kind", ["webdataset", "parquet"])
def test_resume_mid_shard_or_file_equals_uninterrupted_build(kind, emb, tmp_path, monkeypatch):
    if kind == "webdataset":
        src = make_shards(tmp_path / "src")  # 8 records over 2 shards
    else:
        monkeypatch.setattr(_parquet_io, "open_parquet", FakeTable)
        (tmp_path / "src").mkdir()
        for part in range(2):
            write_table(tmp_path / "src" / f"part-{part}.parquet",
                        {"jpg": [png_bytes(10 * part + i) if i != 2 else CORRUPT for i in range(4)],
                         "caption": [f"c{part}{i}" for i in range(4)]},
                        {"jpg": "binary", "caption": "string"}, real=False)
        src = tmp_path / "src"
    first, second = CountingEmbedder(emb), CountingEmbedder(emb)
    with pytest.raises(Killed):
        build_pool(src, tmp_path / "pool", first, batch_size=3, progress=kill_after(3))
    build_pool(src, tmp_path / "pool", second, batch_size=3)
    whole = CountingEmbedder(emb)
    build_pool(src, tmp_path / "whole", whole, batch_size=3)
    assert first.images + second.images == whole.images  # nothing embedded twice
    assert pool_files(tmp_path / "pool") == pool_files(tmp_path / "whole")


def test_kill_while_indexing_resumes_at_the_index(tmp_path):
    src = make_clustered_folder(tmp_path / "src", 200)

    def kill_at_index(event):
        if event.stage == "index" and event.step == 0:
            raise Killed("killed while indexing")

    with pytest.raises(Killed):
        build_pool(src, tmp_path / "pool", PixelEmbedder(), progress=kill_at_index)
    again = CountingEmbedder(PixelEmbedder())
    pool = build_pool(src, tmp_path / "pool", again, flat_max=100, index_params={"tune_k": 20})
    assert again.images == 0 and len(pool) == 200 and pool.manifest["index"]["type"] == "ivf"


def test_resume_refuses_another_model_or_changed_source(emb, tmp_path):
    src = make_folder(tmp_path / "src", n=8, corrupt=False, uncaptioned=False)
    out = tmp_path / "pool"
    with pytest.raises(Killed):
        build_pool(src, out, emb, batch_size=2, progress=kill_after(2))
    with pytest.raises(PoolError, match=r"embeds with 'tiny-clip-0', not 'tiny-clip-1'"):
        build_pool(src, out, tiny_embedder(1), batch_size=2)
    (src / "new.png").write_bytes(png_bytes(50))
    with pytest.raises(PoolError, match="not that source as it was"):
        build_pool(src, out, emb, batch_size=2)
    (src / "new.png").unlink()
    assert len(build_pool(src, out, emb, batch_size=2)) == 8


def test_finished_pool_is_returned_not_rebuilt(emb, tmp_path):
    src = make_folder(tmp_path / "src", n=3, corrupt=False, uncaptioned=False)
    build_pool(src, tmp_path / "pool", emb)
    again = CountingEmbedder(emb)
    assert len(build_pool(src, tmp_path / "pool", again)) == 3 and again.images == 0
    with pytest.raises(PoolError, match="already holds a finished pool"):
        build_pool(src, tmp_path / "pool", tiny_embedder(1))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PoolError, match="not empty"):
        build_pool(src, tmp_path / "other", emb)


# --- the Pool ---------------------------------------------------------------------------------

def test_pool_built_with_one_model_is_refused_by_another(emb, tmp_path):
    src = make_folder(tmp_path / "src", n=3, corrupt=False, uncaptioned=False)
    build_pool(src, tmp_path / "pool", emb)
    other = tiny_embedder(1)
    with pytest.raises(PoolError, match=r"built with 'tiny-clip-0', but the query embedder is 'tiny-clip-1'"):
        Pool.open(tmp_path / "pool", other)
    pool = Pool.open(tmp_path / "pool", emb)
    with pytest.raises(PoolError, match="tiny-clip-1"):
        pool.check_embedder(other)
    with pytest.raises(PoolError, match=r"Queries must be \(n, 32\)"):
        pool.search(np.ones((1, 16), np.float32), k=1)


def test_search_items_and_random_ids(emb, tmp_path):
    src = make_folder(tmp_path / "src", n=5, corrupt=False, uncaptioned=False)
    pool = build_pool(src, tmp_path / "pool", emb)
    vecs = pool.embeddings()
    scores, ids = pool.search(vecs[2], k=8)  # one (dim,) query; k > N pads
    assert ids.shape == (1, 8) and ids[0, 0] == 2 and list(ids[0, 5:]) == [-1, -1, -1]
    assert np.all(np.isneginf(scores[0, 5:])) and np.all(np.diff(scores[0, :5]) <= 1e-6)
    assert sorted(ids[0, :5]) == [0, 1, 2, 3, 4]
    draw = pool.random_ids(3, seed=7)
    assert draw == pool.random_ids(3, seed=7) and len(set(draw)) == 3
    assert all(isinstance(i, int) for i in draw)
    with pytest.raises(PoolError, match="Cannot draw 6 distinct items from a pool of 5"):
        pool.random_ids(6, seed=0)
    with pytest.raises(PoolError, match=r"id 5 is out of range: this pool has ids 0..4"):
        pool.item(5)
    with pytest.raises(PoolError, match="not a pool"):
        Pool.open(tmp_path / "src")


class PixelEmbedder:
    """A stand-in CLIP whose vectors are the image's 4x4 colour blocks: structured, cheap."""

    model_id, dim = "pixels-4x4", 48

    def encode_images(self, images):
        x = np.stack([np.asarray(im.resize((4, 4), Image.BOX), np.float32).ravel() - 127.5
                      for im in images])
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts):
        raise NotImplementedError


def make_clustered_folder(root: Path, n: int, clusters: int = 8) -> Path:
    """n images, each a noisy copy of one of `clusters` block patterns."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    patterns = rng.integers(30, 225, (clusters, 4, 4, 3))
    for i in range(n):
        blocks = np.clip(patterns[i % clusters] + rng.integers(-20, 21, (4, 4, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), np.uint8))).save(root / f"{i:04d}.png")
        (root / f"{i:04d}.txt").write_text(f"pattern {i % clusters}")
    return root


def test_auto_index_by_size_is_recorded_and_reopened(tmp_path):
    src = make_clustered_folder(tmp_path / "src", 400)
    pool = build_pool(src, tmp_path / "pool", PixelEmbedder(), batch_size=100, flat_max=100,
                      index_params={"tune_k": 20})
    index = pool.manifest["index"]
    assert index["type"] == "ivf" and index["file"] == "index.faiss" and not index["exact"]
    assert {"nlist", "nprobe", "tuned_recall"} <= set(index["params"])
    assert index["params"]["tuned_recall"] >= 0.95
    reopened = Pool.open(tmp_path / "pool", PixelEmbedder())
    _, ids = reopened.search(reopened.embeddings()[:3], k=20)
    assert {pool.item(int(i)).caption for i in ids[1]} == {"pattern 1"}
    assert "index:    ivf (approximate, nlist=" in reopened.describe()
    assert len(build_pool(src, tmp_path / "small", PixelEmbedder(), flat_max=400)) == 400
    assert Pool.open(tmp_path / "small").manifest["index"]["type"] == "flat"


def test_auto_index_falls_back_to_exact_without_structure(emb, tmp_path):
    # the random tiny CLIP maps every image to nearly the same vector: no clusters to probe
    src = make_folder(tmp_path / "src", n=40, corrupt=False, uncaptioned=False)
    pool = build_pool(src, tmp_path / "pool", emb, batch_size=20, flat_max=10, index_params={"tune_k": 5})
    index = pool.manifest["index"]
    assert index["type"] == "flat" and "exact search instead" in index["params"]["note"]
    assert not (tmp_path / "pool" / "index.faiss").exists()
    forced = build_pool(src, tmp_path / "forced", emb, index="hnsw", index_params={"tune_k": 5})
    assert forced.manifest["index"]["type"] == "hnsw"
    _, ids = forced.search(forced.embeddings()[7], k=1)
    assert ids[0, 0] == 7


# --- embedders --------------------------------------------------------------------------------

def test_embedder_outputs_unit_vectors(emb):
    v = emb.encode_images([image(0), image(1).convert("L")])
    t = emb.encode_texts(["a red square", "a blue circle"])
    assert v.shape == t.shape == (2, 32) and v.dtype == t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert emb.encode_images([]).shape == (0, 32)


def save_open_clip_dir(folder: Path, seed: int = 0) -> Path:
    """The tiny model in open_clip's hub layout (open_clip_config.json + safetensors)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model, _, _ = tiny_clip(seed)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder


def test_load_embedder_from_local_open_clip_folder(tmp_path):
    folder = save_open_clip_dir(tmp_path / "tiny-clip")
    emb = load_embedder(str(folder), device="cpu")
    assert emb.model_id.startswith("open_clip:local-dir:tiny-clip@") and emb.dim == 32
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "tiny-clip")
    assert load_embedder(str(moved), device="cpu").model_id == emb.model_id  # named by content
    direct = tiny_embedder(0)
    np.testing.assert_allclose(emb.encode_texts(["a cat"]), direct.encode_texts(["a cat"]), atol=1e-5)


def test_load_embedder_failures_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(PoolError, match="Unknown open_clip model 'no-such-model'"):
        load_embedder("no-such-model", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(PoolError, match="not in the local cache .*local open_clip model folder"):
        load_embedder("ViT-B-32", "laion2b_s34b_b79k")
    monkeypatch.setenv("BAT_ASSETS", str(tmp_path / "no-assets"))  # shapes assets not built
    with pytest.raises(PoolError, match="shapes CLIP could not be loaded.*shapes build"):
        load_embedder("shapes")
    monkeypatch.setitem(__import__("sys").modules, "bat_app.shapes", None)
    with pytest.raises(PoolError, match="shapes assets are missing"):
        load_embedder("shapes")
