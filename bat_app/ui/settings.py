"""What the app runs with: backbone, pool, example subjects, data dir (env vars or arguments).

    settings = AppSettings.from_env()                      # BAT_MODEL, BAT_POOL, BAT_HOME ...
    settings = AppSettings.from_env(model="/tmp/tiny-sd")  # arguments override the environment

| variable | setting | default |
|---|---|---|
| BAT_MODEL | model | ``sd15`` with CUDA, else ``shapes`` |
| BAT_POOL | pool | ``shapes`` for the shapes model, else none (set it to a pool folder) |
| BAT_CLIP_MODEL | clip_model | the pool's own CLIP |
| BAT_SUBJECTS | subjects_dir | ``assets/subjects`` |
| BAT_PREVIEW_PROMPTS | preview_prompts | every prompt of the set |
| BAT_HOME, BAT_REDIS_URL, ... | jobs | see bat_app.jobs.settings |
| BAT_EMBEDDED_WORKER | embedded_worker | 1 (the app runs jobs itself; 0 with separate workers) |
| BAT_PREPARE_POOL | prepare_pool | 1: with the shapes pool as default, the app builds it when it starts (0: the first job does) |
| BAT_ALLOWED_MODELS | allowed_models | none: web users pick a preset or the default model |
| BAT_ALLOWED_POOLS | allowed_pools | none: web users pick the default pool or one in $BAT_HOME/pools |
| BAT_PROXY_HOPS | proxy_hops | 1 on a Hugging Face Space (SPACE_ID set), else 0 |
| BAT_SAFETY_CHECKER | safety_checker | 1: previews and "Try it" go through the model's safety checker when it has one (web users cannot turn it off) |
| BAT_LIMIT_* | (bat_app.limits) | bounds on every job field; see docs/security.md |

``allowed_models`` / ``allowed_pools``: comma-separated folders or hub ids an operator offers to
web users besides the defaults; users pick them by name (a folder's last part), never by path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InputError
from ..jobs import JobSettings
from ..paths import assets_dir


@dataclass(frozen=True)
class AppSettings:
    model: str                          # default backbone: preset name, folder or hub id
    pool: str | None = None             # default pool: "shapes", a pool folder, or None
    clip_model: str | None = None       # CLIP for retrieval/metrics (None: the pool's own)
    subjects_dir: Path | None = None    # example subjects: <name>/*.png + subject.json
    preview_prompts: int | None = None  # first N prompts of the preview set (None: all)
    seeds: tuple[int, ...] = (0, 1)     # preview seeds, the same in every column
    embedded_worker: bool = True        # run jobs in this process's worker thread
    prepare_pool: bool = True           # build the default shapes pool at start, not in the first job
    allowed_models: tuple[str, ...] = ()  # more models web users may pick (folders or hub ids)
    allowed_pools: tuple[str, ...] = ()   # more pool folders web users may pick
    proxy_hops: int = 0                 # reverse proxies that append to X-Forwarded-For (a Space: 1)
    safety_checker: bool = True         # the model's safety checker on previews (operator's choice only)
    jobs: JobSettings = field(default_factory=JobSettings.from_env)

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        from ..models.presets import default_preset

        env = os.environ
        model = env.get("BAT_MODEL") or default_preset()
        values = {
            "model": model,
            "pool": env.get("BAT_POOL") or ("shapes" if model == "shapes" else None),
            "clip_model": env.get("BAT_CLIP_MODEL") or None,
            "subjects_dir": Path(env.get("BAT_SUBJECTS") or assets_dir() / "subjects"),
            "preview_prompts": _int_or_none("BAT_PREVIEW_PROMPTS"),
            "embedded_worker": env.get("BAT_EMBEDDED_WORKER", "1") not in ("0", "false", "no"),
            "prepare_pool": env.get("BAT_PREPARE_POOL", "1") not in ("0", "false", "no"),
            "allowed_models": _list("BAT_ALLOWED_MODELS"),
            "allowed_pools": _list("BAT_ALLOWED_POOLS"),
            "safety_checker": env.get("BAT_SAFETY_CHECKER", "1") not in ("0", "false", "no"),
            "proxy_hops": _int_or_none("BAT_PROXY_HOPS") if env.get("BAT_PROXY_HOPS") else
            (1 if env.get("SPACE_ID") else 0),
        }
        values.update(overrides)
        if "jobs" not in overrides:
            values["jobs"] = JobSettings.from_env()
        if values.get("pool") == "none":
            values["pool"] = None
        return cls(**values)

    def with_(self, **changes) -> "AppSettings":
        return replace(self, **changes)


def _list(var: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(var, "").split(",") if item.strip())


def _int_or_none(var: str) -> int | None:
    raw = os.environ.get(var)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"Environment variable {var}={raw!r} must be a whole number.") from None
