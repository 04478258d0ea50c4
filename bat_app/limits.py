"""Bounds on everything a user can ask of the server, as operator settings with safe defaults.

    limits = Limits.from_env()             # BAT_LIMIT_STEPS=20000 ... on a big GPU server
    check_config(config)                   # a CompareConfig: LimitError naming field, limit and fix
    load_user_images(paths, limits=limits.intake())   # photo count, bytes and pixels

Every number a job takes (steps, rank, resolution, K, m ...) has an upper bound here, so that one
request cannot hold the worker for days or exhaust its memory, and every text (token, class noun,
prompts) has a length and a syntax, so that it fits in file names and in the text encoder.
``CompareConfig`` calls :func:`check_config` when it is built, so the bounds hold for the web form,
the API, ``python -m bat_app submit CONFIG.json`` and the job JSON a worker reads alike.

Each limit is read from ``BAT_LIMIT_<NAME>`` (e.g. ``BAT_LIMIT_STEPS``) at call time; see
docs/security.md for the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, LimitError

SEED_MAX = 2**32 - 1          # numpy's seed range; torch would take more, nothing needs it
STRENGTH_MIN, STRENGTH_MAX = 0.0, 2.0   # "Try it"'s LoRA strength: off .. twice as trained
GUIDANCE_MIN, GUIDANCE_MAX = 1.0, 20.0  # "Try it"'s CFG scale (1: no guidance)
MAX_PRIOR_CONTEXTS = 256       # phrases the class images' prompts take in turn (TrainConfig.prior_contexts)
RESOLUTION_FACTOR = 2         # training above twice a model's native size only costs memory
ENV_PREFIX = "BAT_LIMIT_"
# A class noun becomes part of file names (the kohya LoRA, the model card): letters, digits,
# spaces, hyphens and apostrophes only, starting with a letter or digit.
NOUN = re.compile(r"[^\W_][\w' \-]*")
MODULE = re.compile(r"[\w.]{1,64}")   # a LoRA target module name, e.g. "to_q" or "attn1.to_k"


@dataclass(frozen=True)
class Limits:
    """Upper bounds (lower bounds are fixed by what makes sense). Defaults suit a shared
    server with one GPU: the largest default recipe (sd15, 10 photos: 1,000 steps, rank 8,
    m=200, K=1,000) fits with room to spare."""

    steps: int = 5_000              # training steps per method (and surrogate, warmup)
    rank: int = 128                 # LoRA rank
    alpha: float = 1024.0           # LoRA alpha (scale = alpha / rank)
    lr: float = 0.01                # learning rates (typical: 1e-4; the shapes recipe 1e-3)
    resolution: int = 1024          # pixels; also at most RESOLUTION_FACTOR x the model's own
    batch_size: int = 8             # instance images per step
    k: int = 5_000                  # ALBAT retrieval candidates (each costs 2 x draws UNet passes)
    m: int = 500                    # backbone images kept
    weight: float = 10.0            # lambda (aug_weight) and the prior-preservation weight
    draws: int = 32                 # ALBAT (t, noise) draws per candidate
    class_images: int = 200         # class images generated for prior preservation
    checkpoints: int = 10           # checkpoints kept
    token_chars: int = 32           # trigger token
    noun_chars: int = 40            # class noun (it ends up in file names)
    prompt_chars: int = 300         # instance/class/Try-it prompts (CLIP reads 77 tokens anyway)
    seeds: int = 4                  # preview seeds per job
    prompts: int = 50               # preview prompts per job
    photos_min: int = 3             # subject photos per job
    photos_max: int = 10
    photo_mb: int = 25              # bytes per photo, in MB
    photo_megapixels: int = 50      # decoded size per photo (a decompression-bomb guard)

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"Limit `{spec.name}` ({env_name(spec.name)}) must be a positive number, "
                                 f"got {value!r}.")
        if self.photos_min > self.photos_max:
            raise InputError(f"Limit photos_min ({self.photos_min}) exceeds photos_max ({self.photos_max}): "
                             f"raise {env_name('photos_max')} or lower {env_name('photos_min')}.")

    @classmethod
    def from_env(cls, **overrides) -> "Limits":
        values = {}
        for spec in dataclasses.fields(cls):
            raw = os.environ.get(env_name(spec.name))
            if raw:
                try:
                    values[spec.name] = (int if spec.type == "int" else float)(raw)
                except ValueError:
                    raise InputError(f"Environment variable {env_name(spec.name)}={raw!r} must be a "
                                     f"{'whole ' if spec.type == 'int' else ''}number.") from None
        values.update(overrides)
        return cls(**values)

    def intake(self):
        """The photo limits as the image intake takes them."""
        from .images import IntakeLimits

        return IntakeLimits(min_images=self.photos_min, max_images=self.photos_max,
                            max_file_bytes=self.photo_mb * 1024 * 1024,
                            max_pixels=self.photo_megapixels * 1_000_000)

    def max_resolution(self, model: str | None) -> int:
        """The largest training resolution for ``model`` (multiple of 8)."""
        native = native_resolution(model)
        cap = min(self.resolution, RESOLUTION_FACTOR * native) if native else self.resolution
        return max(8, int(cap) // 8 * 8)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def native_resolution(model: str | None) -> int | None:
    """A preset's resolution, a local diffusers folder's VAE sample size; None when unknown."""
    from .models.presets import default_preset, presets

    name = model or default_preset()
    if name in presets():
        return int(presets()[name]["resolution"])
    vae = Path(name).expanduser() / "vae" / "config.json"
    try:
        return int(json.loads(vae.read_text()).get("sample_size", 512))
    except (OSError, ValueError, TypeError):
        return None


# --- checks ----------------------------------------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:g}"
    return f"{int(value):,}"


def check_range(label: str, value, lo, hi, *, setting: str | None = None, integer: bool = True,
                lo_open: bool = False) -> None:
    """``value`` is a number with lo <= value <= hi (lo < value if ``lo_open``), else LimitError.

    ``label`` is the name the user knows the field by (the form's label or the config key).
    """
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise LimitError(f"{label} must be {kind} between {_fmt(lo)} and {_fmt(hi)}, got {value!r}.")
    low_ok = value > lo if lo_open else value >= lo
    if low_ok and value <= hi:
        return
    between = f"more than {_fmt(lo)} and at most {_fmt(hi)}" if lo_open else f"between {_fmt(lo)} and {_fmt(hi)}"
    fix = f"lower it to {_fmt(hi)} or less" if value > hi else f"raise it to {'above ' if lo_open else ''}{_fmt(lo)}"
    raise LimitError(f"{label} must be {between}, got {_fmt(value) if abs(value) < 1e15 else value}: {fix}.",
                     setting if value > hi else None)


def check_text(label: str, text, max_chars: int, setting: str | None, *, pattern: re.Pattern | None = None,
               what: str = "") -> None:
    """A text field: a string of at most ``max_chars`` characters matching ``pattern``."""
    if not isinstance(text, str):
        raise LimitError(f"{label} must be text, got {type(text).__name__}.")
    if len(text) > max_chars:
        raise LimitError(f"{label} is {len(text):,} characters long; the limit is {max_chars}: shorten it.", setting)
    if pattern is not None and not pattern.fullmatch(text):
        raise LimitError(f"{label} {text!r} is not allowed: {what}.")


def check_config(config, limits: Limits | None = None) -> None:
    """Every bound on a CompareConfig (its training and selection settings included)."""
    limits = limits or Limits.from_env()
    check_text("The trigger token", config.token, limits.token_chars, env_name("token_chars"))
    check_text("The class noun", config.class_noun.strip(), limits.noun_chars, env_name("noun_chars"),
               pattern=NOUN, what="use letters, digits, spaces and hyphens, e.g. 'dog' or 'teddy bear'")
    seeds = config.seeds if isinstance(config.seeds, list) else []
    if len(seeds) > limits.seeds:
        raise LimitError(f"seeds lists {len(seeds)} preview seeds; the limit is {limits.seeds}: keep fewer.",
                         env_name("seeds"))
    for seed in seeds:
        check_range("each preview seed", seed, 0, SEED_MAX)
    if config.num_prompts is not None:
        check_range("num_prompts", config.num_prompts, 1, limits.prompts, setting=env_name("prompts"))
    check_train(config.train_config(), limits, model=config.model)
    check_selection(config.selection_params(), limits)


# key -> (label the user knows, lowest, highest: a Limits field or a number, whole number?,
# lowest excluded?). Keys are TrainConfig / SelectionParams fields; the web form uses the same.
FIELDS = {
    "steps": ("steps", 1, "steps", True, False),
    "rank": ("LoRA rank", 1, "rank", True, False),
    "alpha": ("LoRA alpha", 0, "alpha", False, True),
    "lr": ("learning rate", 0, "lr", False, True),
    "text_encoder_lr": ("text encoder learning rate", 0, "lr", False, True),
    "embedding_lr": ("trigger embedding learning rate", 0, 1.0, False, True),  # pivotal tuning (~1e-3)
    "pivotal_vectors": ("pivotal_vectors", 1, 16, True, False),  # each takes one of CLIP's 77 token slots
    "batch_size": ("batch size", 1, "batch_size", True, False),
    "seed": ("seed", 0, SEED_MAX, True, False),
    "aug_weight": ("lambda (backbone loss weight)", 0, "weight", False, False),
    "prior_weight": ("prior_weight", 0, "weight", False, False),
    "num_class_images": ("class images (num_class_images)", 1, "class_images", True, False),
    "keep_checkpoints": ("keep_checkpoints", 1, "checkpoints", True, False),
    "checkpoint_every": ("checkpoint_every", 0, "steps", True, False),
    "warmup_steps": ("warmup_steps", 0, "steps", True, False),
    "resolution": ("resolution", 8, "resolution", True, False),
    "k": ("K (retrieval candidates)", 1, "k", True, False),
    "m": ("m (backbone images kept)", 1, "m", True, False),
    "draws": ("draws", 1, "draws", True, False),
    "surrogate_steps": ("surrogate_steps", 1, "steps", True, False),
    # each kept step is one more LoRA on disk and one more preview column per method
    "step_choices": ("earlier steps kept (step_choices)", 0, 8, True, False),
}


def bounds(key: str, limits: Limits, model: str | None = None) -> tuple[float, float]:
    """(lowest, highest) accepted for field ``key`` (resolution: for ``model``)."""
    _, lo, hi, _, _ = FIELDS[key]
    if key == "resolution":
        return lo, limits.max_resolution(model)
    return lo, getattr(limits, hi) if isinstance(hi, str) else hi


def check_field(key: str, value, limits: Limits, model: str | None = None) -> None:
    """One field of FIELDS within its bounds, else LimitError naming it, the limit and the fix."""
    label, _, hi, integer, lo_open = FIELDS[key]
    lo, top = bounds(key, limits, model)
    check_range(label, value, lo, top, setting=env_name(hi) if isinstance(hi, str) else None,
                integer=integer, lo_open=lo_open)


def check_train(train, limits: Limits, model: str | None = None) -> None:
    """Bounds on a TrainConfig (the fields it has; newer fields are checked by TrainConfig itself)."""
    for key in FIELDS:
        value = getattr(train, key, None)
        if value is not None:  # alpha and resolution may be None (= rank, the model's own)
            check_field(key, value, limits, model)
    if train.warmup_steps > train.steps:
        raise LimitError(f"warmup_steps ({train.warmup_steps}) exceeds steps ({train.steps}): lower it.")
    for label, prompt in (("instance_prompt", train.instance_prompt), ("class_prompt", train.class_prompt)):
        if prompt is not None:
            check_text(label, prompt, limits.prompt_chars, env_name("prompt_chars"))
    contexts = train.prior_contexts or []
    if len(contexts) > MAX_PRIOR_CONTEXTS:
        raise LimitError(f"prior_contexts lists {len(contexts)} phrases; the limit is {MAX_PRIOR_CONTEXTS}: "
                         f"keep fewer (each class image takes the next one in turn).")
    for phrase in contexts:
        check_text("prior_contexts entry", phrase, limits.prompt_chars, env_name("prompt_chars"))
    for label, modules in (("target_modules", train.target_modules),
                           ("text_encoder_targets", train.text_encoder_targets)):
        if modules is None and label == "target_modules":  # the model family's default
            continue
        if not isinstance(modules, list) or len(modules) > 32:
            raise LimitError(f"{label} must be a list of at most 32 module names, got {modules!r:.80}.")
        for name in modules:
            check_text(f"{label} entry", name, 64, None, pattern=MODULE,
                       what="a module name is letters, digits, '_' and '.', e.g. 'to_q'")


def check_selection(params, limits: Limits) -> None:
    for key in ("k", "m", "draws", "surrogate_steps"):
        value = getattr(params, key, None)
        if value is not None:
            check_field(key, value, limits)
    check_range("selection batch_size", params.batch_size, 1, 256)


__all__ = ["FIELDS", "LimitError", "Limits", "bounds", "check_config", "check_field", "check_range",
           "check_text", "env_name"]
