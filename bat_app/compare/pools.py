"""Which pool a compare run selects from, and the CLIP that scores it.

``pool: "shapes"`` means the shapes backbone's own pretraining data, rendered and indexed in the
data dir on first use (``$BAT_HOME/pools/shapes-<n>``; 10,000 items, about a minute on CPU)
and reused by every later run and job.

``pool: "generated"`` is for a backbone without a pool at hand: the backbone's own samples of
the class (``bat_app.pool.generate``: varied contexts, styles and viewpoints), as many as
ALBAT's shortlist K, drawn and indexed on first use under ``$BAT_HOME/pools/generated-<key>``
(keyed by model, sampling settings, class noun and size; resumable) and reused by later jobs.
It costs K samplings of the backbone (:func:`generated_pool_cost`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..errors import InputError
from ..paths import cache_dir, data_dir

# Set to override BAT_SHAPES_POOL_SIZE in this process (tests, benchmarks' --quick).
SHAPES_POOL_SIZE: int | None = None


def shapes_pool_size() -> int:
    """Items in the shapes pool: SHAPES_POOL_SIZE, else BAT_SHAPES_POOL_SIZE (read at call
    time, so the app and its job processes agree), else 10,000."""
    return SHAPES_POOL_SIZE or int(os.environ.get("BAT_SHAPES_POOL_SIZE", 10_000))


def shapes_pool_dir(n: int | None = None, root: Path | None = None) -> Path:
    return (root or data_dir()) / "pools" / f"shapes-{n or shapes_pool_size()}"


def ensure_shapes_pool(n: int | None = None, progress=None, root: Path | None = None) -> Path:
    """Render the first n pretraining items and index them with the shapes CLIP (once), in the
    data dir ``root`` (default: $BAT_HOME's).

    ``progress`` gets ProgressEvents of stage "pool" ("building the shapes pool: rendering
    2,500/10,000"), so a first job shows what it waits for instead of sitting at "validate".
    One process builds at a time (a file lock; the app starts a build when it starts, and a job
    or the Pools tab may ask at the same moment): the others wait and then use its result.
    """
    from filelock import FileLock, Timeout

    from ..progress import ProgressEvent

    n = n or shapes_pool_size()
    out = shapes_pool_dir(n, root)
    if _current(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out.parent / f".shapes-{n}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if progress:
            progress(ProgressEvent("pool", 0, 1, message="waiting for the shapes pool, which another process is building"))
        lock.acquire()
    try:
        if not _current(out):  # not built while we waited
            if (out / "manifest.json").is_file():  # embedded by an earlier shapes CLIP
                shutil.rmtree(out)
            _build_shapes_pool(out, n, progress)
    finally:
        lock.release()
    return out


def _current(out: Path) -> bool:
    """A finished shapes pool embedded by the shipped shapes CLIP."""
    from ..pool.embedder import SHAPES_MODEL_ID

    manifest = out / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("model_id") == SHAPES_MODEL_ID


def _build_shapes_pool(out: Path, n: int, progress) -> None:
    from ..pool import build_pool, load_embedder
    from ..progress import ProgressEvent
    from ..shapes.pool import write_pool

    source = out.parent / f".shapes-{n}-images"
    if not (source / "shapes_attributes.jsonl").is_file() or len(list(source.glob("*.png"))) < n:
        shutil.rmtree(source, ignore_errors=True)
        write_pool(source, n, seed=0, progress=(lambda done, total: progress(ProgressEvent(
            "pool", done, 2 * total, message=f"building the shapes pool: rendering {done:,}/{total:,}")))
            if progress else False)

    def indexed(event) -> None:  # pool.build's events -> the second half of the same bar
        if progress and event.stage == "embed":
            progress(ProgressEvent("pool", n + event.step, 2 * n,
                                   message=f"building the shapes pool: indexing {event.step:,}/{n:,}"))

    build_pool(source, out, load_embedder("shapes"), batch_size=256, progress=indexed)
    shutil.rmtree(source, ignore_errors=True)  # the pool keeps its own copy of every image


GENERATED = "generated"


def generated_pool_dir(model_key: str, class_noun: str, n: int) -> Path:
    digest = hashlib.sha256(json.dumps([model_key, class_noun.strip().lower(), n]).encode()).hexdigest()[:12]
    return data_dir() / "pools" / f"generated-{digest}"


def generated_pool_cost(spec, n: int) -> str:
    """What a generated pool costs, in the words the UI shows before a job starts."""
    steps = spec.sampling.get("steps", 30)
    return (f"{n:,} samples of the backbone ({steps} steps each at {spec.resolution} px, "
            f"{n * steps:,} denoiser passes with guidance), once per model and class")


def ensure_generated_pool(components, class_noun: str, n: int, embedder, progress=None,
                          safety_checker: bool = True) -> Path:
    """The backbone's own n samples of ``class_noun`` as a pool (drawn and indexed once); with
    ``safety_checker``, what the model's checker flags is scored unsafe (never selected)."""
    from ..pool.generate import generate_pool
    from ..preview.sample import backbone_sampler
    from ..progress import ProgressEvent

    sampler, model_key = backbone_sampler(components, safety_checker=safety_checker)
    out = generated_pool_dir(model_key, class_noun, n)
    if (out / "manifest.json").is_file():
        return out

    def sampled(done: int, total: int) -> None:
        if progress:
            progress(ProgressEvent("pool", done, 2 * total, message=f"generating the pool: {done:,}/{total:,} "
                                                                     f"images of {class_noun}"))

    def indexed(event) -> None:
        if progress and event.stage == "embed":
            progress(ProgressEvent("pool", n + event.step, 2 * n,
                                   message=f"generating the pool: indexing {event.step:,}/{n:,}"))

    generate_pool(sampler, model_key, class_noun, n, out, embedder, batch_size=components.spec.sample_batch,
                  cache_root=cache_dir(), progress=sampled, build_progress=indexed)
    return out


def resolve_pool(pool: str | None, components, progress=None) -> Path | None:
    """The pool folder a run uses: None, "shapes", or a folder (a generated pool is
    :func:`ensure_generated_pool`'s: it needs the class and the CLIP)."""
    if pool is None:
        return None
    if pool == "shapes":
        if components.spec.preset != "shapes":
            raise InputError("pool 'shapes' is the shapes backbone's data: use it with model 'shapes'.")
        return ensure_shapes_pool(progress=progress)
    path = Path(pool).expanduser()
    if not path.is_dir():
        raise InputError(f"Pool folder {path} does not exist. Build one with "
                         f"`python -m bat_app pool build SOURCE --out {path}`.")
    return path


def default_embedder(components, clip_model: str | None = None, clip_pretrained: str | None = None):
    """The CLIP that scores previews when no pool is used: the one given, the shapes CLIP on
    shapes, else open_clip ViT-B/32 (LAION-2B)."""
    from ..pool import load_embedder

    if clip_model is not None:
        return load_embedder(clip_model, clip_pretrained)
    return preset_embedder(components.spec.preset)


def preset_embedder(preset: str | None):
    """A preset's own CLIP (the shapes CLIP on shapes, else open_clip ViT-B/32, LAION-2B): what
    scores previews without a pool and names the photos' backgrounds (``ui.captions``)."""
    from ..pool import load_embedder

    if preset == "shapes":
        return load_embedder("shapes")
    return load_embedder("ViT-B-32", "laion2b_s34b_b79k")
