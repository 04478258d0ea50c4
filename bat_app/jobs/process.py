"""The job process as its worker sees it: start, hand over a job, wait, stop; and how it ended.

The process itself is ``bat_app.jobs.runner``: started ahead of time (it imports torch and the
pipeline code while the worker is idle), it reads one "JOB_ID ATTEMPT" line on stdin and runs
that job. It is in its own session, so a Ctrl-C in the worker's terminal reaches the worker
only, which then asks the job to checkpoint (SIGTERM) before it re-queues it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


class JobProcess:
    """A started ``bat_app.jobs.runner`` process, waiting for its job on stdin."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, "-m", "bat_app.jobs.runner", "--parent", str(os.getpid())],
                                     stdin=subprocess.PIPE, env=env, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def start(self, job_id: str, attempt: int) -> None:
        try:
            self.proc.stdin.write(f"{job_id} {attempt}\n".encode())
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):  # it died while warming up: settle() reports the exit
            pass

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()

    def discard(self) -> None:
        """An unused warm process: close its stdin (it exits) and make sure it is gone."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if self.wait(2.0) is None:
            self.kill()


def child_pythonpath() -> str:
    """The worker's import path for its job processes (pipelines registered from, e.g., tests/)."""
    base = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    paths = [p for p in sys.path if p and os.path.isdir(p) and "site-packages" not in p
             and not any(os.path.realpath(p).startswith(b) for b in base)]
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([os.path.abspath(p) for p in paths] + existing.split(os.pathsep))).strip(os.pathsep)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        name = signal.Signals(-code).name
        why = {"SIGKILL": " (often: the machine ran out of memory)", "SIGSEGV": " (a crash in native code)",
               "SIGABRT": " (aborted by native code)"}.get(name, "")
        return f"was killed by {name}{why}"
    return f"exited with status {code}"


def tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        text = ""
    return "\n".join(text.splitlines()[-lines:]) or "(nothing: it died before its job started; see the worker's output)"
