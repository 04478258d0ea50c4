"""The compare pipeline: validate -> select -> train each method -> preview -> steps -> metrics -> package.

(With both `none` and `albat`, `none` is selected and trained first: its early steps are ALBAT's
surrogate, which the selection then finds cached; see ``_surrogate_from_plain_lora``.)

    result = run_compare(CompareConfig(class_noun="star", model="shapes", pool="shapes",
                                       methods=["none", "albat"]), image_paths, "runs/star")
    result.outputs["report"]      # report.md with the table and the cost per stage

Each stage is one function below, named as in the line above. Selection, training and preview
samples are expensive, so each writes a ``stage.json`` keyed on the inputs that produced it
(see :mod:`bat_app.compare.stages`): calling ``run_compare`` again reuses what is still right,
redoes what a changed setting feeds, and resumes training from its checkpoints after a crash
(the job queue relies on this). Metrics, the grid and the downloads are cheap and always rebuilt.
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


from ..albat import Selection, SelectionParams, needs_pool
from ..albat.run import run_selection, train_with_selection
from ..errors import Cancelled, InputError
from ..export import DIFFUSERS_FILE
from ..images import IntakeLimits, load_user_images
from ..models import load_components
from ..models.memory import check_environment, load_settings
from ..progress import ProgressEvent
from .config import BASE, CompareConfig
from .lanes import lane_count, run_in_lanes
from .previews import preview
from .steps import draw_steps, steps_stage
from .report import write_report
from .stages import RECORD, StageRecord, stage_key

# Selecting the others needs ALBAT's count first: random/clip/prior take as many items as it kept.
ORDER = ("albat", "clip", "random", "prior", "none")
# Selectors whose result depends on the training settings: ALBAT trains a surrogate LoRA, prior
# generates class images with the base model at the training resolution.
TRAINING_DEPENDENT = ("albat", "prior")


@dataclass
class CompareResult:
    out_dir: Path
    outputs: dict[str, str] = field(default_factory=dict)   # name -> path relative to out_dir
    metrics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)             # stage -> seconds


@dataclass
class CompareRun:
    """What the stages share: the settings, the loaded model and images, and the result so far."""

    config: CompareConfig
    out: Path
    emit: Callable[[ProgressEvent], None]
    cancel: Callable[[], bool] | None
    resume: bool
    result: CompareResult
    train_config: object = None
    components: object = None
    images: list = field(default_factory=list)   # checked UserImages
    resolution: int = 0
    pool: object = None
    embedder: object = None
    inputs: dict = field(default_factory=dict)   # what every stage key includes: model, images
    safety: dict = field(default_factory=dict)   # the preview safety check: enabled, present, hidden
    drawn: set = field(default_factory=set)      # preview columns the lanes drew in this run: read back
    #                                              by the preview stage even when not resuming
    helper: object = None                        # another lane's model lent to ALBAT's score (lanes.LaneHelp)

    def stage(self, name: str) -> float:
        """Announce a stage (after checking for a cancel); returns its start time."""
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"Cancelled before stage '{name}'; finished stages are kept in {self.out}.")
        self.emit(ProgressEvent(name, 0, 1, message=f"{name}"))
        return time.perf_counter()

    def tagged(self, method: str) -> Callable[[ProgressEvent], None]:
        def emit(event: ProgressEvent) -> None:
            event.method = method
            self.emit(event)
        return emit


def run_compare(config: CompareConfig, images: Sequence[str | Path] | str | Path, out_dir: str | Path, *,
                progress: Callable[[ProgressEvent], None] | None = None, cancel: Callable[[], bool] | None = None,
                resume: bool = True, limits: IntakeLimits | None = None) -> CompareResult:
    """Run every stage; ``resume=False`` redoes even the stages whose results are still valid."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = CompareRun(config, out, progress or (lambda e: None), cancel, resume, CompareResult(out))
    validate(run, images, limits)
    selections: dict[str, tuple[Selection, str]] = {}
    loras: dict[str, tuple[Path | None, str]] = {BASE: (None, "")}
    first = _surrogate_from_plain_lora(run)
    lanes = lane_count(run, config.methods)
    if first is not None:  # the plain LoRA's first steps are ALBAT's surrogate: train it first
        select(run, selections, ["none"])
        train(run, selections, loras, ["none"], snapshot=first)
    elif lanes > 1:  # a small model on a CPU: the methods train side by side (lanes.py)
        side_by_side(run, selections, loras, lanes)
    select(run, selections)
    train(run, selections, loras)
    loras = {BASE: loras[BASE], **{m: loras[m] for m in config.methods}}  # the grid's columns in the asked order
    columns, prompts, set_name = preview(run, loras)
    steps_stage(run, loras, columns)
    measure(run, columns, prompts, set_name, selections)
    package(run, loras, selections)
    run.emit(ProgressEvent("done", 1, 1))
    return run.result


# --- the stages, in order ------------------------------------------------------------------

def validate(run: CompareRun, images, limits: IntakeLimits | None) -> None:
    """Load the model, check the user's images, open the pool and the CLIP that scores."""
    t = run.stage("validate")
    config = run.config
    # The memory profile (dtype, a 4-bit base) shapes the load; bitsandbytes is checked first.
    train = config.train_config()
    check_environment(train, config.preset)
    run.components = load_components(config.model, **load_settings(train))
    # No recipe sets a resolution: it is the config's (or its memory profile's), else the model's own.
    run.resolution = train.resolution or run.components.spec.resolution
    report = load_user_images(images if isinstance(images, (str, Path)) else [Path(p) for p in images],
                              limits=limits or IntakeLimits(), resolution=run.resolution)
    run.images = report.images
    # The preset's recipe sets the steps (and k, m) from the number of photos.
    run.train_config = config.train_config(len(run.images))
    # The embedder is needed even without a pool: it scores every column (CLIP-I/T).
    run.pool, run.embedder = _pool_and_embedder(config, run.components, run.emit, len(run.images))
    spec = run.components.spec
    run.inputs = {"model": [spec.name, str(spec.source)], "images": [u.sha256 for u in run.images]}
    (run.out / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
    run.result.timings["validate"] = time.perf_counter() - t


def select(run: CompareRun, selections: dict[str, tuple[Selection, str]], methods=None) -> None:
    """Each method's backbone items, into ``selections``: method -> (selection, the key it was
    made with); ``methods``: only these (default: every method not selected yet)."""
    params = run.config.selection_params(len(run.images))
    wanted = run.config.methods if methods is None else methods
    for method in [m for m in ORDER if m in wanted and m not in selections]:
        t = run.stage("select")
        m_params = params
        if method != "albat" and "albat" in selections:
            m_params = SelectionParams(**{**params.to_dict(), "m": max(1, len(selections["albat"][0]))})
        key = _selection_key(run, method, m_params)
        record = StageRecord(run.out / "methods" / method / "selection")
        done = record.finished(key) if run.resume else None
        if done:
            selection = Selection.load(record.folder)
            selection.pool = run.pool
        else:
            record.start(key, run.resume)
            selection = run_selection(method, run.components, run.images, run.train_config, pool=run.pool,
                                      embedder=run.embedder, params=m_params, out_dir=record.folder,
                                      progress=run.tagged(method), cancel=run.cancel,
                                      helper=run.helper if method == "albat" else None)
            done = record.finish(key, time.perf_counter() - t)
        selections[method] = (selection, key)
        # A reused stage reports the cost it had when it ran, not the ~0 s of reusing it.
        run.result.timings[f"select:{method}"] = done["seconds"]


def train(run: CompareRun, selections: dict[str, tuple[Selection, str]], loras: dict[str, tuple[Path | None, str]],
          methods=None, snapshot=None) -> None:
    """One LoRA per method, all with the same settings, into ``loras``: method -> (LoRA folder,
    its key); ``methods``: only these (default: every method not trained yet). ``snapshot`` goes
    to ``train_lora`` (ALBAT's surrogate taken from the plain LoRA)."""
    wanted = run.config.methods if methods is None else methods
    for method in [m for m in wanted if m not in loras]:
        t = run.stage("train")
        selection, selection_key = selections[method]
        key = stage_key(stage="train", train=run.train_config.fingerprint(), selection=selection_key, **run.inputs)
        record = StageRecord(run.out / "methods" / method / "lora")
        done = record.finished(key) if run.resume else None
        if not done:
            record.start(key, run.resume)
            train_with_selection(run.components, run.images, run.train_config, selection, record.folder,
                                 resume=run.resume, progress=run.tagged(method), cancel=run.cancel,
                                 snapshot=snapshot)
            done = record.finish(key, time.perf_counter() - t)
        loras[method] = (record.folder, key)
        run.result.timings[f"train:{method}"] = done["seconds"]


def side_by_side(run: CompareRun, selections, loras, lanes: int) -> None:
    """select + train for every method, ``lanes`` methods at a time, each on its own model copy;
    the plain LoRA's lane trains ALBAT's surrogate first; a lane that ends while another still
    runs draws its preview column (and the base column)."""
    drawing = threading.Lock()

    def draw(lane: CompareRun, method: str) -> None:
        with drawing:  # the base column goes to the first lane that gets here
            columns = [c for c in (BASE, method) if c not in run.drawn]
            run.drawn.update(columns)
        preview(lane, {c: loras[c] for c in columns}, only=columns)
        with drawing:  # the earlier steps its training kept too: the steps stage reads them back
            run.drawn.add(f"{method}@steps")
        draw_steps(lane, method, loras[method])

    def before(lane: CompareRun, method: str) -> None:
        if method == "none" and "albat" in run.config.methods:
            _train_albat_surrogate(lane)
            _draw_class_images(lane)

    run_in_lanes(run, run.config.methods, lanes, lambda lane, m: select(lane, selections, m),
                 lambda lane, m: train(lane, selections, loras, m),
                 lambda: load_components(run.config.model, **load_settings(run.train_config)), draw, before)


def measure(run: CompareRun, columns, prompts, set_name: str, selections) -> dict:
    """metrics.json: CLIP-I/T, diversity, DINO when available, shapes scores on shapes."""
    from ..metrics import compute_metrics, json_safe, write_metrics

    t = run.stage("metrics")
    subject, classifier = _shapes_judges(run.components, run.config)
    metrics = compute_metrics(columns, prompts, [u.image for u in run.images], run.embedder, run.config.token,
                              run.config.class_noun, subject=subject, classifier=classifier)
    metrics["counts"] = {m: len(selections[m][0]) for m in run.config.methods}
    metrics["prompt_set"] = set_name
    metrics["safety_checker"] = run.safety
    write_metrics(run.out / "metrics.json", metrics)
    run.result.metrics = metrics = json_safe(metrics)  # what the file says, also in memory
    run.result.outputs["metrics"] = "metrics.json"
    run.result.timings["metrics"] = time.perf_counter() - t
    return metrics


def package(run: CompareRun, loras, selections) -> None:
    """One zip per method, timings.json and report.md."""
    t = run.stage("package")
    for method in run.config.methods:
        run.result.outputs.update(_zip_method(run.out, method, loras[method][0]))
    run.result.timings["package"] = time.perf_counter() - t
    (run.out / "timings.json").write_text(json.dumps(run.result.timings, indent=1))
    run.result.outputs["report"] = write_report(run.out, run.config, run.result.metrics, run.result.timings,
                                                run.result.outputs).name


# --- helpers -----------------------------------------------------------------------------

def _surrogate_from_plain_lora(run: CompareRun):
    """(step, save) when the run trains both the plain LoRA and ALBAT and the plain LoRA's first
    steps are exactly ALBAT's surrogate (``surrogate_snapshot``): the surrogate then costs
    nothing. None otherwise (one of them is not asked for, or either is already done)."""
    from ..albat.surrogate import surrogate_snapshot
    from ..paths import cache_dir

    if not {"none", "albat"} <= set(run.config.methods):
        return None
    params = run.config.selection_params(len(run.images))
    steps = params.surrogate_steps_for(run.train_config.steps)
    return surrogate_snapshot(run.components, run.images, run.train_config, steps, cache_dir())


def _selection_key(run: CompareRun, method: str, params: SelectionParams) -> str:
    return stage_key(stage="select", method=method, params=params.to_dict(), **run.inputs,
                     pool=_pool_identity(run.pool) if needs_pool(method) else None,
                     train=run.train_config.fingerprint() if method in TRAINING_DEPENDENT else None)


def _train_albat_surrogate(run: CompareRun) -> None:
    """ALBAT's surrogate into the cache where its selection looks for it, unless that selection
    is already done (a resumed run): the plain LoRA's lane does this first, while ALBAT's lane
    computes the backbone's losses on its candidates (the lanes then take about as long)."""
    from ..albat.surrogate import train_surrogate
    from ..paths import cache_dir

    params = run.config.selection_params(len(run.images))
    if run.resume and StageRecord(run.out / "methods" / "albat" / "selection").finished(
            _selection_key(run, "albat", params)):
        return
    steps = params.surrogate_steps_for(run.train_config.steps)
    train_surrogate(run.components, run.images, run.train_config, steps, cache_dir(), run.tagged("albat"),
                    run.cancel)


def _draw_class_images(run: CompareRun) -> None:
    """The prior-preservation class images both trainings need, drawn now (into the cache the
    trainer reads) by the plain lane before it joins ALBAT's score: ALBAT's lane scores alone
    meanwhile. Drawn later, when both trainings start together, one lane would wait for the
    other's draw (a lock per class-image folder)."""
    from ..paths import cache_dir
    from ..train.prior import ensure_class_images

    config = run.train_config
    if not (config.prior and config.prior_weight > 0):
        return
    emit = run.tagged("none")
    ensure_class_images(run.components, config.class_prompt_cycle, config.num_class_images,
                        config.resolution or run.components.spec.resolution, cache_dir(), seed=config.seed,
                        progress=lambda done, total: emit(ProgressEvent("class_images", done, total)))


def _pool_identity(pool) -> dict | None:
    """A rebuilt pool (new manifest) in the same folder invalidates the selections made from it."""
    if pool is None:
        return None
    return {"folder": str(pool.folder), "manifest": stage_key(**pool.manifest)}


def _pool_and_embedder(config: CompareConfig, components, emit=None, n_images: int | None = None):
    from ..albat.run import open_pool
    from .pools import GENERATED, default_embedder, ensure_generated_pool, resolve_pool

    if config.pool == GENERATED:  # as many samples as ALBAT's shortlist, indexed with the CLIP that scores
        from ..pool import Pool

        embedder = default_embedder(components, config.clip_model, config.clip_pretrained)
        pool = Pool.open(ensure_generated_pool(components, config.class_noun, config.selection_params(n_images).k,
                                               embedder, emit, safety_checker=config.safety_checker))
        pool.check_embedder(embedder)
        return pool, embedder
    pool_dir = resolve_pool(config.pool, components, emit)
    if pool_dir is None:
        if config.pool_methods():
            raise InputError(f"Methods {config.pool_methods()} "
                             f"need a backbone pool: set `pool` (a pool folder, 'generated', or 'shapes').")
        return None, default_embedder(components, config.clip_model, config.clip_pretrained)
    return open_pool(pool_dir, config.clip_model, config.clip_pretrained)


def _shapes_judges(components, config):
    """(subject, classifier) when the backbone is shapes and the class names a shapes subject."""
    if components.spec.preset != "shapes":
        return None, None
    from ..shapes import SUBJECTS, load_attribute_classifier

    matches = [s for s in SUBJECTS if s.class_noun == config.class_noun]
    if len(matches) != 1:
        return None, None
    return matches[0], load_attribute_classifier()


def _zip_method(out: Path, method: str, lora_dir: Path) -> dict[str, str]:
    """One zip per method: both LoRA files, the model card, loss curve, samples and selection."""
    zip_path = out / "downloads" / f"{method}_lora.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    files = [p for p in lora_dir.iterdir() if p.is_file() and p.name != RECORD]
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
