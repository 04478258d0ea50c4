"""Pipelines and fixtures for the job-queue tests (this module holds no tests).

Worker processes import the pipelines by name, as registered in ``BAT_JOB_PIPELINES``:

    tiny    a real DreamBooth-LoRA training of the tiny test model (checkpoints, resume)
    stages  validate -> select -> train -> preview -> metrics -> package, instant unless told
            (by the config's ``class_noun``) to stop in one stage until cancelled, to fail,
            or to crash. Resumable like run_compare: a rerun skips the stages it finished.
            Every run is logged to BAT_TEST_RUN_LOG as "job_id worker_pid event" lines.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from bat_app.errors import Cancelled

REPO = Path(__file__).resolve().parents[1]
STAGES = ("validate", "select", "train", "preview", "metrics", "package")
PIPELINES = "tiny=test_jobs_support:tiny_train,stages=test_jobs_support:stages"


# --- pipelines (run inside job processes) --------------------------------------------------

def tiny_train(config, images, out_dir, *, progress=None, cancel=None, resume=True):
    """Train the LoRA of ``config.train`` on ``config.model`` (the tiny model folder)."""
    from bat_app.images import load_user_images
    from bat_app.train import ProgressEvent, train_lora

    emit = progress or (lambda event: None)
    delay = float(os.environ.get("BAT_TEST_STEP_DELAY", "0"))
    emit(ProgressEvent("validate", 0, 1))
    user_images = load_user_images(images).images

    def slowed(event):  # makes the training long enough to be killed in the middle
        emit(event)
        if event.stage == "train" and delay:
            time.sleep(delay)

    train_lora(config.model, user_images, config.train_config(len(user_images)), Path(out_dir) / "none", resume=resume,
               progress=slowed, cancel=cancel)
    emit(ProgressEvent("package", 1, 1))
    return SimpleNamespace(outputs={"lora": "none/pytorch_lora_weights.safetensors"})


def stages(config, images, out_dir, *, progress=None, cancel=None, resume=True):
    """Walk the compare stages. ``class_noun`` = a stage: hold there until cancelled (token "deaf":
    ignoring cancel; on a rerun it does not hold again); "explode" raises; "crash" SIGKILLs its
    own process. Needs no torch, so its job processes start fast."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job_id = out_dir.parent.name
    finished = (out_dir / "stages.done").read_text().split() if (out_dir / "stages.done").exists() else []
    _log_run(job_id, "start")
    pause = float(os.environ.get("BAT_TEST_STAGE_S", "0"))
    for stage in STAGES:
        if stage in finished:
            _log_run(job_id, f"skip-{stage}")
            continue
        progress(_event(stage, 0))
        if stage == "select" and config.class_noun == "explode":
            raise RuntimeError("boom")
        if stage == "select" and config.class_noun == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        held = out_dir / f"held-{stage}"
        if stage == config.class_noun and not held.exists():
            held.touch()
            while config.token == "deaf" or not cancel():
                time.sleep(0.02)
            raise Cancelled(f"stopped in {stage}")
        time.sleep(pause)
        progress(_event(stage, 1))
        with open(out_dir / "stages.done", "a") as f:
            f.write(stage + "\n")
    (out_dir / "result.txt").write_text(job_id)
    _log_run(job_id, "end")
    return {"result": "result.txt"}


stages.config_from_dict = lambda data: SimpleNamespace(**data)  # no CompareConfig (and torch) import


def _event(stage: str, step: int):
    """A progress event as the pipeline emits it (bat_app.progress imports no torch)."""
    from bat_app.progress import ProgressEvent

    return ProgressEvent(stage, step, 1, method="none" if stage == "train" else None)


def _log_run(job_id: str, event: str) -> None:
    path = os.environ.get("BAT_TEST_RUN_LOG")
    if path:
        with open(path, "a") as f:  # O_APPEND: whole lines from concurrent processes
            f.write(f"{job_id} {os.getppid()} {event}\n")


def run_log(path: Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    return [(a, int(b), c) for a, b, c in (line.split() for line in path.read_text().splitlines())]


# --- fixtures ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """BAT_TEST_REDIS_URL, else a redis-server of our own on a free loopback port."""
    if os.environ.get("BAT_TEST_REDIS_URL"):
        yield os.environ["BAT_TEST_REDIS_URL"]
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def job_env(monkeypatch, tmp_path):
    """Fast queue timings and the test pipelines, for this process and the workers it starts."""
    values = {
        "BAT_JOB_PIPELINES": PIPELINES,
        "BAT_JOB_HEARTBEAT_S": "0.3",
        "BAT_JOB_STALE_S": "3",
        # a lock left by a killed process frees well inside the tests' 60 s waits (default 60 s)
        "BAT_JOB_LOCK_S": "10",
        "BAT_JOB_CANCEL_GRACE_S": "2",
        "BAT_JOB_POLL_S": "0.05",
        "BAT_JOB_PROGRESS_S": "0.1",
        "BAT_JOB_PREWARM_MODULES": "",  # the stages pipeline needs no torch; tiny imports it per job
        "BAT_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "BAT_TEST_RUN_LOG": str(tmp_path / "runs.log"),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BAT_REDIS_URL", raising=False)
    monkeypatch.delenv("BAT_QUEUE_NAME", raising=False)
    return values


def use_redis(monkeypatch, url: str) -> None:
    monkeypatch.setenv("BAT_REDIS_URL", url)
    monkeypatch.setenv("BAT_QUEUE_NAME", f"test{uuid.uuid4().hex[:12]}")  # a fresh queue per test


class Processes:
    """Workers and app stand-ins started by a test; all killed at teardown."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, name: str = "worker") -> subprocess.Popen:
        log = open(self.folder / f"{name}-{len(self.started)}.log", "w")
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env=dict(os.environ))
        proc.log_path = log.name
        self.started.append(proc)
        return proc

    def worker(self, *extra: str) -> subprocess.Popen:
        return self.start("-m", "bat_app.jobs", "worker", "-v", *extra)

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.kill_all()


def wait_until(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def pid_alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
