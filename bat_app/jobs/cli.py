"""``python -m bat_app {submit,status,cancel,jobs,worker,cleanup}``: the job queue from the shell.

    python -m bat_app submit examples/shapes_job.json --images assets/subjects/dot_star   # last line: the id
    python -m bat_app status JOB_ID            # the record as JSON (status, stage, step, total, ...)
    python -m bat_app status JOB_ID --wait     # ... once the job has finished
    python -m bat_app cancel JOB_ID
    python -m bat_app jobs                     # one line per job, newest first
    python -m bat_app worker [--gpu 0]         # run jobs until Ctrl-C (the running job is re-queued)
    python -m bat_app cleanup                  # apply the retention period and disk budget now

Also runnable as ``python -m bat_app.jobs ...``. Settings come from the environment
(BAT_HOME, BAT_REDIS_URL, BAT_MAX_QUEUE, ...; see docs/jobs.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("submit", help="queue a job: a config JSON + a folder of images",
                              description="Validate CONFIG (unknown keys and bad values are refused) and "
                                          "the images, copy both into a new job folder and queue it. "
                                          "Prints the job id on the last line.")
    p.add_argument("config", type=Path, metavar="CONFIG.json")
    p.add_argument("--images", required=True, nargs="+", help="folder of images, or image files")
    p.add_argument("--pipeline", default="compare", help="what the job runs (default: compare)")
    p.set_defaults(func=run_submit)

    p = subparsers.add_parser("status", help="print a job's record as JSON")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--wait", action="store_true", help="wait until it is done, failed or cancelled")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    p.set_defaults(func=run_status)

    p = subparsers.add_parser("cancel", help="cancel a job (queued or running, any stage)")
    p.add_argument("job_id", metavar="ID")
    p.set_defaults(func=run_cancel)

    p = subparsers.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--status", default=None, choices=("queued", "running", "done", "failed", "cancelled"))
    p.add_argument("--json", action="store_true", help="print the records as a JSON list")
    p.set_defaults(func=run_jobs)

    p = subparsers.add_parser("worker", help="run queued jobs, one at a time (one worker per GPU)",
                              description="Pop jobs from the queue (SQLite in the data dir, or Redis "
                                          "when BAT_REDIS_URL is set) and run them. Ctrl-C or SIGTERM: "
                                          "the running job saves a checkpoint and is re-queued.")
    p.add_argument("--gpu", default=None, help="GPU index for this worker (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run_worker)

    p = subparsers.add_parser("cleanup", help="delete finished jobs past retention or over the disk budget")
    p.add_argument("--retention-days", type=float, default=None, help="default: BAT_JOB_RETENTION_DAYS or 7")
    p.add_argument("--disk-budget-gb", type=float, default=None, help="default: BAT_JOB_DISK_GB or 50")
    p.set_defaults(func=run_cleanup)


def run_submit(args) -> int:
    from bat_app.compare.config import CompareConfig

    from .api import status, submit

    config = CompareConfig.from_file(args.config)
    images = args.images[0] if len(args.images) == 1 else args.images
    job_id = submit(config, images, pipeline=args.pipeline)
    view = status(job_id)
    for message in view["messages"]:
        if message["text"].startswith("warning:"):
            print(message["text"], file=sys.stderr)
    print(f"queued at position {view['queue_position']} of {view['queue_length']}; job folder {view['dir']}")
    print(job_id)
    return 0


def run_status(args) -> int:
    from .api import status, wait

    view = wait(args.job_id, timeout=args.timeout) if args.wait else status(args.job_id)
    print(json.dumps(view, indent=1))
    return 0 if view["status"] != "failed" or not args.wait else 3


def run_cancel(args) -> int:
    from .api import cancel

    view = cancel(args.job_id)
    print(json.dumps({k: view[k] for k in ("id", "status", "stage", "cancel_requested", "message")}))
    return 0


def run_jobs(args) -> int:
    from .api import list_jobs

    views = list_jobs(status=args.status)
    if args.json:
        print(json.dumps(views, indent=1))
        return 0
    for v in views:
        where = f"#{v['queue_position']}" if v["queue_position"] else f"{v['step']}/{v['total']}"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created_at"]))
        print(f"{v['id']}  {v['status']:<9}  {v['stage']:<10} {where:<10} {created}  {v['message'][:60]}")
    if not views:
        print("no jobs")
    return 0


def run_worker(args) -> int:
    from .worker import Worker

    logging.getLogger("bat_app.jobs").setLevel(logging.INFO if args.verbose else logging.WARNING)
    worker = Worker(gpu=args.gpu, max_jobs=args.max_jobs)
    worker.acquire_gpu()
    asked = []

    def on_signal(signum, frame):
        asked.append(signum)
        if len(asked) == 1:
            print("stopping: the running job saves a checkpoint and is re-queued (again to force)",
                  file=sys.stderr, flush=True)
            worker.stop()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"worker {worker.id.name}: {'redis' if worker.settings.redis_url else 'sqlite'} queue "
          f"{worker.settings.queue_name!r}, data dir {worker.settings.data_dir}", flush=True)
    worker.run()
    return 0


def run_cleanup(args) -> int:
    from .cleanup import cleanup

    report = cleanup(args.retention_days, args.disk_budget_gb)
    print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bat_app.jobs``: these commands without the rest of the CLI."""
    from bat_app.errors import BatError

    parser = argparse.ArgumentParser(prog="python -m bat_app.jobs")
    register(parser.add_subparsers(title="commands", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
