"""Dispatch on huey: a SQLite huey in the data dir, or a Redis huey when BAT_REDIS_URL is set.

A message carries only a job id. Workers pop messages themselves (no huey consumer: a worker
must heartbeat, supervise and reap while a job runs for an hour) and treat each as a hint:
the job record decides whether there is anything to run. Both backends pop the highest
priority first and, within a priority, the oldest first.
"""

from __future__ import annotations

import logging
import os
import threading

from huey import PriorityRedisHuey, SqliteHuey

from .settings import JobSettings
from .store import FileLocks, JobStore, RedisLocks

log = logging.getLogger(__name__)


class Dispatch:
    """The huey queue of job ids (one interface, two backends)."""

    def __init__(self, settings: JobSettings):
        self.settings = settings
        if settings.redis_url:
            self.huey = PriorityRedisHuey(settings.queue_name, url=settings.redis_url, results=False,
                                          blocking=True, read_timeout=1)
        else:
            settings.jobs_dir.mkdir(parents=True, exist_ok=True)
            # strict_fifo: SQLite would otherwise reuse row ids, and ids order the queue.
            self.huey = SqliteHuey(settings.queue_name, filename=str(settings.jobs_dir / "queue.db"),
                                   results=False, strict_fifo=True)

        @self.huey.task()
        def run_job(job_id: str):  # popped and run by bat_app.jobs.worker, never by huey's consumer
            raise RuntimeError("bat_app.jobs messages are run by `python -m bat_app worker`.")

        self._task = run_job

    @property
    def blocking(self) -> bool:
        """True when ``pop`` waits for a message (Redis); SQLite has to be polled."""
        return bool(self.huey.storage.blocking)

    def push(self, job_id: str, priority: int = 0) -> None:
        self.huey.enqueue(self._task.s(job_id, priority=priority))

    def pop(self) -> str | None:
        task = self.huey.dequeue()
        return task.args[0] if task is not None else None

    def pending(self) -> list[str]:
        """Job ids of the messages waiting, in the order they will be popped."""
        ids = []
        for data in self.huey.storage.enqueued_items():
            try:
                ids.append(self.huey.deserialize_task(data).args[0])
            except Exception as exc:  # a message from another program or version: not ours to run
                log.warning("ignoring an unreadable message in queue %s: %s", self.settings.queue_name, exc)
        return ids

    def close(self) -> None:
        storage = self.huey.storage
        if hasattr(storage, "close"):
            storage.close()
        pool = getattr(storage, "pool", None)
        if pool is not None:
            pool.disconnect()


def open_store(settings: JobSettings) -> JobStore:
    locks = (RedisLocks(settings.redis_url, f"bat:{settings.queue_name}", settings.lock_timeout_s) if settings.redis_url
             else FileLocks(settings.jobs_dir))
    return JobStore(settings.jobs_dir, locks)


_cache: dict[JobSettings, tuple[JobStore, Dispatch]] = {}
_cache_lock = threading.Lock()
_inherited: list = []


def _after_fork_in_child() -> None:
    # A forked child must not use (or close: SQLite would checkpoint the parent's WAL) the
    # parent's connections: keep them referenced and unused, open new ones on demand.
    _inherited.append(dict(_cache))
    _cache.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def connect(settings: JobSettings | None = None) -> tuple[JobSettings, JobStore, Dispatch]:
    """The store and queue for ``settings`` (default: from the environment), reused per process."""
    settings = settings or JobSettings.from_env()
    with _cache_lock:
        if settings not in _cache:
            _cache[settings] = (open_store(settings), Dispatch(settings))
        store, dispatch = _cache[settings]
    return settings, store, dispatch
