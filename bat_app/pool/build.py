"""Build a pool: read a source, embed it batch by batch, write the files, build the index.

    pool = build_pool("laion-shards/", "pools/laion", load_embedder("ViT-L-14", "openai"),
                      batch_size=256, progress=print)

Stages: check the output folder (finished -> return it, unfinished -> resume), embed
(decode, skip and count what is unusable, encode, commit), finish (final header, line
index), index (flat / ivf / hnsw by size), manifest. Each committed batch is recorded in
build.json, so a killed build run again with the same source and model continues after the
last commit without recomputing anything before it.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from bat_app.pool import store
from bat_app.pool.embedder import Embedder
from bat_app.errors import PoolError
from bat_app.progress import ProgressCallback, ProgressEvent
from bat_app.images.decode import BOMB_ERRORS, DECODE_ERRORS as IMAGE_DECODE_ERRORS
from bat_app.pool.index import FLAT_MAX, INDEX_FILE, INDEX_TYPES, build_index, choose_index
from bat_app.pool.pool import FORMAT, VERSION, Pool
from bat_app.pool.safety import SOURCE_COLUMNS, SafetyConfig, finalize as finalize_safety, scores_row
from bat_app.pool.sources import Record, Source, open_source

# What Pillow raises on damaged or hostile files (bat_app.images' one list), plus bombs.
DECODE_ERRORS = IMAGE_DECODE_ERRORS + BOMB_ERRORS
DRAFT_SIZE = 512          # JPEGs decode at a reduced scale >= this: CLIP sees <= 448 px anyway
EMBEDDED_BATCH = 4096     # commit size for sources that carry their own embeddings




def build_pool(source: Source | Path | str, out: Path | str, embedder: Embedder | str,
               batch_size: int = 64, progress: ProgressCallback | None = None, *,
               index: str = "auto", flat_max: int = FLAT_MAX, index_params: dict | None = None,
               copy_images: bool = True, safety: SafetyConfig | None = None,
               index_file: Path | str | None = None) -> Pool:
    """Build (or resume, or just open) the pool in ``out`` from ``source``.

    Args:
        source: a path (its layout picks the source type) or a :class:`Source`.
        out: the pool folder: new, empty, an unfinished build of the same source and model
            (resumed), or a finished one (returned as is).
        embedder: the CLIP :class:`Embedder`; for sources that carry embeddings
            (clip-retrieval) its ``model_id`` string is enough.
        batch_size: images per model call, and per commit.
        progress: called with a :class:`bat_app.progress.ProgressEvent` after each committed batch.
        index: "auto" (flat up to ``flat_max`` items, else ivf), "flat", "ivf" or "hnsw".
        index_params: passed to the index build (e.g. ``{"nlist": 1024, "nprobe": 32}``).
        copy_images: store image bytes in the pool (default), so it works after the source
            is gone; False keeps paths to images that are local files.
        index_file: a faiss index built by autofaiss over the source's embeddings
            (clip-retrieval output), adopted as the pool's index instead of building one.
            With ``index="auto"`` one found in the clip-retrieval folder (image.index,
            knn.index) is adopted without being named.
        safety: which content checks score the items (default: unsafe and watermark, from
            the source's columns, else zero-shot CLIP for web-trained models); see
            :mod:`bat_app.pool.safety`.
    """
    src = source if isinstance(source, Source) else open_source(source)
    model_id, dim = _model_of(embedder, src)
    safety = safety or SafetyConfig()
    adopt = _index_to_adopt(src, index, index_file)  # checked before any embedding is done
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PoolError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if index != "auto" and index not in INDEX_TYPES:
        raise PoolError(f"Unknown index type {index!r}; use auto, {', '.join(INDEX_TYPES)}.")
    out = Path(out)
    finished = _finished_pool(out, model_id, src)
    if finished is not None:
        return finished
    state = _resume_state(out, model_id, src, copy_images) or _new_state(out, model_id, dim, src, copy_images)
    writer = store.PoolWriter(out, state)
    try:
        if not state["embedded"]:
            _embed(src, writer, embedder, batch_size, progress, copy_images)
            state["embedded"] = True
            store.write_json(out / store.STATE, state)
        started = time.perf_counter()  # embedding time is added up per batch in the state
        if state["items"] == 0:
            raise PoolError(_nothing_kept(src, state))
        writer.finish()
    finally:
        writer.close()
    present = set(getattr(src, "safety_columns", None) or [])  # e.g. COYO's names, not LAION's
    names = {flag: next((c for c in cols if c in present), cols[0]) for flag, cols in SOURCE_COLUMNS.items()}
    checks = finalize_safety(out, safety, embedder, model_id, state.get("safety_from_column", {}), names)
    built = (_adopt(out, src, Path(adopt), progress, state) if adopt is not None
             else _index(out, state, index, flat_max, index_params, progress))
    state["seconds"] += time.perf_counter() - started
    store.write_json(out / store.MANIFEST, _manifest(state, src, built) | {"safety": checks})
    (out / store.STATE).unlink()
    _emit(progress, ProgressEvent("index", 1, 1, message=built.kind, items=state["items"], skipped=state["skipped"]))
    return Pool.open(out)


# --- stages --------------------------------------------------------------------------------

def _embed(src: Source, writer: store.PoolWriter, embedder, batch_size: int,
           progress: ProgressCallback | None, copy_images: bool) -> None:
    state = writer.state
    total = src.count()
    size = max(batch_size, EMBEDDED_BATCH) if src.has_embeddings else batch_size
    consumed = state["consumed"]
    batch: list[Record] = []
    src.restore_hint(state.get("source_hint"))  # e.g. Hub shards already read: not fetched again
    records = src.records(start=consumed)
    while True:
        batch.clear()
        for rec in records:
            batch.append(rec)
            if len(batch) == size:
                break
        if not batch:
            return
        started = time.perf_counter()
        items, images, vectors, skipped, safety = _prepare(batch, src, embedder, writer.dim, copy_images)
        consumed += len(batch)
        state["seconds"] += time.perf_counter() - started
        state["source_hint"] = src.resume_hint()
        writer.commit(items, images, vectors, skipped, consumed, safety)
        _emit(progress, ProgressEvent("embed", consumed, total, items=state["items"], skipped=state["skipped"]))


def _index(out: Path, state: dict, index: str, flat_max: int, index_params: dict | None,
           progress: ProgressCallback | None):
    kind = choose_index(state["items"], flat_max) if index == "auto" else index
    _emit(progress, ProgressEvent("index", 0, 1, message=kind, items=state["items"], skipped=state["skipped"]))
    vectors = np.load(out / store.EMBEDDINGS, mmap_mode="r")
    built = build_index(kind, vectors, out, **(index_params or {}))
    tuned = "tuned_recall" in built.params
    if index == "auto" and kind == "ivf" and tuned and built.params["nprobe"] * 2 > built.params["nlist"]:
        # No cluster structure: reaching the recall target means scanning most lists, which
        # is exact search with extra steps and a second copy of the vectors.
        note = (f"ivf needed nprobe {built.params['nprobe']} of {built.params['nlist']} lists "
                f"for recall {built.params['target_recall']}: exact search instead")
        built = build_index("flat", vectors, out)
        built.params["note"] = note
    if built.kind == "flat":
        (out / INDEX_FILE).unlink(missing_ok=True)  # from this or an earlier attempt
    return built


def _index_to_adopt(src: Source, index: str, index_file) -> Path | None:
    if index_file is not None:
        if not src.has_embeddings:
            raise PoolError(f"--index-file adopts an index built over a source's own embeddings "
                            f"(clip-retrieval output); {src.path} is a {src.kind} source, which is "
                            "embedded here, so its index is built here too.")
        if not Path(index_file).is_file():
            raise PoolError(f"Index file {index_file} does not exist.")
        return Path(index_file)
    finder = getattr(src, "index_file", None)
    return finder() if index == "auto" and finder is not None else None


def _adopt(out: Path, src: Source, path: Path, progress, state: dict):
    from bat_app.pool.index import AdoptedIndex
    from bat_app.pool.sources.clip_retrieval import index_param_near

    _emit(progress, ProgressEvent("index", 0, 1, message=f"adopting {path}", items=state["items"], skipped=state["skipped"]))
    table = store.ItemTable(out)
    try:  # the items' source keys place them among the index's labels
        keys = [table.get(i)["source"] for i in range(state["items"])]
    finally:
        table.close()
    vectors = np.load(out / store.EMBEDDINGS, mmap_mode="r")
    return AdoptedIndex.adopt(path, out, vectors, src.label_orders(keys), index_param_near(path),
                              {"adopted_index_bytes": path.stat().st_size})


def _prepare(batch: list[Record], src: Source, embedder, dim: int, copy_images: bool):
    """Records -> (item dicts, image bytes or None, (n, dim) vectors, skipped dicts,
    (n, 2) content scores from the source)."""
    items, images, decoded, vectors, skipped, safety = [], [], [], [], [], []
    for rec in batch:
        if rec.problem is None and not src.has_embeddings:
            rec = _load(rec, decoded)
        if rec.problem is not None:
            skipped.append({"key": rec.key, "reason": rec.problem, "detail": rec.detail})
            continue
        item = {"caption": rec.caption, "source": rec.key}
        if rec.url:
            item["url"] = rec.url
        keep_bytes = rec.image_bytes is not None and (copy_images or rec.image_path is None)
        if rec.image_path is not None and not keep_bytes:
            item["path"] = str(Path(rec.image_path).resolve())
        items.append(item)
        safety.append(scores_row(rec.safety))
        images.append(rec.image_bytes if keep_bytes else None)
        if src.has_embeddings:
            vectors.append(rec.embedding)
    if src.has_embeddings:
        out = np.asarray(vectors, np.float32).reshape(len(vectors), dim)
    else:
        out = np.asarray(embedder.encode_images(decoded), np.float32)
        if out.shape != (len(decoded), dim):
            raise PoolError(f"Embedder {embedder.model_id!r} returned shape {out.shape} for "
                            f"{len(decoded)} images; expected ({len(decoded)}, {dim}).")
        if not np.isfinite(out).all():
            raise PoolError(f"Embedder {embedder.model_id!r} returned NaN or inf: the model is "
                            "broken (or ran in a precision it does not support).")
    return items, images, out, skipped, np.asarray(safety, np.float32).reshape(len(items), 2)


def _load(rec: Record, decoded: list[Image.Image]) -> Record:
    """Read and decode the record's image; on failure return it with ``problem`` set."""
    data = rec.image_bytes
    if data is None:
        try:
            data = Path(rec.image_path).read_bytes()
        except OSError as exc:
            rec.problem, rec.detail = "unreadable file", str(exc)
            return rec
        rec.image_bytes = data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (DRAFT_SIZE, DRAFT_SIZE))
            image.load()
            decoded.append(image.convert("RGB"))
    except DECODE_ERRORS as exc:
        # Pillow names the BytesIO object, whose address would make the log differ run to run
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the data", str(exc))
        rec.problem, rec.detail = "cannot decode image", f"{type(exc).__name__}: {message}"
    return rec


# --- the output folder --------------------------------------------------------------------

def _model_of(embedder, src: Source) -> tuple[str, int]:
    if isinstance(embedder, str):
        if not src.has_embeddings:
            raise PoolError(f"{src.path} is a {src.kind} source: its images have to be embedded, "
                            f"so build_pool needs an Embedder, not only the model id {embedder!r}.")
        return embedder, src.dim
    if src.has_embeddings and src.dim != embedder.dim:
        raise PoolError(f"The embeddings in {src.path} have {src.dim} dimensions but "
                        f"{embedder.model_id!r} makes {embedder.dim}: they were made by another "
                        "model. Pass the model clip-retrieval used (--clip-model/--clip-pretrained).")
    return embedder.model_id, int(embedder.dim)


def _finished_pool(out: Path, model_id: str, src: Source) -> Pool | None:
    if (out / store.MANIFEST).is_file():
        pool = Pool.open(out)
        built_from = [s.get("fingerprint") for s in pool.manifest.get("sources", [])]
        if pool.manifest["model_id"] == model_id and built_from == [src.fingerprint()]:
            return pool
        raise PoolError(f"{out} already holds a finished pool ({len(pool)} items, model "
                        f"{pool.manifest['model_id']!r}, from {pool.manifest['sources'][0]['path']}). "
                        "Choose another --out, or delete it to rebuild.")
    if out.exists() and not out.is_dir():
        raise PoolError(f"--out {out} is a file; give a folder for the pool.")
    if out.is_dir() and not (out / store.STATE).exists() and any(out.iterdir()):
        raise PoolError(f"--out {out} is not empty and holds no pool or unfinished build; "
                        "choose a new or empty folder.")
    return None


def _resume_state(out: Path, model_id: str, src: Source, copy_images: bool) -> dict | None:
    path = out / store.STATE
    if not path.is_file():
        return None
    import json

    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PoolError(f"{path} is unreadable ({exc}); delete {out} and build again.") from exc
    if state.get("model_id") != model_id:
        raise PoolError(f"The unfinished build in {out} embeds with {state.get('model_id')!r}, "
                        f"not {model_id!r}. Resume it with the same model, or delete {out} to "
                        "start over with the new one.")
    if state["source"]["kind"] != src.kind or state["source"]["fingerprint"] != src.fingerprint():
        raise PoolError(f"The unfinished build in {out} read {state['source']['kind']} source "
                        f"{state['source']['path']}, and {src.path} is not that source as it was "
                        "(files added, removed or changed). Restore it, or delete "
                        f"{out} to start over.")
    if state["copy_images"] != copy_images:
        raise PoolError(f"The unfinished build in {out} was started with copy_images="
                        f"{state['copy_images']}; resume it the same way.")
    if state["items"] and store.SAFETY not in state["sizes"]:
        raise PoolError(f"The unfinished build in {out} was started by an older BAT Studio "
                        "(no content scores): delete it and build again.")
    for name, size in state["sizes"].items():
        if not (out / name).is_file() or (out / name).stat().st_size < size:
            raise PoolError(f"{out / name} is shorter than the build's last commit: the folder "
                            f"was changed. Delete {out} and build again.")
    return state


def _new_state(out: Path, model_id: str, dim: int, src: Source, copy_images: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT + "-build", "version": VERSION, "model_id": model_id, "dim": dim,
             "source": src.describe(), "copy_images": copy_images, "consumed": 0, "items": 0,
             "skipped": 0, "skipped_by_reason": {}, "stored": 0, "referenced": 0, "embedded": False, "sizes": {},
             "seconds": 0.0, "started": _now()}
    store.write_json(out / store.STATE, state)
    return state


def _manifest(state: dict, src: Source, index) -> dict:
    items = state["items"]
    stored, referenced = state["stored"], state["referenced"]
    images = ("stored" if stored == items else "referenced" if referenced == items
              else "none" if stored + referenced == 0 else "mixed")
    return {"format": FORMAT, "version": VERSION, "model_id": state["model_id"],
            "dim": state["dim"], "size": items,
            "index": {"type": index.kind, "exact": index.exact, "metric": "inner_product",
                      "file": None if index.kind == "flat" else INDEX_FILE, "params": index.params},
            "sources": [state["source"] | {"records": state["consumed"]}],
            "skipped": {"total": state["skipped"], "by_reason": state["skipped_by_reason"]},
            "has_images": images != "none", "images": images,
            "images_stored": stored, "images_referenced": referenced,
            "created": _now(), "started": state["started"],
            "build_seconds": round(state["seconds"], 1)}


def _nothing_kept(src: Source, state: dict) -> str:
    if state["consumed"] == 0:
        return f"The {src.kind} source {src.path} has no records: nothing to index."
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(state["skipped_by_reason"].items()))
    return (f"All {state['consumed']} records of {src.path} were skipped ({reasons}); see "
            f"skipped.jsonl in the pool folder for each one. Nothing to index.")


def _emit(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    if progress is not None:
        progress(event)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
