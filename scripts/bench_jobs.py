"""Measure the job queue: submit-to-start latency of an idle queue, and SIGKILL-to-running-again.

    python scripts/bench_jobs.py                       # SQLite and Redis, default worker settings
    python scripts/bench_jobs.py --backends sqlite --samples 3 --idle 10
    python scripts/bench_jobs.py --quick                 # a smoke run: SQLite, one of each

Workers are real ``python -m bat_app.jobs worker`` processes with the default settings
(heartbeat 5 s, stale after 30 s, SQLite poll 0.25 s, a prewarmed job process importing
torch/diffusers); the jobs run a no-op pipeline defined here, so what is measured is the
queue, not a training. Redis: BAT_REDIS_URL, else a redis-server of its own on loopback.

Reported (seconds; times come from the job records, all on this machine's clock):
  submit -> claimed      submit() called until a worker marked the job running
  submit -> pipeline     ... until the pipeline's first progress event was recorded
  kill -> claimed        SIGKILL of the worker running a job until another worker claimed it
  kill -> pipeline       ... until the pipeline ran again (resumed)
The kill is measured twice: with the same-machine liveness check (a dead local worker is seen
at the next reaper pass) and with heartbeats only, which is what a worker on another machine
sees (stale_after_s, default 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]


# --- the pipeline the workers run (imported by job processes as bench_jobs:pipeline) -------

def pipeline(config, images, out_dir, *, progress=None, cancel=None, resume=True):
    from bat_app.errors import Cancelled

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(_event("validate", "pipeline started"))
    if config["class_noun"] == "hold" and not (out_dir / "held").exists():  # hold on the first run only
        (out_dir / "held").touch()
        progress(_event("train", "holding until the worker is killed"))
        while not cancel():
            time.sleep(0.05)
        raise Cancelled("stopped")
    progress(_event("package", ""))
    return {}


pipeline.config_from_dict = dict


def _event(stage, message):
    return SimpleNamespace(stage=stage, step=0, total=1, loss=None, it_per_s=None, eta_s=None,
                           message=message, method=None)


# --- the measurements ---------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--samples", type=int, default=5, help="submissions timed per backend")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds the queue stays idle before each timed submission")
    parser.add_argument("--kills", type=int, default=3, help="kills timed with the same-machine check")
    parser.add_argument("--stale", type=float, default=None, help="stale_after_s for the heartbeat-only "
                        "kills (default: the setting's default, 30 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: SQLite only, one submission, one kill "
                        "of each kind (stale after 3 s)")
    args = parser.parse_args()
    if args.quick:
        args.backends, args.samples, args.idle, args.kills, args.stale = "sqlite", 1, 0.5, 1, 3.0
    results = {}
    for backend in args.backends.split(","):
        with Bench(backend, args.stale, args.kills, heartbeat_kills=1 if args.quick else 2) as bench:
            results[backend] = bench.run(args.samples, args.idle)
    print(json.dumps(results, indent=1))
    return 0


class Bench:
    def __init__(self, backend: str, stale: float | None, kills: int, heartbeat_kills: int = 2):
        self.backend, self.stale, self.kills, self.heartbeat_kills = backend, stale, kills, heartbeat_kills
        self.home = Path(tempfile.mkdtemp(prefix="bat-bench-"))
        self.procs: list[subprocess.Popen] = []
        self.redis = None

    def __enter__(self):
        self.saved_env = dict(os.environ)
        os.environ.update({
            "BAT_HOME": str(self.home), "BAT_JOB_PIPELINES": "bench=bench_jobs:pipeline",
            # Job processes import this script's pipeline as bench_jobs:pipeline (the package
            # itself is installed); this process finds it because it runs from scripts/.
            "PYTHONPATH": str(REPO / "scripts"),
            "BAT_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "BAT_QUEUE_NAME": f"bench{os.getpid()}"})
        if self.backend == "sqlite":
            os.environ.pop("BAT_REDIS_URL", None)
        if self.backend == "redis" and not os.environ.get("BAT_REDIS_URL"):
            os.environ["BAT_REDIS_URL"] = self._start_redis()
        self.images = _images(self.home / "upload")
        return self

    def __exit__(self, *exc):
        for proc in self.procs + ([self.redis] if self.redis else []):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        os.environ.clear()
        os.environ.update(self.saved_env)
        shutil.rmtree(self.home, ignore_errors=True)

    def worker(self, **env) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "bat_app.jobs", "worker"], cwd=REPO,
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def run(self, samples: int, idle: float) -> dict:
        from bat_app import jobs

        config = {"token": "sks", "class_noun": "go", "methods": ["none"]}
        print(f"[{self.backend}] starting a worker and warming it up", file=sys.stderr)
        self.worker()
        jobs.wait(jobs.submit(config, self.images, pipeline="bench"), timeout=300)
        claimed, started = [], []
        for i in range(samples):
            time.sleep(idle)  # the worker idles; its next job process finishes importing
            t0 = time.time()
            job_id = jobs.submit(config, self.images, pipeline="bench")
            record = jobs.wait(job_id, timeout=120, poll_s=0.02)
            claimed.append(record["attempts"][0]["started_at"] - t0)
            started.append(_message_time(record, "pipeline started", 1) - t0)
            print(f"[{self.backend}] submit {i + 1}: claimed {claimed[-1]:.3f}s, pipeline {started[-1]:.3f}s",
                  file=sys.stderr)
        out = {"submit_to_claimed_s": _summary(claimed), "submit_to_pipeline_s": _summary(started)}
        heartbeat_only = {"BAT_JOB_LOCAL_LIVENESS": "0"} | ({"BAT_JOB_STALE_S": str(self.stale)} if self.stale else {})
        for name, env, repeats in (("kill_same_machine", {}, self.kills), ("kill_heartbeat_only", heartbeat_only, self.heartbeat_kills)):
            runs = [self.kill(config, idle, env) for _ in range(repeats)]
            out[name] = {key: _summary([r[key] for r in runs]) for key in runs[0]}
        return out

    def kill(self, config: dict, idle: float, env: dict) -> dict:
        """Kill the worker running a job; time until another (warm, idle) worker runs it again.

        The kill falls at a random point of the reaper's cycle (every heartbeat_s = 5 s)."""
        from bat_app import jobs

        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        os.environ.update(env)
        first = self.worker(**env)
        job_id = jobs.submit(config | {"class_noun": "hold"}, self.images, pipeline="bench")
        while jobs.status(job_id)["stage"] != "train":  # holding in the pipeline
            time.sleep(0.1)
        self.worker(**env)
        time.sleep(idle + random.uniform(0, 5))  # both workers warm; the job holds on the first
        t0 = time.time()
        first.send_signal(signal.SIGKILL)
        record = jobs.wait(job_id, timeout=600, poll_s=0.02)
        for key in env:
            os.environ.pop(key)
        result = {"kill_to_claimed_s": record["attempts"][1]["started_at"] - t0,
                  "kill_to_pipeline_s": _message_time(record, "pipeline started", 2) - t0}
        print(f"[{self.backend}] kill ({env or 'default settings'}): {result}", file=sys.stderr)
        return result

    def _start_redis(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed and BAT_REDIS_URL is not set")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.redis = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        return f"redis://127.0.0.1:{port}/0"


def _message_time(record: dict, text: str, nth: int) -> float:
    times = [m["t"] for m in record["messages"] if text in m["text"]]
    return times[nth - 1]


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3), "n": len(values)}


def _images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        image = Image.new("RGB", (64, 64), colour)
        image.paste((250, 250, 0), (16 + 4 * i, 16, 40 + 4 * i, 40))
        image.save(folder / f"{i}.png")
    return folder


if __name__ == "__main__":
    sys.exit(main())
