"""Retention: finished jobs are kept ``retention_days``, and less when the jobs outgrow the disk budget.

    cleanup()                                      # BAT_JOB_RETENTION_DAYS (7), BAT_JOB_DISK_GB (50)
    cleanup(retention_days=1, disk_budget_gb=10)

In order: (1) checkpoints of ``done`` jobs are deleted (they only serve resuming; the LoRAs,
grids and metrics stay); (2) finished jobs (done, failed, cancelled) older than the retention
period are deleted; (3) while the jobs folder is over the budget, finished jobs are deleted
oldest first; (4) files of the shared cache (``$BAT_HOME/cache``: latents, surrogates, the base
model's previews and losses, class images) not used for the retention period are deleted.
Queued and running jobs are never deleted, whatever the budget. Every worker runs this every
``cleanup_every_s``; the app may call it too.

Why (4): cache entries made from a job's photos (their latents, a surrogate trained on them)
must not outlive the job's retention; they are keyed by pixel hashes, not by job, so they go
by age. "Used" is the later of the file's modification and access times: with Linux's default
``relatime`` a read refreshes the access time at least daily, so entries that running jobs
keep reading stay; any entry removed is recomputed when next needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from ..errors import JobNotFound
from ..paths import cache_dir
from .queue import connect
from .record import DONE, JobRecord
from .settings import JobSettings
from .store import OUT, JobStore

_STAGING_MAX_AGE_S = 24 * 3600  # an interrupted submit or delete leaves a dot-folder behind


def cleanup(retention_days: float | None = None, disk_budget_gb: float | None = None, *,
            settings: JobSettings | None = None, now: float | None = None) -> dict:
    """Apply the retention policy; returns {"deleted": [ids], "checkpoints_freed_bytes", "bytes_after"}."""
    settings, store, _ = connect(settings)
    retention_s = (settings.retention_days if retention_days is None else retention_days) * 86400
    budget = (settings.disk_budget_gb if disk_budget_gb is None else disk_budget_gb) * 1e9
    now = time.time() if now is None else now
    _remove_leftovers(store.root, now)

    finished = [r for r in store.all() if r.finished]
    freed = sum(_drop_checkpoints(store, r) for r in finished if r.status == DONE)
    deleted = []
    for record in finished:
        if now - (record.finished_at or record.created_at) > retention_s and delete(store, record.id):
            deleted.append(record.id)

    sizes = {job_id: folder_bytes(store.root / job_id) for job_id in store.ids()}
    total = sum(sizes.values())
    by_age = sorted((r for r in finished if r.id not in deleted), key=lambda r: r.finished_at or r.created_at)
    for record in by_age:
        if total <= budget:
            break
        if delete(store, record.id):
            deleted.append(record.id)
            total -= sizes.get(record.id, 0)
    cache_freed = prune_cache(cache_dir(settings.data_dir), retention_s, now)
    return {"deleted": deleted, "checkpoints_freed_bytes": freed, "bytes_after": total,
            "cache_freed_bytes": cache_freed}


def prune_cache(root: Path, max_age_s: float, now: float) -> int:
    """Delete the files under ``root`` not modified or read for ``max_age_s``, then the folders
    this left empty and those empty for that long; returns the bytes freed.

    A folder a job has just made (a surrogate's work folder, before its first file) is empty
    and new: it stays. Removing it made that job fail ("No such file or directory"; seen when
    the worker's first cleanup, a minute after the app starts, met the example job)."""
    freed = 0
    for folder, _, files in os.walk(root, topdown=False):
        emptied = False
        for name in files:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if now - max(info.st_mtime, info.st_atime) > max_age_s:
                    os.remove(path)
                    freed += info.st_size
                    emptied = True
        if folder != str(root):
            with contextlib.suppress(OSError):
                if emptied or now - os.lstat(folder).st_mtime > max_age_s:
                    os.rmdir(folder)  # only succeeds when empty
    return freed


def delete(store: JobStore, job_id: str) -> bool:
    """Delete a finished job's folder (moved aside first, so no half-deleted job is ever listed)."""
    try:
        with store.lock(job_id):
            if not store.read(job_id).finished:
                return False
            trash = store.root / f".trash-{job_id}"
            os.replace(store.folder(job_id), trash)
    except JobNotFound:
        return False
    shutil.rmtree(trash, ignore_errors=True)
    return True


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _drop_checkpoints(store: JobStore, record: JobRecord) -> int:
    freed = 0
    for ckpt in (store.root / record.id / OUT).glob("**/checkpoints"):
        if ckpt.is_dir():
            freed += folder_bytes(ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return freed


def _remove_leftovers(root: Path, now: float) -> None:
    for path in root.glob(".*-*"):
        if path.is_dir() and (path.name.startswith(".trash-") or
                              (path.name.startswith(".incoming-") and now - path.stat().st_mtime > _STAGING_MAX_AGE_S)):
            shutil.rmtree(path, ignore_errors=True)
