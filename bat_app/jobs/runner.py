"""The job process: a worker starts one per job; it runs the pipeline and reports into job.json.

    python -m bat_app.jobs.runner --parent PID    # then reads "JOB_ID ATTEMPT" on stdin

It imports torch and the pipeline code *before* it is given a job, so a worker can keep one
started ("prewarm") and hand it the next job without the import delay. It dies with its
worker (PR_SET_PDEATHSIG), so a job never runs twice when a worker is killed. Exit codes:
0 finished (done or cancelled, written to the record), 1 failed (written), 75 interrupted by
SIGTERM after a checkpoint (the worker re-queues it), 76 lost its lease (writes nothing).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .lifecycle import EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LEASE_LOST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bat_app.jobs.runner")
    parser.add_argument("--parent", type=int, required=True, help="pid of the worker; exit when it dies")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    prewarm()
    line = sys.stdin.readline()  # blocks until the worker hands over a job (EOF: not needed)
    if not line.strip():
        return 0
    job_id, attempt = line.split()
    return run_job(job_id, int(attempt), args.parent)


def prewarm() -> None:
    """Import what jobs need (BAT_JOB_PREWARM_MODULES: torch, diffusers, the trainer ...) before one arrives."""
    import importlib

    from .settings import JobSettings

    for module in filter(None, (m.strip() for m in JobSettings.from_env().prewarm_modules.split(","))):
        importlib.import_module(module)
    _torch_threads()


def _torch_threads() -> None:
    threads = os.environ.get("BAT_TORCH_THREADS")
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


def run_job(job_id: str, attempt: int, parent: int) -> int:
    from bat_app.errors import BatError, Cancelled

    from .lifecycle import finish
    from .pipelines import config_reader, load_pipeline
    from .queue import connect
    from .record import CANCELLED, DONE, FAILED
    from .store import CONFIG, LOG, OUT

    settings, store, _ = connect()
    folder = store.folder(job_id)
    _log_to(folder / LOG)
    print(f"=== attempt {attempt} of job {job_id}, process {os.getpid()}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')} ===", flush=True)
    ctx = JobContext(store, job_id, attempt, parent, settings.progress_every_s)
    signal.signal(signal.SIGTERM, ctx.on_sigterm)
    try:
        record = store.read(job_id)
        pipeline = load_pipeline(record.pipeline)
        config = config_reader(pipeline)(json.loads((folder / CONFIG).read_text()))
        images = [folder / name for name in record.images]
        _torch_threads()
        if ctx.cancel():
            raise Cancelled("stopped before the pipeline started")
        result = pipeline(config, images, folder / OUT, progress=ctx.progress, cancel=ctx.cancel, resume=True)
        ctx.flush()
        outputs = _outputs(result, folder, folder / OUT)
        _retrying(lambda: finish(store, job_id, attempt, DONE, f"done: {len(outputs)} outputs", outputs=outputs))
        return EXIT_DONE
    except Cancelled as exc:
        print(f"stopped: {exc}", flush=True)
        ctx.flush()
        if ctx.lease_lost:
            return EXIT_LEASE_LOST
        if ctx.interrupted and not ctx.cancel_seen():
            return EXIT_INTERRUPTED
        finish(store, job_id, attempt, CANCELLED, f"cancelled during stage {ctx.stage!r}")
        return EXIT_DONE
    except BatError as exc:  # a problem the user can fix: the message is written for them
        traceback.print_exc()
        ctx.flush()
        finish(store, job_id, attempt, FAILED, f"failed in stage {ctx.stage!r}", error=str(exc))
        return EXIT_FAILED
    except Exception as exc:  # a bug: say so, keep the traceback in the log
        traceback.print_exc()
        ctx.flush()
        finish(store, job_id, attempt, FAILED, f"failed in stage {ctx.stage!r}",
               error=f"Internal error in stage {ctx.stage!r}: {type(exc).__name__}: {exc}. "
                     f"The traceback is in {folder / LOG}; the inputs are kept.")
        return EXIT_FAILED


class JobContext:
    """The pipeline's ``progress`` and ``cancel`` callables, backed by the job record."""

    def __init__(self, store, job_id: str, attempt: int, parent: int, every_s: float):
        self.store, self.job_id, self.attempt, self.parent, self.every_s = store, job_id, attempt, parent, every_s
        self.interrupted = False   # SIGTERM: the worker is shutting down
        self.lease_lost = False    # the job was taken from this attempt (or the worker died)
        self.cancelled = False     # the user asked to cancel
        self.stage, self.method = "starting", None
        self._message = ""
        self._pending = None
        self._last_write = 0.0
        self._last_check = 0.0
        self._first_train_step = None

    def on_sigterm(self, signum, frame) -> None:
        self.interrupted = True

    # --- cancel ------------------------------------------------------------------------
    def cancel(self) -> bool:
        if os.getppid() != self.parent:
            self.lease_lost = True
        if self.interrupted or self.lease_lost or self.cancelled:
            return True
        now = time.monotonic()
        if now - self._last_check >= self.every_s:
            self._last_check = now
            self._check_record()
        return self.cancelled or self.lease_lost

    def cancel_seen(self) -> bool:
        self._check_record()
        return self.cancelled

    def _check_record(self) -> None:
        from ..errors import JobNotFound
        from .lifecycle import owns

        try:
            record = self.store.read(self.job_id)
        except JobNotFound:
            self.lease_lost = True
            return
        except Exception as exc:  # a storage hiccup: look again next time
            print(f"warning: cannot read the job record ({exc})", file=sys.stderr, flush=True)
            return
        if not owns(record, self.attempt):
            self.lease_lost = True
        elif record.cancel_requested:
            self.cancelled = True

    # --- progress ----------------------------------------------------------------------
    def progress(self, event) -> None:
        if event.stage == "train" and self._first_train_step is None:
            self._first_train_step = event.step
        # Stage changes, messages and stage ends are written at once; steps at most every every_s.
        urgent = (event.stage != self.stage or event.method != self.method or event.step >= event.total
                  or (bool(event.message) and event.message != self._message))
        self.stage, self.method = event.stage, event.method
        self._message = event.message or self._message
        self._pending = event
        if urgent or time.monotonic() - self._last_write >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None

    def _write(self, event) -> None:
        from ..errors import JobNotFound
        from .lifecycle import owns

        first_step = self._first_train_step

        def change(rec) -> bool:
            if not owns(rec, self.attempt):
                return False
            rec.stage, rec.method, rec.step, rec.total = event.stage, event.method, event.step, event.total
            if event.loss is not None:
                rec.loss = event.loss
            rec.it_per_s, rec.eta_s = event.it_per_s, event.eta_s
            text = f"{event.method + ': ' if event.method else ''}{event.stage}: {event.message}"
            if event.message and text != rec.message:  # a repeated message is not news
                rec.say(text)
            if rec.attempts and rec.attempts[-1].get("first_step") is None and first_step is not None:
                rec.attempts[-1]["first_step"] = first_step
            return True

        try:
            written = self.store.update(self.job_id, change)
        except JobNotFound:
            written = None
        except Exception as exc:  # a storage hiccup must not fail an hour of training
            print(f"warning: cannot write progress ({exc})", file=sys.stderr, flush=True)
            return
        self._last_write = time.monotonic()
        if written is None:
            self.lease_lost = True


# --- helpers -----------------------------------------------------------------------------

def _retrying(write, tries: int = 5, pause_s: float = 2.0):
    """A final record write survives a short storage outage (else the finished job would be redone)."""
    for attempt in range(tries):
        try:
            return write()
        except Exception as exc:
            if attempt == tries - 1:
                raise
            print(f"warning: cannot write the record ({exc}); retrying", file=sys.stderr, flush=True)
            time.sleep(pause_s)


def _outputs(result, folder: Path, out_dir: Path) -> dict[str, str]:
    outputs = result if isinstance(result, dict) else getattr(result, "outputs", None) or {}
    relative = {}
    for name, path in outputs.items():
        path = Path(path)
        path = path if path.is_absolute() else out_dir / path
        try:
            relative[name] = str(path.resolve().relative_to(folder.resolve()))
        except ValueError:
            relative[name] = str(path)
    return relative


def _log_to(path: Path) -> None:
    """Send this process's stdout and stderr (and those of libraries, C code included) to the job log."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when the worker that started it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the cancel callable notices a new parent pid instead
        pass
    if os.getppid() != parent:  # the worker died before the prctl above
        os._exit(EXIT_LEASE_LOST)


if __name__ == "__main__":
    sys.exit(main())
