"""The compare pipeline: validate -> select -> train each method -> preview -> metrics -> package.

    result = run_compare(CompareConfig(class_noun="star", model="shapes", pool="shapes",
                                       methods=["none", "albat"]), image_paths, "runs/star")
    result.outputs["report"]      # report.md with the table and the cost per stage

Every stage writes its results under ``out_dir`` and is skipped when they are already there,
and training resumes from its checkpoints, so calling it again after a crash continues where
it stopped (the job queue relies on this).
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from ..albat import Selection, SelectionParams
from ..albat.run import run_selection, train_with_selection
from ..errors import Cancelled, InputError
from ..export import DIFFUSERS_FILE
from ..images import IntakeLimits, load_user_images
from ..models import load_components
from ..preview import comparison_grid, default_prompt_set, load_prompt_set, sample_images
from ..train.progress import ProgressEvent
from .config import BASE, CompareConfig
from .report import write_report

# Selecting the others needs ALBAT's count first: random/clip/prior take as many items as it kept.
ORDER = ("albat", "clip", "random", "prior", "none")


@dataclass
class CompareResult:
    out_dir: Path
    outputs: dict[str, str] = field(default_factory=dict)   # name -> path relative to out_dir
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)             # stage -> seconds


def run_compare(config: CompareConfig, images: Sequence[str | Path] | str | Path, out_dir: str | Path, *,
                progress: Callable[[ProgressEvent], None] | None = None, cancel: Callable[[], bool] | None = None,
                resume: bool = True, limits: IntakeLimits | None = None) -> CompareResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda e: None)
    result = CompareResult(out)
    timings = result.timings
    # A resumed run reports the cost a stage had when it ran, not the ~0 s of reusing it.
    previous = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}

    def record(name: str, started: float, reused: bool) -> None:
        timings[name] = previous.get(name, 0.0) if reused else time.perf_counter() - started

    def stage(name: str):
        if cancel is not None and cancel():
            raise Cancelled(f"Cancelled before stage '{name}'; finished stages are kept in {out}.")
        emit(ProgressEvent(name, 0, 1, message=f"{name}"))
        return time.perf_counter()

    # validate --------------------------------------------------------------------------
    t = stage("validate")
    train_config = config.train_config()
    components = load_components(config.model)
    resolution = train_config.resolution or components.spec.resolution
    report = load_user_images(images if isinstance(images, (str, Path)) else [Path(p) for p in images],
                              limits=limits or IntakeLimits(), resolution=resolution)
    # The embedder is needed even without a pool: it scores every column (CLIP-I/T).
    pool, embedder = _pool_and_embedder(config, components)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    timings["validate"] = time.perf_counter() - t

    # select ----------------------------------------------------------------------------
    selections: dict[str, Selection] = {}
    params = config.selection_params()
    for method in [m for m in ORDER if m in config.methods]:
        t = stage("select")
        folder = out / "methods" / method / "selection"
        reused = resume and (folder / "selection.json").is_file()
        if reused:
            selections[method] = Selection.load(folder)
            selections[method].pool = pool
        else:
            m_params = params
            if method != "albat" and "albat" in selections:
                m_params = SelectionParams(**{**params.to_dict(), "m": max(1, len(selections["albat"]))})
            selections[method] = run_selection(method, components, report.images, train_config, pool=pool,
                                               embedder=embedder, params=m_params, out_dir=folder,
                                               progress=_tag(emit, method), cancel=cancel)
        record(f"select:{method}", t, reused)

    # train -----------------------------------------------------------------------------
    loras: dict[str, Path | None] = {BASE: None}
    for method in config.methods:
        t = stage("train")
        lora_dir = out / "methods" / method / "lora"
        reused = resume and (lora_dir / DIFFUSERS_FILE).is_file() and (lora_dir / "training_log.json").is_file()
        if not reused:
            train_with_selection(components, report.images, train_config, selections[method], lora_dir,
                                 resume=resume, progress=_tag(emit, method), cancel=cancel)
        loras[method] = lora_dir
        record(f"train:{method}", t, reused)

    # preview ---------------------------------------------------------------------------
    t = stage("preview")
    set_name = config.prompt_set or default_prompt_set(components.spec.preset or components.spec.name,
                                                       config.class_noun)
    prompt_set = load_prompt_set(set_name)
    prompts = prompt_set.prompts(config.token, config.class_noun, limit=config.num_prompts)
    prompts.append(("class", prompt_set.class_text(config.class_noun)))  # class-prior check, no token
    columns = {}
    reused = True
    for method, lora in loras.items():
        columns[method], drawn = _cached_samples(components, [p for _, p in prompts], config.seeds, lora,
                                          out / "previews" / "samples" / method, _tag(emit, method), cancel)
        reused = reused and not drawn
    grid = comparison_grid(columns, [p for _, p in prompts], cell=64 if resolution <= 64 else 128)
    grid.save(out / "previews" / f"grid_{set_name}.png")
    result.outputs["grid"] = f"previews/grid_{set_name}.png"
    record("preview", t, reused)

    # metrics ---------------------------------------------------------------------------
    t = stage("metrics")
    subject, classifier = _shapes_judges(components, config)
    metrics = _compute_metrics(columns, prompts, report.images, embedder, config, subject, classifier)
    metrics["counts"] = {m: len(selections[m]) for m in config.methods}
    metrics["prompt_set"] = set_name
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    result.metrics = metrics
    result.outputs["metrics"] = "metrics.json"
    timings["metrics"] = time.perf_counter() - t

    # package ---------------------------------------------------------------------------
    t = stage("package")
    for method in config.methods:
        result.outputs.update(_package(out, method, loras[method], selections[method]))
    timings["package"] = time.perf_counter() - t
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    result.outputs["report"] = write_report(out, config, metrics, timings, result.outputs).name
    emit(ProgressEvent("done", 1, 1))
    return result


# --- helpers -----------------------------------------------------------------------------

def _tag(emit, method: str):
    def tagged(event: ProgressEvent):
        event.method = method
        emit(event)
    return tagged


def _pool_and_embedder(config: CompareConfig, components):
    from .pools import resolve_pool

    from ..albat.run import open_pool

    pool_dir = resolve_pool(config.pool, components)
    if pool_dir is None:
        if config.needs_pool():
            raise InputError(f"Methods {[m for m in config.methods if m in ('random', 'clip', 'albat')]} "
                             f"need a backbone pool: set `pool` (a pool folder, or 'shapes').")
        from .pools import default_embedder

        return None, default_embedder(components, config.clip_model, config.clip_pretrained)
    return open_pool(pool_dir, config.clip_model, config.clip_pretrained)


def _cached_samples(components, prompts, seeds, lora, folder: Path, emit, cancel):
    """(images, drawn): preview images, read back from disk when a previous run drew them."""
    paths = [[folder / f"p{p:02d}_s{seed}.png" for seed in seeds] for p in range(len(prompts))]
    if all(path.is_file() for row in paths for path in row):
        return [[Image.open(path).convert("RGB") for path in row] for row in paths], False
    if cancel is not None and cancel():
        raise Cancelled("Cancelled while rendering previews.")
    images = sample_images(components, prompts, seeds, lora,
                           progress=lambda d, t: emit(ProgressEvent("preview", d, t)))
    folder.mkdir(parents=True, exist_ok=True)
    for row, row_paths in zip(images, paths):
        for image, path in zip(row, row_paths):
            image.save(path)
    return images, True


def _shapes_judges(components, config):
    """(subject, classifier) when the backbone is shapes and the class names a shapes subject."""
    if components.spec.preset != "shapes":
        return None, None
    from ..shapes import SUBJECTS, load_attribute_classifier

    matches = [s for s in SUBJECTS if s.class_noun == config.class_noun]
    if len(matches) != 1:
        return None, None
    return matches[0], load_attribute_classifier()


def _compute_metrics(columns, prompts, images, embedder, config, subject, classifier) -> dict:
    from ..metrics import compute_metrics

    return compute_metrics(columns, prompts, [u.image for u in images], embedder, config.token,
                           config.class_noun, subject=subject, classifier=classifier)


def _package(out: Path, method: str, lora_dir: Path, selection: Selection) -> dict[str, str]:
    """One zip per method: both LoRA files, the model card, loss curve and preview samples."""
    zip_path = out / "downloads" / f"{method}_lora.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    files = [p for p in lora_dir.iterdir() if p.is_file()]
    samples = sorted((out / "previews" / "samples" / method).glob("*.png"))
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f.name)
        for f in samples:
            z.write(f, f"samples/{f.name}")
        sel = out / "methods" / method / "selection"
        for name in ("selection.json", "selection.jsonl", "contact_sheet.png"):
            if (sel / name).is_file():
                z.write(sel / name, f"selection/{name}")
    tmp.replace(zip_path)
    kohya = next((f for f in files if f.name.endswith("_kohya.safetensors")), None)
    out_files = {f"{method}:zip": str(zip_path.relative_to(out)),
                 f"{method}:diffusers": str((lora_dir / DIFFUSERS_FILE).relative_to(out))}
    if kohya:
        out_files[f"{method}:kohya"] = str(kohya.relative_to(out))
    return out_files
