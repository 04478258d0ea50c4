"""The job record: what ``job.json`` holds, and the statuses a job moves through.

    queued ──claim──> running ──> done | failed | cancelled
      ^                  │
      └── re-queued ─────┘   (worker died or shut down: resumes from its last checkpoint)

A queued job can also go straight to ``cancelled``. The record on disk is the source of truth;
the huey message that dispatches a job is only a hint that something is waiting.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)

MAX_MESSAGES = 50  # the record keeps the newest messages only; the full log is log.txt


@dataclass
class JobRecord:
    id: str                            # 32 hex digits from `secrets`: unguessable, also the folder name
    pipeline: str = "compare"          # what the job runs (bat_app.jobs.pipelines)
    status: str = QUEUED               # one of STATUSES
    stage: str = "queued"              # pipeline stage: starting, validate, select, train, preview, ...
    method: str | None = None          # method the current stage works on (compare runs several)
    step: int = 0                      # progress within the stage
    total: int = 0
    loss: float | None = None          # last training loss
    it_per_s: float | None = None
    eta_s: float | None = None         # seconds left in the current stage
    message: str = ""                  # newest message, for a one-line status
    messages: list[dict] = field(default_factory=list)  # [{"t": time, "text": ...}], newest last
    error: str | None = None           # why a failed job failed, written for the user
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path relative to the job folder
    images: list[str] = field(default_factory=list)        # copied uploads, relative to the job folder
    created_at: float = field(default_factory=time.time)   # times are Unix seconds
    enqueued_at: float | None = None   # last time it entered the queue (ordering with `priority`)
    started_at: float | None = None    # first claim by a worker
    finished_at: float | None = None
    updated_at: float | None = None
    heartbeat_at: float | None = None  # the running worker renews this every heartbeat_s (the lease)
    priority: int = 0                  # re-queued jobs get 1 and run before new ones
    attempt: int = 0                   # how many times a worker has claimed it
    retries: int = 0                   # times it was re-queued because its worker died
    worker: str | None = None          # "host:pid" of the worker running it
    lease: dict | None = None          # worker identity, used to tell a dead local worker at once
    runner_pid: int | None = None      # the job process doing the work
    cancel_requested: bool = False
    client: str | None = None          # keyed hash of the web client that submitted it (per-client cap);
                                       # never shown to anyone, None for the CLI
    attempts: list[dict] = field(default_factory=list)  # per claim: worker, started/ended, first_step, outcome

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # records of newer versions still load

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def say(self, text: str, now: float | None = None) -> None:
        """Record a message for the user (kept in ``message`` and the bounded ``messages``)."""
        now = time.time() if now is None else now
        self.message = text
        self.messages.append({"t": round(now, 3), "text": text})
        del self.messages[:-MAX_MESSAGES]

    def queue_key(self) -> tuple:
        """The order jobs leave the queue in: re-queued first, then by time entered, then id."""
        return (-self.priority, self.enqueued_at or self.created_at, self.id)
