"""Self-generated pools: the backbone's own samples for varied captions, a stand-in for its
pretraining data when none is at hand (no LAION download, no img2dataset).

    python -m bat_app pool generate --model sd15 --class-noun dog --n 1000 --out pools/dog-gen

    from bat_app.pool.generate import generate_pool, pool_captions
    pool = generate_pool(sampler, "sd15@...", "dog", 1000, "pools/dog-gen", embedder,
                         cache_root=cache_dir(), progress=print)

Stages: captions (every template x context x style x viewpoint of a prompt set kept as
data, ``generate_prompts.json``, in a seeded order: caption i never depends on n), sample
(image i from caption i with seed ``seed + i``, written to a cache folder keyed by model,
prompt set, class noun and seed; files already there are not drawn again, so a killed run
resumes and a bigger n tops up), build (the cached folder's first n images -> a pool, as any
folder source, itself resumable).

``sampler(captions, seeds) -> list[PIL.Image]`` is the backbone: the CLI wires a diffusers
pipeline (bat_app.models); tests pass a function. Keeping it a callable keeps the pool layer
free of model loading. A sampler that runs a safety checker returns ``(images, flags)``: each
image then gets a ``.json`` with ``punsafe`` 1.0 (flagged) or 0.0, which the pool build reads
as the item's unsafe score, so flagged samples are never selected (docs/pool.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bat_app.pool import store
from bat_app.errors import PoolError

PROMPTS_FILE = Path(__file__).with_name("generate_prompts.json")
KEYS = ("templates", "contexts", "styles", "viewpoints")
Sampler = Callable[[list[str], list[int]], list]


def load_prompt_set(path: Path | str | None = None) -> dict:
    """The prompt set (default the shipped one); PoolError naming what is wrong with a file."""
    path = Path(path) if path is not None else PROMPTS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PoolError(f"Prompt set {path} is not readable JSON ({exc}).") from exc
    bad = [k for k in KEYS if not (isinstance(data.get(k), list) and data[k]
                                   and all(isinstance(x, str) for x in data[k]))]
    if bad:
        raise PoolError(f"Prompt set {path} needs non-empty lists of strings under {', '.join(KEYS)}; "
                        f"{', '.join(bad)} missing or wrong. See {PROMPTS_FILE} for the format.")
    for t in data["templates"]:
        if "{noun}" not in t:
            raise PoolError(f"Template {t!r} in {path} has no {{noun}}: every caption must name the class.")
    return {k: data[k] for k in KEYS}


def pool_captions(class_noun: str, n: int, prompts: dict | None = None, seed: int = 0) -> list[str]:
    """n captions: the prompt set's combinations in a seeded order, cycled past their count."""
    if not class_noun or not class_noun.strip():
        raise PoolError("A generated pool needs a class noun (e.g. --class-noun dog).")
    p = prompts or load_prompt_set()
    combos = [(t, c, s, v) for t in p["templates"] for c in p["contexts"] for s in p["styles"]
              for v in p["viewpoints"]]
    order = np.random.default_rng(seed).permutation(len(combos))
    out = []
    for i in range(n):
        t, c, s, v = combos[order[i % len(combos)]]
        text = t.format(noun=class_noun.strip(), context=c, style=s, viewpoint=v)
        out.append(text)
    return out


def cache_folder(root: Path, model_key: str, class_noun: str, prompts: dict, seed: int) -> Path:
    """Where the samples of this model + prompt set + noun + seed are kept (shared by runs)."""
    key = json.dumps({"model": model_key, "noun": class_noun.strip(), "prompts": prompts, "seed": seed},
                     sort_keys=True)
    return Path(root) / "generated-pools" / hashlib.sha256(key.encode()).hexdigest()[:16]


def sample_images(sampler: Sampler, captions: list[str], folder: Path, seed: int = 0,
                  batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> int:
    """Draw the missing images of ``captions`` into ``folder``; returns how many were drawn.

    Image i is ``{i:06d}.png`` with caption ``{i:06d}.txt``; the png is written last (atomic
    rename), so a file pair is either complete or redone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(len(captions)) if not (folder / f"{i:06d}.png").is_file()]
    done = len(captions) - len(missing)
    if progress:
        progress(done, len(captions))
    for start in range(0, len(missing), batch_size):
        chunk = missing[start:start + batch_size]
        images = sampler([captions[i] for i in chunk], [seed + i for i in chunk])
        images, flags = images if isinstance(images, tuple) else (images, None)
        if len(images) != len(chunk) or (flags is not None and len(flags) != len(chunk)):
            raise PoolError(f"The sampler returned {len(images)} images for {len(chunk)} captions.")
        for j, (i, image) in enumerate(zip(chunk, images)):
            (folder / f"{i:06d}.txt").write_text(captions[i] + "\n")
            if flags is not None:  # the safety checker's verdict: the pool's unsafe score
                store.write_json(folder / f"{i:06d}.json", {"punsafe": 1.0 if flags[j] else 0.0})
            tmp = folder / f".{i:06d}.{os.getpid()}.png"
            image.save(tmp)
            os.replace(tmp, folder / f"{i:06d}.png")
        done += len(chunk)
        if progress:
            progress(done, len(captions))
    return len(missing)


def generate_pool(sampler: Sampler, model_key: str, class_noun: str, n: int, out: Path | str,
                  embedder, *, prompts: dict | None = None, seed: int = 0, batch_size: int = 4,
                  cache_root: Path | str, progress: Callable[[int, int], None] | None = None,
                  build_progress=None):
    """Sample (or reuse) n images of ``class_noun`` from the backbone and build a pool of them.

    Args:
        sampler: ``(captions, seeds) -> images`` drawing from the backbone.
        model_key: names the backbone in the cache key (e.g. its hub id and revision).
        out: the pool folder (as ``build_pool``: new, unfinished -> resumed, finished -> opened).
        embedder: the pool's CLIP.
        cache_root: the samples go to ``cache_root/generated-pools/<key>``.
        progress: ``(images ready, n)`` after each sampled batch.
    """
    from bat_app.pool.build import build_pool
    from bat_app.pool.sources import FolderSource

    if not isinstance(n, int) or n < 1:
        raise PoolError(f"n must be a positive integer, got {n!r}.")
    prompts = prompts or load_prompt_set()
    captions = pool_captions(class_noun, n, prompts, seed)
    folder = cache_folder(Path(cache_root), model_key, class_noun, prompts, seed)
    (folder.parent).mkdir(parents=True, exist_ok=True)
    store.write_json(folder.with_suffix(".json"), {"model": model_key, "noun": class_noun, "seed": seed,
                                                   "prompts": prompts})
    drawn = sample_images(sampler, captions, folder, seed, batch_size, progress)
    pool = build_pool(FolderSource(folder, limit=n), out, embedder, progress=build_progress)
    if "generated" not in pool.manifest:
        pool.manifest["generated"] = {"model": model_key, "class_noun": class_noun, "n": n,
                                      "seed": seed, "cache": str(folder), "drawn_this_run": drawn,
                                      "prompt_set": hashlib.sha256(json.dumps(prompts, sort_keys=True)
                                                                   .encode()).hexdigest()[:12]}
        store.write_json(Path(out) / store.MANIFEST, pool.manifest)
    return pool
