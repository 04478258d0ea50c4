"""Queue settings: one commented dataclass, read from the environment at call time.

    settings = JobSettings.from_env()                  # BAT_HOME, BAT_REDIS_URL, BAT_MAX_QUEUE ...
    settings = JobSettings.from_env(max_queue=5)       # keyword arguments override the environment

Every worker and the app that submits must agree on ``data_dir``, ``redis_url`` and
``queue_name`` (see docs/jobs.md); the timing settings may differ per process.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from bat_app.errors import InputError
from bat_app.paths import data_dir

# setting -> environment variable
ENV = {
    "redis_url": "BAT_REDIS_URL",
    "queue_name": "BAT_QUEUE_NAME",
    "max_queue": "BAT_MAX_QUEUE",
    "max_per_client": "BAT_MAX_PER_CLIENT",
    "heartbeat_s": "BAT_JOB_HEARTBEAT_S",
    "stale_after_s": "BAT_JOB_STALE_S",
    "lock_timeout_s": "BAT_JOB_LOCK_S",
    "cancel_grace_s": "BAT_JOB_CANCEL_GRACE_S",
    "max_retries": "BAT_JOB_MAX_RETRIES",
    "poll_s": "BAT_JOB_POLL_S",
    "progress_every_s": "BAT_JOB_PROGRESS_S",
    "retention_days": "BAT_JOB_RETENTION_DAYS",
    "disk_budget_gb": "BAT_JOB_DISK_GB",
    "cleanup_every_s": "BAT_JOB_CLEANUP_S",
    "local_liveness": "BAT_JOB_LOCAL_LIVENESS",
    "prewarm": "BAT_JOB_PREWARM",
    "prewarm_modules": "BAT_JOB_PREWARM_MODULES",
}


@dataclass(frozen=True)
class JobSettings:
    data_dir: Path                     # jobs live in data_dir/jobs/<id>/ (BAT_HOME)
    redis_url: str | None = None       # set: Redis huey shared by many machines; unset: SQLite huey in data_dir
    queue_name: str = "bat-jobs"       # huey queue name (one Redis can hold several queues)
    max_queue: int = 50                # waiting jobs accepted before submit raises QueueFull
    max_per_client: int = 2            # queued + running jobs one web client may have (the CLI has no cap)
    heartbeat_s: float = 5.0           # how often a worker renews the lease of its running job
    stale_after_s: float = 30.0        # a running job with no heartbeat for this long is re-queued
    lock_timeout_s: float = 60.0       # Redis mode: a record lock held this long (its holder killed) is freed
    cancel_grace_s: float = 10.0       # after a cancel, the job process gets this long to stop itself
    max_retries: int = 3               # re-queues after a worker death; the next death fails the job
    poll_s: float = 0.25               # SQLite queue poll interval (Redis blocks and wakes at once)
    progress_every_s: float = 0.5      # progress is written to job.json at most this often
    retention_days: float = 7.0        # finished jobs are deleted after this long ...
    disk_budget_gb: float = 50.0       # ... or sooner, oldest first, when the jobs take more than this
    cleanup_every_s: float = 3600.0    # how often each worker runs the cleanup
    local_liveness: bool = True        # a worker sees at once that a holder on its own machine died
    prewarm: bool = True               # keep one job process started (imports done) for a fast start
    prewarm_modules: str = "bat_app.compare.config"  # what it imports (comma-separated): torch, diffusers ...

    def __post_init__(self):
        for name in ("heartbeat_s", "stale_after_s", "lock_timeout_s", "poll_s", "progress_every_s",
                     "cleanup_every_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"Job setting `{name}` must be > 0, got {getattr(self, name)!r}.")
        if self.stale_after_s <= self.heartbeat_s:
            raise InputError(f"`stale_after_s` ({self.stale_after_s}) must exceed `heartbeat_s` "
                             f"({self.heartbeat_s}), or live jobs would be taken from their workers.")
        for name in ("max_queue", "max_per_client"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"Job setting `{name}` ({ENV[name]}) must be a positive integer, got {value!r}.")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InputError(f"Job setting `max_retries` must be an integer >= 0, got {self.max_retries!r}.")
        if self.cancel_grace_s < 0 or self.retention_days < 0 or self.disk_budget_gb < 0:
            raise InputError("cancel_grace_s, retention_days and disk_budget_gb must be >= 0.")

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @classmethod
    def from_env(cls, **overrides) -> "JobSettings":
        values: dict = {"data_dir": data_dir()}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, var in ENV.items():
            raw = os.environ.get(var)
            if raw is None or (raw == "" and types[name] != "str"):  # "" is a value only for strings
                continue
            values[name] = _parse(name, var, raw, types[name])
        values.update(overrides)
        values["data_dir"] = Path(values["data_dir"]).resolve()
        return cls(**values)

    def env(self) -> dict[str, str]:
        """These settings as environment variables (handed to the job processes a worker starts)."""
        out = {"BAT_HOME": str(self.data_dir)}
        for name, var in ENV.items():
            value = getattr(self, name)
            if value is not None:
                out[var] = str(int(value) if isinstance(value, bool) else value)
        return out


def _parse(name: str, var: str, raw: str, kind: str):
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
    except ValueError:
        raise InputError(f"Environment variable {var}={raw!r} is not a valid {kind} (setting `{name}`).") from None
    return raw
