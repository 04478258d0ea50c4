"""The transitions of a job record, each one locked read-modify-write with an owner check.

A worker holds a job as ``(job_id, attempt)``: every write it makes checks that the record is
still ``running`` under that attempt, so a worker that lost its lease (its job was re-queued
and claimed by another) can never overwrite the new holder's record.
"""

from __future__ import annotations

import time

from .lease import WorkerId
from .queue import Dispatch
from .record import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobRecord
from .store import JobStore

# Exit codes of the job process (bat_app.jobs.runner), read by its worker.
EXIT_DONE = 0          # done or cancelled, written to the record by the job process
EXIT_FAILED = 1        # failed, written with the reason
EXIT_INTERRUPTED = 75  # SIGTERM (worker shutting down): checkpoint saved, the worker re-queues it
EXIT_LEASE_LOST = 76   # the job was taken from this attempt: nothing written


def owns(record: JobRecord, attempt: int) -> bool:
    return record.status == RUNNING and record.attempt == attempt


def claim(store: JobStore, job_id: str, worker: WorkerId, runner_pid: int | None = None) -> JobRecord | None:
    """queued -> running for ``worker``; None when the job is not waiting (run, cancelled, gone)."""
    def change(rec: JobRecord) -> bool:
        if rec.status != QUEUED or rec.cancel_requested:
            return False
        now = time.time()
        rec.status, rec.stage, rec.step, rec.total = RUNNING, "starting", 0, 0
        rec.attempt += 1
        rec.worker, rec.lease, rec.runner_pid = worker.name, dict(worker.lease), runner_pid
        rec.heartbeat_at = now
        rec.started_at = rec.started_at or now
        rec.attempts.append({"attempt": rec.attempt, "worker": worker.name, "started_at": now,
                             "first_step": None, "ended_at": None, "outcome": None})
        rec.say(f"started on {worker.name} (attempt {rec.attempt})", now)
        return True
    return store.update(job_id, change)


def renew(store: JobStore, job_id: str, attempt: int) -> JobRecord | None:
    """Heartbeat; None means the lease is lost (re-queued, finished or deleted meanwhile)."""
    def change(rec: JobRecord) -> bool:
        if not owns(rec, attempt):
            return False
        rec.heartbeat_at = time.time()
        return True
    return store.update(job_id, change)


def finish(store: JobStore, job_id: str, attempt: int, status: str, text: str, *,
           error: str | None = None, outputs: dict | None = None) -> JobRecord | None:
    """running -> done / failed / cancelled, if this attempt still holds the job."""
    assert status in (DONE, FAILED, CANCELLED)

    def change(rec: JobRecord) -> bool:
        if not owns(rec, attempt):
            return False
        now = time.time()
        rec.status, rec.finished_at, rec.eta_s = status, now, None
        if status == DONE:
            rec.stage = "done"
        rec.error = error
        if outputs is not None:
            rec.outputs = outputs
        _end_attempt(rec, status, now)
        rec.say(text, now)
        return True
    return store.update(job_id, change)


def requeue(store: JobStore, dispatch: Dispatch, job_id: str, attempt: int, reason: str, *,
            worker_died: bool, max_retries: int) -> JobRecord | None:
    """running -> queued at the front (it resumes from its checkpoints).

    A job whose worker died more than ``max_retries`` times fails instead (it may be what kills
    them); a worker's orderly shutdown does not count.
    """
    def change(rec: JobRecord) -> bool:
        if not owns(rec, attempt):
            return False
        now = time.time()
        _end_attempt(rec, "interrupted", now)
        if rec.cancel_requested:
            rec.status, rec.finished_at = CANCELLED, now
            rec.say(f"cancelled ({reason})", now)
        elif worker_died and rec.retries >= max_retries:
            rec.status, rec.finished_at = FAILED, now
            rec.error = (f"The worker running this job died {rec.retries + 1} times (last: {reason}); "
                         f"stopped retrying. Its inputs and checkpoints are kept: submit it again, or "
                         f"raise BAT_JOB_MAX_RETRIES.")
            rec.say(rec.error, now)
        else:
            rec.retries += int(worker_died)
            rec.status, rec.priority, rec.enqueued_at = QUEUED, 1, now
            rec.stage, rec.worker, rec.lease, rec.runner_pid, rec.heartbeat_at = "queued", None, None, None, None
            rec.it_per_s = rec.eta_s = None
            rec.say(f"re-queued: {reason}; it resumes from its last checkpoint", now)
        return True

    def push(rec: JobRecord) -> None:  # inside the lock: the record and the queue change together
        if rec.status == QUEUED:
            dispatch.push(job_id, priority=rec.priority)
    return store.update(job_id, change, after=push)


def _end_attempt(rec: JobRecord, outcome: str, now: float) -> None:
    if rec.attempts and rec.attempts[-1]["ended_at"] is None:
        rec.attempts[-1].update(ended_at=now, outcome=outcome)
