"""What a job runs, by name: the record stores the name, the worker imports the function.

    compare   bat_app.compare:run_compare  (validate -> select -> train each method ->
              previews -> steps -> metrics -> package)

Every pipeline has run_compare's signature::

    fn(config: CompareConfig, images: list[Path], out_dir: Path, *,
       progress: Callable[[ProgressEvent], None] | None, cancel: Callable[[], bool] | None,
       resume: bool = True) -> result with ``.outputs`` (name -> path relative to out_dir)

and must be idempotent: called again on the same ``out_dir`` after a crash, it reuses what
is finished and resumes training from its checkpoints. A pipeline's config is its own: one
that is not a ``CompareConfig`` sets a ``config_from_dict`` attribute, which submit uses to
validate the JSON and the job process to read it back (neither then imports the trainer). More pipelines (a smoke test on a new
GPU box, the tests' tiny trainings) are registered with ``BAT_JOB_PIPELINES="name=module:function,..."``,
read by the app and by every worker; a name that neither knows is refused at submit.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

from bat_app.errors import InputError

BUILTIN = {"compare": "bat_app.compare:run_compare"}


def registry() -> dict[str, str]:
    table = dict(BUILTIN)
    for entry in filter(None, (e.strip() for e in os.environ.get("BAT_JOB_PIPELINES", "").split(","))):
        name, sep, target = entry.partition("=")
        if not sep or ":" not in target:
            raise InputError(f"BAT_JOB_PIPELINES entry {entry!r} is not name=module:function.")
        table[name.strip()] = target.strip()
    return table


def check_pipeline(name: str) -> str:
    table = registry()
    if name not in table:
        raise InputError(f"Unknown pipeline {name!r}; known: {', '.join(sorted(table))} "
                         f"(register more with BAT_JOB_PIPELINES=name=module:function).")
    return table[name]


def load_pipeline(name: str) -> Callable:
    module, _, function = check_pipeline(name).partition(":")
    return getattr(importlib.import_module(module), function)


def config_reader(pipeline: Callable) -> Callable[[dict], object]:
    """How the job process turns config.json into the pipeline's config: the pipeline's own
    ``config_from_dict`` attribute if it has one, else ``CompareConfig.from_dict``."""
    reader = getattr(pipeline, "config_from_dict", None)
    if reader is None:
        from bat_app.compare.config import CompareConfig

        reader = CompareConfig.from_dict
    return reader


def config_reader_for(name: str) -> Callable[[dict], object]:
    """The config reader of pipeline ``name`` (the built-in compare's without importing it)."""
    if check_pipeline(name) == BUILTIN.get(name):
        from bat_app.compare.config import CompareConfig

        return CompareConfig.from_dict
    return config_reader(load_pipeline(name))
