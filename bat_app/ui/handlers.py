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
from ..albat import METHODS, needs_pool
from ..compare.config import CompareConfig
from ..compare.pools import GENERATED
from ..errors import ImageError, InputError
from ..images import IntakeLimits, load_user_images
from ..limits import Limits, check_field, check_text
from ..models.memory import check_environment
from ..models.presets import presets
from ..train.data import read_caption
from .captions import parse_captions
from .defaults import suggested_settings
from .model_note import memory_profile
from .public import scrub
from .settings import AppSettings

NO_POOL = "none"
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
    captions: list[str] = field(default_factory=list)  # one per image ("" for none): its .txt


def list_examples(subjects_dir: Path | None) -> list[Example]:
    """Every ``<name>/subject.json`` with its images (and their .txt captions) under
    ``subjects_dir`` (none if missing)."""
    if subjects_dir is None or not Path(subjects_dir).is_dir():
        return []
    out = []
    for meta_path in sorted(Path(subjects_dir).glob("*/subject.json")):
        meta = json.loads(meta_path.read_text())
        images = sorted(p for p in meta_path.parent.iterdir()
                        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        out.append(Example(meta_path.parent.name, meta.get("class_noun", "object"), images,
                           meta.get("description", ""), [read_caption(image) or "" for image in images]))
    return out


def get_example(subjects_dir: Path | None, name: str) -> Example:
    for ex in list_examples(subjects_dir):
        if ex.name == name:
            return ex
    names = [e.name for e in list_examples(subjects_dir)]
    raise InputError(f"No example subject {name!r}; available: {', '.join(names) or 'none (no subjects folder)'}.")


# --- choices: what this server offers ---------------------------------------------------

@dataclass(frozen=True)
class Offer:
    """A model or pool a web user may pick: by ``name``; the job gets ``source``."""

    name: str     # shown and sent by the browser: a preset, a hub id, or a folder's last part
    source: str   # what the job config holds: preset name, hub id, folder path, or "shapes"


def _offer(spec: str) -> Offer:
    looks_like_path = spec.startswith(("/", ".", "~")) or Path(spec).expanduser().is_dir()
    return Offer(Path(spec).name if looks_like_path else spec, spec)


def _unique(offers) -> list[Offer]:
    seen, out = set(), []
    for offer in offers:
        if offer.name not in seen:  # the first of two same-named offers wins
            seen.add(offer.name)
            out.append(offer)
    return out


def model_offers(settings: AppSettings) -> list[Offer]:
    """The default model, the presets, and the models an operator allow-listed."""
    return _unique([_offer(settings.model), *[Offer(n, n) for n in presets()],
                    *[_offer(m) for m in settings.allowed_models]])


def generated_pool_note(config: CompareConfig, n_images: int) -> str:
    """What a 'generated' pool will cost this job (nothing when an earlier job drew it)."""
    from ..compare.pools import generated_pool_cost
    from ..models import resolve_model

    k = config.selection_params(n_images).k
    return (f"The 'generated' pool is drawn before selection if no earlier job drew it for this model and "
            f"class: {generated_pool_cost(resolve_model(config.model), k)}.")


def pool_offers(settings: AppSettings, model: str | None) -> list[Offer]:
    """Pools that fit ``model`` (a model name or source): shapes' own data, the configured pool,
    pools built in $BAT_HOME/pools, the operator's allow-list; "none" last."""
    offers = []
    if _model_source(settings, model) == "shapes":
        offers.append(Offer("shapes", "shapes"))
    if settings.pool and settings.pool != "shapes":
        offers.append(_offer(settings.pool))
    pools = settings.jobs.data_dir / "pools"
    if pools.is_dir():
        offers += [Offer(p.parent.name, str(p.parent)) for p in sorted(pools.glob("*/manifest.json"))
                   # the app's own: shapes' data, and generated pools (another user's class noun
                   # is in their captions: a job reaches its own by model and class, never by name)
                   if not p.parent.name.startswith(("shapes-", f"{GENERATED}-"))]
    offers += [_offer(p) for p in settings.allowed_pools]
    # The backbone's own samples of the class: always possible, drawn once (costly: say so).
    return _unique(offers) + [Offer(GENERATED, GENERATED), Offer(NO_POOL, NO_POOL)]


def _model_source(settings: AppSettings, model: str | None) -> str | None:
    if not model:
        return settings.model
    return next((o.source for o in model_offers(settings) if model in (o.name, o.source)), None)


def _pick(offers: list[Offer], value: str, what: str) -> str:
    for offer in offers:
        if value in (offer.name, offer.source):
            return offer.source
    raise InputError(f"{what} {value!r} is not offered by this server: choose one of "
                     f"{', '.join(o.name for o in offers)}.")


def model_choices(settings: AppSettings) -> list[str]:
    return [o.name for o in model_offers(settings)]


def pool_choices(settings: AppSettings, model: str | None) -> list[str]:
    return [o.name for o in pool_offers(settings, model)]


def model_name(settings: AppSettings, source: str | None = None) -> str:
    """The name the form shows for a model source (default: the app's model)."""
    return _offer(source or settings.model).name


def default_pool(settings: AppSettings, model: str | None) -> str:
    """The configured pool, else the first one at hand; never 'generated' (it costs K samplings:
    the user opts in), so without a pool the form starts at 'none'."""
    offers = pool_offers(settings, model)
    for offer in offers:
        if settings.pool and settings.pool == offer.source:
            return offer.name
    return next(o.name for o in offers if o.name != GENERATED)


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
    limits = Limits.from_env().intake()
    try:
        # the first max_images files are looked at even when there are too many (the count is
        # a line of its own); files past them are not decoded at all
        shown = paths[:limits.max_images]
        report = load_user_images([Path(p) for p in shown], limits=IntakeLimits(
            min_images=1, max_images=len(shown), max_file_bytes=limits.max_file_bytes,
            max_pixels=limits.max_pixels))
        lines += list(report.warnings)
    except ImageError as exc:
        lines += [f"{Path(name).name}: {why}" for name, why in exc.problems.items()] or [str(exc)]
    lines = [scrub(line) for line in lines]  # no upload paths, no operator-only advice
    if len(paths) < limits.min_images:
        lines.append(f"{len(paths)} image(s) so far: add at least {limits.min_images - len(paths)} more "
                     f"({limits.min_images}-{limits.max_images} photos of the subject, varied views and backgrounds).")
    elif len(paths) > limits.max_images:
        lines.append(f"{len(paths)} images: remove {len(paths) - limits.max_images} (at most {limits.max_images}; "
                     f"more adds little and lengthens training).")
    return lines


# --- submit and cancel ---------------------------------------------------------------------

# The Advanced settings: form key -> (config group, type).
NUMBERS = {"steps": ("train", int), "rank": ("train", int), "lr": ("train", float), "seed": ("train", int),
           "aug_weight": ("train", float), "resolution": ("train", int), "k": ("selection", int),
           "m": ("selection", int), "num_class_images": ("train", int), "step_choices": ("train", int)}


def _number(key: str, value, kind):
    """A form or API value as a number, or InputError naming the field (None: not given)."""
    from ..limits import FIELDS

    label = FIELDS[key][0]
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InputError(f"{label} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{label} must be a number, got {value!r:.40}.") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InputError(f"{label} must be a finite number, got {value!r}.")
    if kind is int:
        if not number.is_integer():
            raise InputError(f"{label} must be a whole number, got {value!r}.")
        return int(number)
    return number


def build_config(settings: AppSettings, *, token: str = "sks", class_noun: str = "", model: str | None = None,
                 pool: str | None = None, methods: list[str] | None = None, steps=None, rank=None, lr=None,
                 resolution=None, seed=None, k=None, m=None, aug_weight=None, pivotal=None,
                 prior=None, num_class_images=None, step_choices=None, n_images: int = 5,
                 captions: bool = False) -> CompareConfig:
    """The CompareConfig a Start press (or an API call) submits; empty fields take the defaults for
    ``n_images``. Model and pool must be among what the server offers; every number is within
    ``bat_app.limits`` (the message names the field, the limit and the fix). ``captions``: the
    photos come with captions (``parse_captions``) and training reads them."""
    limits = Limits.from_env()
    for label, text in (("The trigger token", token), ("The class noun", class_noun)):
        if text is not None and not isinstance(text, str):
            raise InputError(f"{label} must be text, got {type(text).__name__}.")
    model = _pick(model_offers(settings), model.strip(), "Model") if (model or "").strip() else settings.model
    if pool in (None, ""):  # not given (API clients): the app's default for this model
        pool = default_pool(settings, model)
    pool = str(pool).strip()
    if pool == "shapes" and model != "shapes":
        raise InputError("The 'shapes' pool is the shapes backbone's own data: pick the 'shapes' model, "
                         "or another pool.")
    pool = _pick(pool_offers(settings, model), pool, "Pool")
    pool = None if pool == NO_POOL else pool
    if methods is not None and (not isinstance(methods, (list, tuple)) or len(methods) > len(METHODS)):
        raise InputError(f"methods must be a list of at most {len(METHODS)} of {', '.join(METHODS)}.")
    methods = list(methods if methods is not None else DEFAULT_METHODS)
    if not methods:
        raise InputError("No method selected: tick at least one of " +
                         ", ".join(METHOD_LABELS[m] for m in METHODS if m in METHOD_LABELS) +
                         " (the base model is always shown).")
    token = (token or "sks").strip()
    check_text("The trigger token", token, limits.token_chars, None)
    class_noun = (class_noun or "").strip()
    if not class_noun:
        raise InputError("The class noun is empty: say what the subject is, e.g. 'dog', 'backpack' or 'star'.")
    check_text("The class noun", class_noun, limits.noun_chars, None)
    needing = [METHOD_LABELS.get(m, m) for m in methods if m in METHOD_LABELS and needs_pool(m)]
    if needing and pool is None:
        raise InputError(f"{', '.join(needing)} need a backbone pool: pick one under 'Backbone pool', or "
                         f"untick them.")
    preset = model if model in presets() else None
    d = suggested_settings(n_images, preset)
    given = {"steps": steps, "rank": rank, "lr": lr, "seed": seed, "aug_weight": aug_weight,
             "resolution": resolution, "k": k, "m": m, "num_class_images": num_class_images,
             "step_choices": step_choices}
    values = {}
    for key, (_, kind) in NUMBERS.items():
        value = _number(key, given[key], kind)
        values[key] = d[key] if value is None else value
        if not (key == "resolution" and values[key] == 0):  # 0: the model's own resolution
            check_field(key, values[key], limits, model)
    train = {key: values[key] for key, (group, _) in NUMBERS.items() if group == "train" and key != "resolution"}
    if values["resolution"]:
        train["resolution"] = values["resolution"]
    for name, value in (("pivotal", pivotal), ("prior", prior)):
        if value is not None:  # None (not given): the recipe's choice
            if not isinstance(value, bool):
                raise InputError(f"{name} must be true or false, got {value!r}.")
            train[name] = value
    if captions:
        train["captions"] = True
    train["checkpoint_every"] = max(1, train["steps"] // 4)
    # The preset's memory profile for this server's GPU (the model note says which and why).
    if (profile := memory_profile(preset)) is not None:
        train["memory_profile"] = profile
    config = CompareConfig.from_dict({
        "token": token, "class_noun": class_noun, "model": model, "pool": pool,
        "clip_model": settings.clip_model, "methods": methods, "train": train,
        "selection": {"k": values["k"], "m": values["m"]},
        "seeds": list(settings.seeds), "num_prompts": settings.preview_prompts,
        "safety_checker": settings.safety_checker,  # the operator's, never the web user's
    })
    if profile is not None:  # e.g. Flux on 24 GB without bitsandbytes: refused now, not after the queue
        check_environment(config.train_config(), preset)
    return config


def start_job(settings: AppSettings, images, client: str | None = None, captions=None, **form) -> dict:
    """Check the form and the images, submit the job for ``client`` (per-client cap; None: no
    cap). ``captions``: the Captions box (``parse_captions``). Returns job_id, queue_position,
    running (jobs running now), warnings, config."""
    paths = image_paths(images)
    limits = Limits.from_env()
    if not limits.photos_min <= len(paths) <= limits.photos_max:
        fix = "upload" if len(paths) < limits.photos_min else "remove some, keeping"
        raise InputError(f"{len(paths)} photo(s) uploaded: {fix} {limits.photos_min}-{limits.photos_max} photos "
                         f"of the subject (drag them onto the upload box), then press Start again.")
    lines = parse_captions(captions, len(paths))
    config = build_config(settings, n_images=len(paths), captions=lines is not None, **form)
    if lines is not None:  # a photo without a caption trains on the plain instance prompt
        prompt = config.train_config(len(paths)).prompt
        lines = [line or prompt for line in lines]
    job_id = jobs.submit(config, paths, settings=settings.jobs, client=client, limits=limits, captions=lines)
    status = jobs.status(job_id, settings=settings.jobs)
    warnings = [m["text"].removeprefix("warning: ") for m in status["messages"] if m["text"].startswith("warning: ")]
    if config.pool == GENERATED:
        warnings.append(generated_pool_note(config, len(paths)))
    return {"job_id": job_id, "queue_position": status["queue_position"], "running": status.get("running", 0),
            "warnings": warnings, "config": config.to_dict()}


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

    model: str          # names, as the dropdowns show them
    pool: str
    pools: list[str]
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    advanced: dict = field(default_factory=dict)


def initial_form(settings: AppSettings, model: str | None = None, n_images: int = 0) -> Form:
    """The form for ``model`` (a name; default: the app's model), names only: no server path."""
    model = model or model_name(settings)
    pool = default_pool(settings, model)
    methods = [m for m in DEFAULT_METHODS if pool != NO_POOL or not needs_pool(m)]
    return Form(model, pool, pool_choices(settings, model), methods,
                suggested_settings(n_images, model if model in presets() else None))
