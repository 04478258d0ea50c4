"""Several workers on one Redis (as on several GPU machines sharing a Redis and a data dir)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bat_app import jobs
from bat_app.jobs.queue import connect
from conftest import make_subject_images
from test_jobs_support import job_env, procs, redis_url, run_log, use_redis, wait_until  # noqa: F401

pytestmark = pytest.mark.redis

STAGES_JOB = {"token": "sks", "class_noun": "none", "methods": ["none"]}


@pytest.fixture
def on_redis(job_env, redis_url, monkeypatch, tmp_path):
    use_redis(monkeypatch, redis_url)
    return make_subject_images(tmp_path / "subject", n=3, size=32)


def test_two_workers_never_run_the_same_job(on_redis, procs, job_env, monkeypatch):
    monkeypatch.setenv("BAT_TEST_STAGE_S", "0.05")
    first, second = procs.worker(), procs.worker()
    ids = [jobs.submit(STAGES_JOB, on_redis, pipeline="stages") for _ in range(10)]
    _, _, dispatch = connect()
    for job_id in ids:  # every message delivered twice, as after a redelivery
        dispatch.push(job_id)
    for job_id in ids:
        assert jobs.wait(job_id, timeout=60)["status"] == "done"
    runs = run_log(Path(job_env["BAT_TEST_RUN_LOG"]))
    assert sorted(job for job, _, event in runs if event == "start") == sorted(ids)  # each exactly once
    assert {pid for _, pid, _ in runs} == {first.pid, second.pid}  # both took jobs
    assert all(jobs.status(job_id)["attempt"] == 1 for job_id in ids)
    wait_until(lambda: not dispatch.pending(), 10, "the duplicate messages to be dropped")


def test_a_killed_workers_job_moves_to_the_other_worker(on_redis, procs, job_env):
    job_id = jobs.submit(STAGES_JOB | {"class_noun": "train"}, on_redis, pipeline="stages")  # holds in train once
    first = procs.worker()
    wait_until(lambda: jobs.status(job_id)["stage"] == "train", 60, "the first worker to reach train")
    second = procs.worker()
    first.send_signal(signal.SIGKILL)
    done = jobs.wait(job_id, timeout=60)
    assert done["status"] == "done", done["error"]
    assert [a["worker"].split(":")[-1] for a in done["attempts"]] == [str(first.pid), str(second.pid)]
    assert (done["attempt"], done["retries"]) == (2, 1)
    runs = run_log(Path(job_env["BAT_TEST_RUN_LOG"]))  # the rerun skipped the stages finished before the kill
    assert [event for _, _, event in runs] == ["start", "start", "skip-validate", "skip-select", "end"]
