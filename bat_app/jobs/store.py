"""Job folders and their records: atomic writes, locked read-modify-write, listing.

    data_dir/jobs/<id>/job.json      the record (JobRecord), replaced atomically on every write
                      config.json    the validated config, written once at submit
                      inputs/        the user's images, copied at submit
                      out/           what the pipeline writes (checkpoints, LoRAs, grids, metrics)
                      log.txt        stdout/stderr of the job process, every attempt appended

Every change to a record is a read-modify-write under that job's lock, so the app (cancel),
the worker (heartbeat, status) and the job process (progress) never overwrite each other.
Locks are ``flock`` on a file in the job folder (SQLite mode, one machine) or Redis locks
(Redis mode, where the shared filesystem may not support locking).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import JobNotFound
from ..paths import private_tmp
from .record import JobRecord

RECORD = "job.json"
CONFIG = "config.json"
INPUTS = "inputs"
OUT = "out"
LOG = "log.txt"
_ID = re.compile(r"[0-9a-f]{32}")


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class FileLocks:
    """``flock`` locks on files in the job folders, plus a per-process thread lock (where flock is
    emulated with POSIX locks, as on NFS, threads of one process would not exclude each other)."""

    def __init__(self, root: Path):
        self.root = root

    @contextlib.contextmanager
    def hold(self, path: Path) -> Iterator[None]:
        with _thread_locks_guard:
            thread_lock = _thread_locks.setdefault(str(path), threading.Lock())
        with thread_lock:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the job folder is gone
                raise JobNotFound(_not_found(path.parent.name)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock


class RedisLocks:
    """Redis locks, named after the same paths; for several machines on one Redis."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 60.0):
        import redis

        self.conn = redis.Redis.from_url(url)
        self.prefix = prefix
        self.timeout_s = timeout_s

    @contextlib.contextmanager
    def hold(self, path: Path) -> Iterator[None]:
        from redis.exceptions import LockError

        if not path.parent.is_dir():
            raise JobNotFound(_not_found(path.parent.name))
        # The timeout frees the lock of a process killed while holding it; every critical
        # section here is a few file operations, far below it.
        lock = self.conn.lock(f"{self.prefix}:{path.parent.name}/{path.name}", timeout=self.timeout_s,
                              sleep=0.005, blocking_timeout=self.timeout_s)
        if not lock.acquire():
            raise TimeoutError(f"Could not take the Redis lock for {path} in {self.timeout_s:.0f}s.")
        try:
            yield
        finally:
            with contextlib.suppress(LockError):  # expired: nothing left to release
                lock.release()


class JobStore:
    """The jobs folder: one sub-folder per job, its ``job.json`` the record."""

    def __init__(self, root: Path, locks: FileLocks | RedisLocks | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.locks = locks or FileLocks(self.root)

    # --- paths -------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
            raise JobNotFound(f"{job_id!r} is not a job id (job ids are 32 hexadecimal digits).")
        return self.root / job_id

    def submit_lock(self):
        """The lock submit holds while it counts the queue and adds a job."""
        return self.locks.hold(self.root / ".submit.lock")

    def lock(self, job_id: str):
        return self.locks.hold(self.folder(job_id) / ".lock")

    # --- records -----------------------------------------------------------------------
    def read(self, job_id: str) -> JobRecord:
        path = self.folder(job_id) / RECORD
        try:
            return JobRecord.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise JobNotFound(_not_found(job_id)) from None

    def write(self, record: JobRecord, folder: Path | None = None) -> None:
        """Replace the record atomically: readers see the old or the new file, never half of one."""
        folder = folder or self.folder(record.id)
        write_json_atomic(folder / RECORD, record.to_dict())

    def update(self, job_id: str, change: Callable[[JobRecord], bool],
               after: Callable[[JobRecord], None] | None = None) -> JobRecord | None:
        """Apply ``change`` to the record under the job's lock; it returns False to leave it as is.

        ``after`` runs on the written record while the lock is still held (e.g. to push the
        job to the queue, so that record and queue change together). Returns the record
        written, or None when ``change`` declined.
        """
        with self.lock(job_id):
            record = self.read(job_id)
            if change(record) is False:
                return None
            record.updated_at = time.time()
            self.write(record)
            if after is not None:
                after(record)
            return record

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if _ID.fullmatch(p.name))

    def all(self) -> list[JobRecord]:
        records = []
        for job_id in self.ids():
            try:
                records.append(self.read(job_id))
            except JobNotFound:  # deleted while listing
                continue
        return records


def _not_found(job_id: str) -> str:
    # Users read this (web app, API): it names no server folder, and says the same for an id
    # that never existed and one that was deleted, so it tells a guesser nothing.
    return (f"No job {job_id}: check the id (the 32 hexadecimal digits Start gave you); finished "
            f"jobs are deleted after their retention period.")


def write_json_atomic(path: Path, data) -> None:
    tmp = private_tmp(path)
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
