"""What the web app does, as plain functions over the library (no gradio here, so tests call them).

    settings = AppSettings.from_env()
    job = start_job(settings, ["a.png", "b.png", "c.png"], class_noun="star", methods=["none", "albat"])
    cancel_job(settings, job["job_id"])

Every user mistake raises a BatError subclass whose message names the problem and the fix;
``bat_app.ui.app`` turns it into a ``gr.Error`` and leaves the user's uploads where they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import jobs
from ..albat import METHODS
from ..compare.config import CompareConfig
from ..errors import ImageError, InputError
from ..images import IntakeLimits, load_user_images
from ..models.presets import presets
from .defaults import suggested_settings
from .settings import AppSettings

NO_POOL = "none"
POOL_METHODS = ("random", "clip", "albat")
# What the user reads next to each method (the base model is always the first column).
METHOD_LABELS = {
    "none": "DreamBooth-LoRA",
    "prior": "prior preservation (class images)",
    "random": "random backbone images",
    "clip": "CLIP-nearest backbone images",
    "albat": "ALBAT (BAT)",
}
DEFAULT_METHODS = ["none", "albat"]


# --- example subjects ----------------------------------------------------------------------

@dataclass
class Example:
    name: str
    class_noun: str
    images: list[Path]
    description: str = ""


def list_examples(subjects_dir: Path | None) -> list[Example]:
    """Every ``<name>/subject.json`` with its images under ``subjects_dir`` (none if missing)."""
    if subjects_dir is None or not Path(subjects_dir).is_dir():
        return []
    out = []
    for meta_path in sorted(Path(subjects_dir).glob("*/subject.json")):
        meta = json.loads(meta_path.read_text())
        images = sorted(p for p in meta_path.parent.iterdir()
                        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        out.append(Example(meta_path.parent.name, meta.get("class_noun", "object"), images,
                           meta.get("description", "")))
    return out


def get_example(subjects_dir: Path | None, name: str) -> Example:
    for ex in list_examples(subjects_dir):
        if ex.name == name:
            return ex
    names = [e.name for e in list_examples(subjects_dir)]
    raise InputError(f"No example subject {name!r}; available: {', '.join(names) or 'none (no subjects folder)'}.")


# --- choices -------------------------------------------------------------------------------

def model_choices(settings: AppSettings) -> list[str]:
    names = list(presets())
    return names if settings.model in names else [settings.model, *names]


def pool_choices(settings: AppSettings, model: str | None) -> list[str]:
    """Pools that fit ``model``: shapes' own data, the configured pool, pools in the data dir."""
    out = []
    if (model or settings.model) == "shapes":
        out.append("shapes")
    if settings.pool and settings.pool != "shapes":
        out.append(settings.pool)
    pools = settings.jobs.data_dir / "pools"
    if pools.is_dir():
        out += [str(p.parent) for p in sorted(pools.glob("*/manifest.json")) if not p.parent.name.startswith("shapes-")]
    return list(dict.fromkeys(out)) + [NO_POOL]


def default_pool(settings: AppSettings, model: str | None) -> str:
    choices = pool_choices(settings, model)
    if settings.pool in choices:
        return settings.pool
    return choices[0]


# --- uploads -------------------------------------------------------------------------------

def image_paths(value) -> list[str]:
    """File paths from what an upload component holds: paths, (path, caption) pairs or dicts."""
    paths = []
    for item in value or []:
        if isinstance(item, (list, tuple)):
            item = item[0]
        if isinstance(item, dict):
            item = item.get("path") or (item.get("image") or {}).get("path")
        if item:
            paths.append(str(item))
    return paths


def check_uploads(paths: list[str]) -> list[str]:
    """Problems and remarks about the uploads so far, one line each (empty: all good).

    Used while the user is still uploading, so fewer than 3 images is a hint, not an error.
    """
    if not paths:
        return []
    lines = []
    try:
        report = load_user_images([Path(p) for p in paths], limits=IntakeLimits(min_images=1, max_images=10_000))
        lines += list(report.warnings)
    except ImageError as exc:
        lines += [f"{Path(name).name}: {why}" for name, why in exc.problems.items()] or [str(exc)]
    limits = IntakeLimits()
    if len(paths) < limits.min_images:
        lines.append(f"{len(paths)} image(s) so far: add at least {limits.min_images - len(paths)} more "
                     f"({limits.min_images}-{limits.max_images} photos of the subject, varied views and backgrounds).")
    elif len(paths) > limits.max_images:
        lines.append(f"{len(paths)} images: remove {len(paths) - limits.max_images} (at most {limits.max_images}; "
                     f"more adds little and lengthens training).")
    return lines


# --- submit and cancel ---------------------------------------------------------------------

def build_config(settings: AppSettings, *, token: str = "sks", class_noun: str = "", model: str | None = None,
                 pool: str | None = None, methods: list[str] | None = None, steps=None, rank=None, lr=None,
                 resolution=None, seed=None, k=None, m=None, aug_weight=None, n_images: int = 5) -> CompareConfig:
    """The CompareConfig a Start press submits; empty fields take the defaults for ``n_images``."""
    model = (model or settings.model).strip()
    if pool in (None, ""):  # not given (API clients): the app's default for this model
        pool = default_pool(settings, model)
    pool = None if pool == NO_POOL else str(pool).strip()
    methods = list(methods if methods is not None else DEFAULT_METHODS)
    if not methods:
        raise InputError("No method selected: tick at least one of " +
                         ", ".join(METHOD_LABELS[m] for m in METHODS) + " (the base model is always shown).")
    if not (class_noun or "").strip():
        raise InputError("The class noun is empty: say what the subject is, e.g. 'dog', 'backpack' or 'star'.")
    needing = [METHOD_LABELS[m] for m in methods if m in POOL_METHODS]
    if needing and pool is None:
        raise InputError(f"{', '.join(needing)} need a backbone pool: pick one under 'Backbone pool', or "
                         f"untick them (see docs/space.md to build a pool).")
    if pool == "shapes" and model != "shapes":
        raise InputError("The 'shapes' pool is the shapes backbone's own data: pick the 'shapes' model, "
                         "or another pool.")
    preset = model if model in presets() else None
    d = suggested_settings(n_images, preset)
    pick = lambda value, key, cast: d[key] if value in (None, "") else cast(value)
    resolution = pick(resolution, "resolution", int)
    train = {"steps": pick(steps, "steps", int), "rank": pick(rank, "rank", int), "lr": pick(lr, "lr", float),
             "seed": pick(seed, "seed", int), "aug_weight": pick(aug_weight, "aug_weight", float)}
    if resolution:
        train["resolution"] = resolution
    train["checkpoint_every"] = max(1, train["steps"] // 4)
    return CompareConfig.from_dict({
        "token": (token or "sks").strip(), "class_noun": class_noun.strip(), "model": model, "pool": pool,
        "clip_model": settings.clip_model, "methods": methods, "train": train,
        "selection": {"k": pick(k, "k", int), "m": pick(m, "m", int)},
        "seeds": list(settings.seeds), "num_prompts": settings.preview_prompts,
    })


def start_job(settings: AppSettings, images, **form) -> dict:
    """Check the form and the images, submit the job. Returns job_id, queue_position, warnings."""
    paths = image_paths(images)
    limits = IntakeLimits()
    if len(paths) < limits.min_images:
        raise InputError(f"{len(paths)} image(s) uploaded: upload {limits.min_images}-{limits.max_images} photos "
                         f"of the subject (drag them onto the upload box), then press Start again.")
    config = build_config(settings, n_images=len(paths), **form)
    job_id = jobs.submit(config, paths, settings=settings.jobs)
    status = jobs.status(job_id, settings=settings.jobs)
    warnings = [m["text"].removeprefix("warning: ") for m in status["messages"] if m["text"].startswith("warning: ")]
    return {"job_id": job_id, "queue_position": status["queue_position"], "warnings": warnings,
            "config": config.to_dict()}


def normalize_job_id(text: str | None) -> str:
    job_id = (text or "").strip().lower()
    if not job_id:
        raise InputError("No job id: paste the id Start gave you (32 hexadecimal digits), or start a job.")
    return job_id


def cancel_job(settings: AppSettings, job_id: str) -> dict:
    return jobs.cancel(normalize_job_id(job_id), settings=settings.jobs)


@dataclass
class Form:
    """The Train tab's values for a model and an image count (what the UI shows at start)."""

    model: str
    pool: str
    pools: list[str]
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    advanced: dict = field(default_factory=dict)


def initial_form(settings: AppSettings, model: str | None = None, n_images: int = 0) -> Form:
    model = model or settings.model
    pool = default_pool(settings, model)
    methods = [m for m in DEFAULT_METHODS if pool != NO_POOL or m not in POOL_METHODS]
    return Form(model, pool, pool_choices(settings, model), methods,
                suggested_settings(n_images, model if model in presets() else None))
