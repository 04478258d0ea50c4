"""Where BAT Studio finds its shipped assets and keeps its data.

``BAT_ASSETS`` overrides the shipped ``assets/`` folder (next to the package in a checkout);
``BAT_HOME`` is the data dir for jobs and caches (default ``./bat-data``; ``/data/bat`` on a
Hugging Face Space with persistent storage).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    return Path(os.environ.get("BAT_ASSETS", REPO_ROOT / "assets"))


def data_dir() -> Path:
    if "BAT_HOME" in os.environ:
        return Path(os.environ["BAT_HOME"])
    if Path("/data").is_dir() and os.access("/data", os.W_OK):  # Space persistent storage
        return Path("/data/bat")
    return Path("bat-data").resolve()


def cache_dir(home: Path | None = None) -> Path:
    """Caches that may be deleted at any time (encoded latents, class images): ``BAT_CACHE``,
    else ``cache/`` in ``home`` (default: :func:`data_dir`)."""
    return Path(os.environ.get("BAT_CACHE") or (home if home is not None else data_dir()) / "cache")


def private_tmp(path: Path, suffix: str = ".tmp") -> Path:
    """A temporary name beside ``path`` that no other process *or thread* writes to: write it,
    then ``os.replace`` it onto ``path``. With the pid alone, two lanes of one compare run
    (threads) caching the same latents wrote one file and the slower rename failed."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{suffix}")


_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def path_lock(path: Path) -> threading.Lock:
    """The one lock of this process for ``path``: the lanes of a compare run (threads) that
    want the same cached thing at once (class images, ALBAT's surrogate) make it once; the
    second waits and then finds it."""
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(str(path), threading.Lock())
