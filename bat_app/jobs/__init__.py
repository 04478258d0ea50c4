"""Persistent jobs on a huey queue: submit, watch, cancel; workers that survive crashes.

    from bat_app import jobs
    job_id = jobs.submit(config_dict, ["photos/01.png", "photos/02.png", "photos/03.png"])
    jobs.status(job_id)          # {"status": "running", "stage": "train", "step": 120, "total": 400, ...}
    jobs.queue_position(job_id)  # 1 = next to start, None once started
    jobs.cancel(job_id)
    jobs.list_jobs()
    worker = jobs.start_embedded_worker()   # the app runs jobs itself (one at a time)
    jobs.cleanup(retention_days=7, disk_budget_gb=50)

From the shell: ``python -m bat_app submit CONFIG.json --images DIR``, ``status ID``,
``cancel ID``, ``jobs``, ``worker``. Layout, lifecycle and deployment: docs/jobs.md.

Modules: ``settings`` (JobSettings from the environment), ``record`` (JobRecord, statuses),
``store`` (job folders, atomic records, locks), ``queue`` (huey dispatch, SQLite or Redis),
``lifecycle`` (record transitions), ``api`` (what the UI calls), ``worker`` (worker, reaper,
embedded worker), ``runner`` (the per-job process), ``pipelines`` (what a job runs),
``cleanup`` (retention), ``cli``.
"""

from .api import cancel, job_dir, list_jobs, queue_position, status, submit, wait
from .cleanup import cleanup
from ..errors import JobNotFound, QueueFull
from .record import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING, STATUSES, JobRecord
from .settings import JobSettings
from .worker import EmbeddedWorker, Worker, start_embedded_worker

__all__ = ["CANCELLED", "DONE", "FAILED", "FINISHED", "QUEUED", "RUNNING", "STATUSES", "EmbeddedWorker",
           "JobNotFound", "JobRecord", "JobSettings", "QueueFull", "Worker", "cancel", "cleanup", "job_dir",
           "list_jobs", "queue_position", "start_embedded_worker", "status", "submit", "wait"]
