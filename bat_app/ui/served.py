"""The only job files the web server hands out: a finished job's results, behind its id.

    paths = publish(settings, job_id, out, ["previews/grid_object.png", "downloads/none_lora.zip"])

The jobs folder itself is never servable (it is in Gradio's ``blocked_paths``: the queue
database, every job's inputs, config and log live there). When the owner asks for results with
the job id, the allow-listed output files are copied (hard-linked where possible) into
``<Gradio cache>/bat-jobs/<job id>/`` and served from there, so each file's URL carries the
job id (128 random bits): whoever has no id can neither list nor guess them.

Only regular files are published, never symlinks, and only paths that match ``SERVED``
(grids, steps pictures, LoRA .safetensors, zips): nothing else under ``out/`` (checkpoints, selections, logs).
The example subjects' photos (public assets) are copied to ``<Gradio cache>/bat-examples/``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path, PurePosixPath

from ..errors import InputError

log = logging.getLogger(__name__)

FOLDER = "bat-jobs"
EXAMPLES = "bat-examples"
# Relative to a job's out/ folder: what a job's owner downloads or sees.
SERVED = re.compile(r"previews/(?:grid|steps)_[\w-]+\.png|downloads/[\w-]+\.(?:safetensors|zip)")
_ID = re.compile(r"[0-9a-f]{32}")


def cache_root() -> Path:
    """Gradio's file cache (GRADIO_TEMP_DIR): the one folder the app serves files from."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def publish(job_id: str, out: Path, relpaths: list[str]) -> list[str]:
    """Copy the allow-listed ``relpaths`` (under ``out``) to the job's served folder; returns
    the served paths in order. A path that is not allowed, or not a regular file under ``out``
    reached without a symlink, is left out (and logged for the operator): the owner still gets
    the rest of the results."""
    if not _ID.fullmatch(job_id or ""):
        raise InputError("That is not a job id (32 hexadecimal digits).")
    target = cache_root() / FOLDER / job_id
    served = []
    for rel in relpaths:
        try:
            source = checked_source(out, rel)
        except InputError as exc:
            log.warning("job %s: not serving %r: %s", job_id, rel, exc)
            continue
        dest = target / PurePosixPath(rel).name
        _copy(source, dest)
        served.append(str(dest))
    return served


def publish_example(name: str, images: list[Path]) -> list[str]:
    """Copy an example subject's photos (public assets shipped with the app) to
    ``<Gradio cache>/bat-examples/<name>/`` and return those paths. The app serves nothing
    outside its cache, and the assets folder need not be under the working directory."""
    if not re.fullmatch(r"[\w-]+", name or ""):
        raise InputError(f"{name!r} is not an example subject's name.")
    target = cache_root() / EXAMPLES / name
    served = []
    for source in images:
        dest = target / source.name
        _copy(source, dest)
        served.append(str(dest))
    return served


def checked_source(out: Path, rel: str) -> Path:
    """``out/rel`` if ``rel`` is an allowed output reached through real folders, else InputError."""
    parts = PurePosixPath(rel).parts
    if (not SERVED.fullmatch(rel) or rel.startswith("/") or "\\" in rel or "%" in rel
            or any(p in ("", ".", "..") for p in parts)):
        log.warning("refused to serve %r of %s: not an allowed output path", rel, out)
        raise InputError(f"{PurePosixPath(rel).name} is not a file this job serves.")
    path = out
    for part in parts:  # no symlink anywhere on the way (lstat: the link itself, not its target)
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise InputError(f"{PurePosixPath(rel).name} is not among this job's results.") from None
        if stat.S_ISLNK(mode):
            log.warning("refused to serve %s: it is a symlink", path)
            raise InputError(f"{PurePosixPath(rel).name} is not a file this job serves.")
    if not stat.S_ISREG(mode):
        raise InputError(f"{PurePosixPath(rel).name} is not a file this job serves.")
    return path


def _copy(source: Path, dest: Path) -> None:
    if dest.is_file() and dest.stat().st_size == source.stat().st_size \
            and dest.stat().st_mtime >= source.stat().st_mtime:
        os.utime(dest)  # Gradio's delete_cache ages files: a file handed out again is fresh
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # same filesystem: no copy (the cache may be elsewhere: then copy)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(dest)
