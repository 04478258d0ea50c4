"""The worker: pops job ids, runs each job in its own process, heartbeats, reaps dead workers' jobs.

    python -m bat_app worker                 # one job at a time; Ctrl-C re-queues the running job
    python -m bat_app worker --gpu 1         # one worker per GPU: CUDA_VISIBLE_DEVICES=1
    w = start_embedded_worker()              # inside the app: the same worker in a thread

Per job: ``claim`` (queued -> running, attempt + 1) -> hand the job to a job process
(``runner``) -> ``supervise`` (heartbeat every heartbeat_s; enforce cancel; on shutdown SIGTERM
the job so it checkpoints, then re-queue it) -> ``settle`` what the job process left unsaid
(crash -> failed with the reason and its log's last lines).
Beside it, ``reap`` runs every heartbeat_s in every worker: running jobs whose worker is gone
(dead local process, or no heartbeat for stale_after_s) are re-queued at the front and resume
from their last checkpoint; queued jobs whose huey message was lost are dispatched again; and
every cleanup_every_s, ``cleanup`` applies the retention period and disk budget.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from bat_app.errors import BatError, JobNotFound

from .lease import WorkerId, holder_is_dead
from .lifecycle import EXIT_INTERRUPTED, EXIT_LEASE_LOST, claim, finish, owns, renew, requeue
from .process import JobProcess, child_pythonpath, describe_exit, tail
from .queue import Dispatch, open_store
from .record import CANCELLED, FAILED, QUEUED, RUNNING
from .settings import JobSettings
from .store import LOG

log = logging.getLogger(__name__)


class Worker:
    """Runs jobs one at a time (one worker per GPU), each in a fresh job process."""

    def __init__(self, settings: JobSettings | None = None, *, gpu: str | None = None, max_jobs: int | None = None,
                 spare_cores: int = 0):
        self.settings = settings or JobSettings.from_env()
        self.spare_cores = spare_cores  # CPU cores the job's torch leaves free (the app's web server)
        self.store = open_store(self.settings)
        self.dispatch = Dispatch(self.settings)  # its own connection: pop blocks for up to a second
        self.id = WorkerId.current()
        self.gpu = gpu
        self.max_jobs = max_jobs
        self.jobs_run = 0
        self.stopping = threading.Event()
        self._current: tuple[str, int] | None = None
        self._warm: JobProcess | None = None
        self._slot = None

    # --- main loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Work until ``stop()`` (or ``max_jobs`` jobs); the running job is re-queued on stop."""
        self.acquire_gpu()
        try:
            self.reap()  # before popping anything: jobs of a crashed worker go back to the front first
        except Exception:
            log.exception("worker %s: first reaper pass failed", self.id.name)
        reaper = threading.Thread(target=self._reap_loop, name="bat-reaper", daemon=True)
        reaper.start()
        log.info("worker %s: queue %s (%s), data dir %s", self.id.name, self.settings.queue_name,
                 "redis" if self.settings.redis_url else "sqlite", self.settings.data_dir)
        try:
            if self.settings.prewarm:
                self._warm = self._spawn()
            while not self.stopping.is_set():
                try:
                    job_id = self.dispatch.pop()
                except Exception as exc:  # Redis restarting, disk hiccup: keep the worker alive
                    log.warning("worker %s: cannot read the queue (%s); retrying", self.id.name, exc)
                    self.stopping.wait(2.0)
                    continue
                if job_id is None:
                    if not self.dispatch.blocking:
                        self.stopping.wait(self.settings.poll_s)
                    continue
                try:
                    self.process(job_id)
                except Exception:  # storage trouble mid-claim: the reaper re-dispatches the job later
                    log.exception("worker %s: job %s could not be run", self.id.name, job_id)
                    self.stopping.wait(2.0)
                if self.max_jobs is not None and self.jobs_run >= self.max_jobs:
                    break
        finally:
            self.stopping.set()
            if self._warm is not None:
                self._warm.discard()
            reaper.join(timeout=5)
            if self._slot is not None:
                self._slot.close()

    def stop(self) -> None:
        self.stopping.set()

    def acquire_gpu(self) -> None:
        """Take this machine's lock on the worker's GPU (BatError if another worker has it)."""
        if self._slot is None:
            self._slot = gpu_slot(self.gpu)

    def process(self, job_id: str) -> None:
        """Claim the job a message names, run it, settle it. A stale message is dropped."""
        if self.stopping.is_set():  # popped while shutting down: put it back
            with contextlib.suppress(JobNotFound):
                record = self.store.read(job_id)
                if record.status == QUEUED:
                    self.dispatch.push(job_id, priority=record.priority)
            return
        if self._warm is None or not self._warm.alive():
            self._warm = self._spawn()
        proc = self._warm
        try:
            record = claim(self.store, job_id, self.id, runner_pid=proc.pid)
        except JobNotFound:
            record = None
        if record is None:  # cancelled, already run by a duplicate message, or deleted
            return
        self._warm = None
        self.jobs_run += 1
        self._current = (job_id, record.attempt)
        try:
            proc.start(job_id, record.attempt)
            outcome = self.supervise(proc, job_id, record.attempt)
            self.settle(job_id, record.attempt, proc, outcome)
        finally:
            self._current = None
            # The next job's process starts once this job has ended, not beside it: its imports
            # take ~13 s of CPU, which on a 2-core machine came out of the running job's time.
            if self.settings.prewarm and not self.stopping.is_set():
                self._warm = self._spawn()

    # --- one job -----------------------------------------------------------------------
    def supervise(self, proc: "JobProcess", job_id: str, attempt: int) -> str:
        """Wait for the job process; heartbeat, enforce cancel and shutdown. Returns how it ended."""
        s = self.settings
        next_beat = time.monotonic() + s.heartbeat_s
        cancel_at = term_at = None
        while proc.wait(0.1) is None:
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + s.heartbeat_s
                try:
                    record = renew(self.store, job_id, attempt) or self.store.read(job_id)
                except JobNotFound:
                    record = None
                except Exception as exc:  # a storage hiccup is not a lost lease; try next beat
                    log.warning("job %s: heartbeat failed (%s)", job_id, exc)
                    continue
                if record is not None and record.attempt == attempt and record.finished:
                    if proc.wait(max(s.cancel_grace_s, 5.0)) is None:  # it wrote its ending: let it exit
                        proc.kill()
                    return "exited"
                if record is None or not owns(record, attempt):
                    log.warning("job %s: lease lost (re-queued or deleted); stopping it here", job_id)
                    proc.kill()
                    return "lease_lost"
                if record.cancel_requested and cancel_at is None:
                    cancel_at = now  # the job process polls the flag itself; this is the backstop
            if cancel_at is not None and now - cancel_at > s.cancel_grace_s:
                log.warning("job %s: did not stop %.0fs after cancel; killing it", job_id, s.cancel_grace_s)
                proc.kill()
                return "killed_after_cancel"
            if self.stopping.is_set() and term_at is None:
                proc.terminate()  # the job saves a checkpoint and exits EXIT_INTERRUPTED
                term_at = now
            if term_at is not None and now - term_at > max(s.cancel_grace_s, 5.0):
                proc.kill()
                return "killed_on_shutdown"
        return "exited"

    def settle(self, job_id: str, attempt: int, proc: "JobProcess", outcome: str) -> None:
        """Write what the job process could not: cancelled, re-queued, or failed with the reason."""
        try:
            record = self.store.read(job_id)
        except JobNotFound:
            return
        if not owns(record, attempt) or outcome == "lease_lost" or proc.returncode == EXIT_LEASE_LOST:
            return  # the job process wrote its own ending, or the job is someone else's now
        if record.cancel_requested:
            finish(self.store, job_id, attempt, CANCELLED, f"cancelled: the job process was stopped in stage "
                                                           f"{record.stage!r}")
        elif proc.returncode == EXIT_INTERRUPTED or outcome == "killed_on_shutdown" or self.stopping.is_set():
            requeue(self.store, self.dispatch, job_id, attempt, f"worker {self.id.name} shut down",
                    worker_died=False, max_retries=self.settings.max_retries)
        else:
            finish(self.store, job_id, attempt, FAILED, f"failed in stage {record.stage!r}",
                   error=f"The job process {describe_exit(proc.returncode)} in stage {record.stage!r}. "
                         f"Inputs and checkpoints are kept. Last lines of {LOG}:\n"
                         f"{tail(self.store.folder(job_id) / LOG)}")

    def _spawn(self) -> "JobProcess":
        return JobProcess(self.child_env())

    def child_env(self) -> dict[str, str]:
        """The environment of the job processes this worker starts."""
        env = {**os.environ, **self.settings.env(), "PYTHONPATH": child_pythonpath()}
        if self.spare_cores and not env.get("BAT_TORCH_THREADS"):  # an operator's setting wins
            env["BAT_TORCH_THREADS"] = str(max(1, usable_cores() - self.spare_cores))
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        return env

    # --- reaping -----------------------------------------------------------------------
    def _reap_loop(self) -> None:
        next_cleanup = time.monotonic() + min(60.0, self.settings.cleanup_every_s)
        while not self.stopping.is_set():
            try:
                self.reap()
                if time.monotonic() >= next_cleanup:
                    next_cleanup = time.monotonic() + self.settings.cleanup_every_s
                    from .cleanup import cleanup

                    cleanup(settings=self.settings)
            except Exception:  # never let the reaper die: it is what recovers lost jobs
                log.exception("worker %s: reaper pass failed", self.id.name)
            self.stopping.wait(min(self.settings.heartbeat_s, 5.0))

    def reap(self) -> list[str]:
        """Re-queue running jobs whose worker is gone; re-dispatch queued jobs with no message."""
        s, now, acted, pending = self.settings, time.time(), [], None
        for record in self.store.all():
            if record.status == RUNNING and self._current != (record.id, record.attempt):
                silent = now - (record.heartbeat_at or 0)
                if s.local_liveness and holder_is_dead(record.lease):
                    reason = f"its worker {record.worker} died"
                elif silent > s.stale_after_s:
                    reason = f"no heartbeat from worker {record.worker} for {silent:.0f}s"
                else:
                    continue
                with contextlib.suppress(JobNotFound):
                    if requeue(self.store, self.dispatch, record.id, record.attempt, reason,
                               worker_died=True, max_retries=s.max_retries):
                        log.warning("job %s: %s; re-queued", record.id, reason)
                        acted.append(record.id)
            elif record.status == QUEUED and now - (record.enqueued_at or record.created_at) > s.stale_after_s:
                pending = set(self.dispatch.pending()) if pending is None else pending
                if record.id not in pending:
                    with contextlib.suppress(JobNotFound), self.store.lock(record.id):
                        current = self.store.read(record.id)
                        if current.status == QUEUED:
                            self.dispatch.push(record.id, priority=current.priority)
                            log.warning("job %s: queued without a queue message; dispatched again", record.id)
                            acted.append(record.id)
        return acted


class EmbeddedWorker:
    """A worker in a background thread of the app process (jobs still run in their own processes)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.thread = threading.Thread(target=self._run, name="bat-embedded-worker", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:
            self.error = exc
            log.exception("embedded worker stopped")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; a running job checkpoints and is re-queued (it resumes on the next start)."""
        self.worker.stop()
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


def start_embedded_worker(settings: JobSettings | None = None, *, gpu: str | None = None) -> EmbeddedWorker | None:
    """Start a worker thread in this (app) process; None when this machine's GPU already has a worker.

    The worker stops at interpreter exit (``atexit``), re-queueing its running job, so a
    restarting app loses nothing; a killed app's job is re-queued by the next start's reaper.
    """
    # One core stays with the app: measured on 2 cores with the app and a browser polling the
    # progress, the example job took 327 s with 1 torch thread against 396 s with 2 (its
    # training 56 + 72 s against 83 + 99 s: two threads wait on each other when one is preempted).
    worker = Worker(settings, gpu=gpu, spare_cores=1)
    try:
        worker.acquire_gpu()
    except BatError as exc:
        log.warning("not starting the embedded worker: %s", exc)
        return None
    embedded = EmbeddedWorker(worker)
    embedded.thread.start()
    atexit.register(embedded.stop)
    return embedded


# --- helpers -----------------------------------------------------------------------------

def usable_cores() -> int:
    """CPU cores this process may run on (a container's limit, where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_slot(gpu: str | None):
    """Hold this machine's lock for the worker's GPU, so two workers never share one GPU.

    Only where NVIDIA GPUs exist; CPU workers (tests, small boxes) take no lock.
    Returns the open lock file (close it to release), or None.
    """
    if gpu is None:
        if not _has_nvidia_gpu():
            return None
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0") or "0"
    path = Path(tempfile.gettempdir()) / f"bat-worker-gpu-{gpu}.lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise BatError(f"GPU {gpu} on this machine already has a worker ({holder}); run one worker "
                       f"per GPU, e.g. `python -m bat_app worker --gpu 1` for the next one.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def _has_nvidia_gpu() -> bool:
    root = Path("/proc/driver/nvidia/gpus")
    return root.is_dir() and any(root.iterdir())
