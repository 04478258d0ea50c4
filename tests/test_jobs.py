"""The job queue: submit checks, ordering, durability across kills and restarts, cancel, cleanup.

Workers are real processes (``python -m bat_app.jobs worker``) running real job processes;
``backend`` runs a test against the SQLite huey and against a real Redis (redis-server).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bat_app import jobs
from bat_app.errors import ImageError, InputError
from bat_app.jobs.lease import WorkerId
from bat_app.jobs.queue import connect
from bat_app.jobs.record import JobRecord
from bat_app.jobs.worker import Worker
from conftest import make_subject_images
from test_jobs_support import (REPO, STAGES, job_env, pid_alive, procs, redis_url, run_log,  # noqa: F401
                               use_redis, wait_until)

STAGES_JOB = {"token": "sks", "class_noun": "none", "methods": ["none"]}


@pytest.fixture
def images(tmp_path) -> Path:
    return make_subject_images(tmp_path / "subject", n=3, size=32)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request, job_env, monkeypatch):
    if request.param == "redis":
        use_redis(monkeypatch, request.getfixturevalue("redis_url"))
    return request.param


def test_a_registered_pipeline_reads_its_own_config(job_env, images):
    # keys CompareConfig would refuse pass the stages pipeline's own reader, and are kept as given
    job_id = jobs.submit(STAGES_JOB | {"anything": 1}, images, pipeline="stages")
    assert json.loads((jobs.job_dir(job_id) / "config.json").read_text())["anything"] == 1
    with pytest.raises(InputError, match=r"Unknown config key\(s\) \['anything'\]"):
        jobs.submit(STAGES_JOB | {"anything": 1}, images)  # the built-in compare's reader


def stages_job(images, **config) -> str:
    return jobs.submit(STAGES_JOB | config, images, pipeline="stages")


def tiny_config(model_dir, steps: int, checkpoint_every: int) -> dict:
    return {"token": "sks", "class_noun": "disc", "model": str(model_dir), "methods": ["none"],
            "train": {"steps": steps, "checkpoint_every": checkpoint_every, "lr": 1e-3, "seed": 0}}


# --- submit --------------------------------------------------------------------------------

def test_submit_refuses_unknown_keys_bad_values_and_bad_images(job_env, images, tmp_path):
    with pytest.raises(InputError, match=r"Unknown config key\(s\) \['stpes'\]"):
        jobs.submit(STAGES_JOB | {"stpes": 10}, images)
    with pytest.raises(InputError, match="`steps` must be a positive integer, got 0"):
        jobs.submit(STAGES_JOB | {"train": {"steps": 0}}, images)
    with pytest.raises(InputError, match="Unknown method"):
        jobs.submit(STAGES_JOB | {"methods": ["nonsense"]}, images)
    with pytest.raises(InputError, match="Unknown pipeline 'nope'"):
        jobs.submit(STAGES_JOB, images, pipeline="nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not an image")
    with pytest.raises(ImageError):
        jobs.submit(STAGES_JOB, tmp_path / "broken")
    assert jobs.list_jobs() == []
    assert not [p for p in (Path(os.environ["BAT_HOME"]) / "jobs").iterdir() if not p.name.startswith("queue.db")]


def test_submit_copies_the_inputs_into_an_unguessable_job_folder(job_env, images):
    job_id = stages_job(images)
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    view = jobs.status(job_id)
    folder = Path(view["dir"])
    assert folder == Path(os.environ["BAT_HOME"]).resolve() / "jobs" / job_id
    assert view["images"] == ["inputs/img0.png", "inputs/img1.png", "inputs/img2.png"]
    assert all((folder / name).read_bytes() == (images / Path(name).name).read_bytes() for name in view["images"])
    assert json.loads((folder / "config.json").read_text())["class_noun"] == "none"
    assert (view["status"], view["stage"], view["step"], view["total"]) == ("queued", "queued", 0, 0)
    assert view["queue_position"] == 1
    with pytest.raises(jobs.JobNotFound):
        jobs.status("0" * 32)
    with pytest.raises(jobs.JobNotFound, match="not a job id"):
        jobs.status("../../etc")


def test_queue_positions_cancel_of_queued_jobs_and_queue_full(backend, images, monkeypatch):
    monkeypatch.setenv("BAT_MAX_QUEUE", "3")
    ids = [stages_job(images) for _ in range(3)]
    assert [jobs.queue_position(i) for i in ids] == [1, 2, 3]
    with pytest.raises(jobs.QueueFull, match=r"^The queue is full \(3 jobs are waiting\): please try again later.$"):
        stages_job(images)
    cancelled = jobs.cancel(ids[0])
    assert (cancelled["status"], cancelled["queue_position"]) == ("cancelled", None)
    assert [jobs.queue_position(i) for i in ids[1:]] == [1, 2]
    fourth = stages_job(images)  # a place is free again
    assert jobs.queue_position(fourth) == 3
    assert [v["id"] for v in jobs.list_jobs()] == [fourth, *reversed(ids)]
    assert [v["id"] for v in jobs.list_jobs(status="queued")] == [fourth, ids[2], ids[1]]


def test_per_client_cap(backend, images, monkeypatch):
    from bat_app.errors import ClientQueueFull

    monkeypatch.setenv("BAT_MAX_PER_CLIENT", "2")
    submit = lambda client: jobs.submit(STAGES_JOB, images, pipeline="stages", client=client)
    mine = [submit("ip:10.0.0.1"), submit("ip:10.0.0.1")]
    with pytest.raises(ClientQueueFull, match=r"You already have 2 job\(s\) queued or running, the most one user "
                                              r"may have at a time \(2\)"):
        submit("ip:10.0.0.1")
    submit("ip:10.0.0.2")          # another client is not held back by the first
    submit(None), submit(None), submit(None)  # the CLI (an operator) has no cap
    jobs.cancel(mine[0])           # a finished job frees its owner's slot
    submit("ip:10.0.0.1")
    record = json.loads((jobs.job_dir(mine[1]) / "job.json").read_text())
    assert len(record["client"]) == 32 and "10.0.0.1" not in json.dumps(record)  # a keyed hash only


def test_job_not_found_names_no_folder(job_env):
    with pytest.raises(jobs.JobNotFound) as info:
        jobs.status("e" * 32)
    assert str(info.value).startswith("No job eeee") and "/" not in str(info.value)


def _submit_one(args) -> str:
    images, = args
    return stages_job(images)


def test_twenty_concurrent_submissions_make_twenty_jobs(backend, images):
    with multiprocessing.get_context("fork").Pool(20) as pool:
        ids = pool.map(_submit_one, [(images,)] * 20)
    assert len(set(ids)) == 20
    settings, store, dispatch = connect()
    assert sorted(store.ids()) == sorted(ids)
    assert sorted(dispatch.pending()) == sorted(ids)  # one message each, none lost or doubled
    positions = sorted(jobs.queue_position(i) for i in ids)
    assert positions == list(range(1, 21))


# --- running -------------------------------------------------------------------------------

def test_worker_runs_jobs_in_order_and_fails_them_readably(backend, images, procs, job_env):
    first, second = stages_job(images), stages_job(images)
    boom = stages_job(images, class_noun="explode")
    crash = stages_job(images, class_noun="crash")
    last = stages_job(images)
    worker = procs.worker()
    for job_id in (first, second, last):
        assert jobs.wait(job_id, timeout=90)["status"] == "done"
    runs = run_log(Path(job_env["BAT_TEST_RUN_LOG"]))
    assert [job for job, _, event in runs if event == "start"] == [first, second, boom, crash, last]
    done = jobs.status(first)
    assert done["outputs"] == {"result": "out/result.txt"}
    assert (Path(done["dir"]) / "out" / "result.txt").read_text() == first
    assert (done["stage"], done["attempt"], done["retries"]) == ("done", 1, 0)

    failed = jobs.status(boom)
    assert failed["status"] == "failed" and failed["stage"] == "select"
    assert failed["error"].startswith("Internal error in stage 'select': RuntimeError: boom.")
    assert "RuntimeError: boom" in (Path(failed["dir"]) / "log.txt").read_text()
    assert len(list((Path(failed["dir"]) / "inputs").iterdir())) == 3  # the inputs are kept
    crashed = jobs.status(crash)
    assert crashed["status"] == "failed"
    assert "was killed by SIGKILL" in crashed["error"] and "in stage 'select'" in crashed["error"]
    assert worker.poll() is None  # a crashing job does not take its worker down


def test_sigkilled_worker_job_resumes_from_its_checkpoint(job_env, images, procs, tiny_model_dir, monkeypatch,
                                                           tmp_path):
    monkeypatch.setenv("BAT_TEST_STEP_DELAY", "0.1")
    monkeypatch.setenv("BAT_JOB_PREWARM_MODULES", "bat_app.train")  # job processes import torch while idle
    config = tiny_config(tiny_model_dir, steps=20, checkpoint_every=4)
    job_id = jobs.submit(config, images, pipeline="tiny")
    first = procs.worker()
    wait_until(lambda: jobs.status(job_id)["status"] == "running", 60, "the first worker to take the job")
    procs.worker()  # a second worker, idle
    wait_until(lambda: (v := jobs.status(job_id))["stage"] == "train" and v["step"] >= 9, 120, "step 9")
    runner = jobs.status(job_id)["runner_pid"]
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until(lambda: not pid_alive(runner), 5, "the job process to die with its worker")

    # The idle worker sees the dead holder (same machine) at its next reaper pass and resumes the job.
    done = jobs.wait(job_id, timeout=120)
    assert done["status"] == "done", done["error"]
    assert (done["attempt"], done["retries"]) == (2, 1)
    assert done["attempts"][0]["worker"] != done["attempts"][1]["worker"]
    resumed_from = done["attempts"][1]["first_step"]
    assert resumed_from >= 8 and resumed_from % 4 == 0  # from a checkpoint, not from step 0
    assert any("resumed from step-0000" in m["text"] for m in done["messages"])
    assert any("re-queued: its worker" in m["text"] and "died" in m["text"] for m in done["messages"])

    from bat_app.compare import CompareConfig
    from bat_app.images import load_user_images
    from bat_app.train import train_lora

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the job processes (and 60x faster than 2 threads on 2 busy cores)
    try:
        photos = load_user_images(images).images
        # The job's settings: the model's recipe for this many photos, the config's on top.
        straight = train_lora(str(tiny_model_dir), photos, CompareConfig.from_dict(config).train_config(len(photos)),
                              tmp_path / "straight")
    finally:
        torch.set_num_threads(threads)
    resumed = load_file(Path(done["dir"]) / done["outputs"]["lora"])
    reference = load_file(straight.files["diffusers"])
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-5)


APP = """  # the app's process, as far as jobs are concerned
import signal, sys, time
from bat_app.jobs import start_embedded_worker
worker = start_embedded_worker()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # atexit stops the embedded worker
print("app up", flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("restart", ["sigterm", "sigkill"])
def test_app_restart_keeps_queued_and_running_jobs(job_env, images, procs, restart):
    running = stages_job(images, class_noun="preview")  # holds in "preview" on its first run
    waiting = stages_job(images)
    app = procs.start("-c", APP, name="app")
    wait_until(lambda: jobs.status(running)["stage"] == "preview", 60, "the job to reach preview")
    if restart == "sigterm":  # an orderly restart: the job checkpoints and goes back to the queue
        app.send_signal(signal.SIGTERM)
        assert app.wait(30) == 0
        between = jobs.status(running)
        assert (between["status"], between["queue_position"], between["retries"]) == ("queued", 1, 0)
    else:  # a crash: the job stays "running" until the next start notices its dead worker
        app.send_signal(signal.SIGKILL)
        app.wait(30)
        assert jobs.status(running)["status"] == "running"
    assert jobs.status(waiting)["status"] == "queued"

    procs.start("-c", APP, name="app")
    done = jobs.wait(running, timeout=60)
    assert done["status"] == "done", done["error"]
    assert (done["attempt"], done["retries"]) == (2, 0 if restart == "sigterm" else 1)
    assert jobs.wait(waiting, timeout=60)["status"] == "done"
    runs = run_log(Path(job_env["BAT_TEST_RUN_LOG"]))
    assert [e for j, _, e in runs if j == running] == [  # the rerun skipped the finished stages
        "start", "start", "skip-validate", "skip-select", "skip-train", "end"]
    assert [j for j, _, e in runs if e == "start"] == [running, running, waiting]


def test_cancel_works_in_every_stage(job_env, images, procs):
    blocker = stages_job(images, class_noun="select")
    queued = stages_job(images)
    procs.worker()
    wait_until(lambda: jobs.status(blocker)["stage"] == "select", 60, "the first job to run")
    assert jobs.cancel(queued)["status"] == "cancelled"  # queued: at once
    assert jobs.cancel(blocker)["cancel_requested"] is True
    assert jobs.wait(blocker, timeout=10)["status"] == "cancelled"

    for stage in STAGES:
        job_id = stages_job(images, class_noun=stage)
        wait_until(lambda: jobs.status(job_id)["stage"] == stage, 60, f"stage {stage}")
        asked = time.monotonic()
        jobs.cancel(job_id)
        view = jobs.wait(job_id, timeout=10, poll_s=0.05)
        assert (view["status"], view["stage"]) == ("cancelled", stage)
        assert time.monotonic() - asked < 3
    # A stage that never polls cancel: the worker kills the job process after the grace period.
    deaf = stages_job(images, class_noun="train", token="deaf")
    wait_until(lambda: jobs.status(deaf)["stage"] == "train", 60, "the deaf job to train")
    asked = time.monotonic()
    jobs.cancel(deaf)
    assert jobs.wait(deaf, timeout=15, poll_s=0.05)["status"] == "cancelled"
    assert time.monotonic() - asked < 2 + 0.3 + 2  # grace + heartbeat + slack
    after = stages_job(images)  # the worker is free again
    assert jobs.wait(after, timeout=60)["status"] == "done"
    assert run_log(Path(job_env["BAT_TEST_RUN_LOG"]))[0][0] == blocker
    assert queued not in {job for job, _, _ in run_log(Path(job_env["BAT_TEST_RUN_LOG"]))}


# --- recovery without a worker process (reaper, cleanup) -----------------------------------

def _running_record(store, job_id: str, lease: dict, heartbeat_at: float, attempt: int = 1) -> None:
    def change(rec: JobRecord) -> None:
        rec.status, rec.stage, rec.attempt, rec.worker, rec.lease = "running", "train", attempt, "elsewhere:1", lease
        rec.heartbeat_at = heartbeat_at
        rec.attempts.append({"attempt": attempt, "worker": "elsewhere:1", "started_at": heartbeat_at,
                             "first_step": None, "ended_at": None, "outcome": None})
    store.update(job_id, change)


def test_reaper_requeues_jobs_without_heartbeat_and_redispatches_lost_messages(backend, images, monkeypatch):
    monkeypatch.setenv("BAT_JOB_MAX_RETRIES", "1")
    settings, store, dispatch = connect()
    fresh, stale, lost = stages_job(images), stages_job(images), stages_job(images)
    for _ in range(3):  # the messages are gone: as if workers had popped them
        dispatch.pop()
    other_machine = {"host": "another-machine", "pid": 1, "start": 1}
    now = time.time()
    _running_record(store, fresh, other_machine, now)
    _running_record(store, stale, other_machine, now - settings.stale_after_s - 1)
    store.update(lost, lambda rec: setattr(rec, "enqueued_at", now - settings.stale_after_s - 1))

    reaper = Worker(settings)
    assert sorted(reaper.reap()) == sorted([stale, lost])
    assert jobs.status(fresh)["status"] == "running"
    requeued = jobs.status(stale)
    assert (requeued["status"], requeued["queue_position"], requeued["retries"]) == ("queued", 1, 1)
    assert "no heartbeat from worker elsewhere:1" in requeued["message"]
    assert dispatch.pending() == [stale, lost]  # the re-queued job goes first

    dispatch.pop(), dispatch.pop()
    _running_record(store, stale, other_machine, now - settings.stale_after_s - 1, attempt=2)
    store.update(lost, lambda rec: setattr(rec, "status", "done"))
    assert reaper.reap() == [stale]
    gave_up = jobs.status(stale)
    assert gave_up["status"] == "failed" and "died 2 times" in gave_up["error"]

    # A dead process on this machine is noticed without waiting for the heartbeat to go stale.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _running_record(store, fresh, {**WorkerId.current().lease, "pid": dead.pid, "start": 12345}, time.time())
    assert reaper.reap() == [fresh]


def test_cleanup_applies_retention_and_disk_budget(job_env, images, monkeypatch):
    settings, store, _ = connect()
    day = 86400
    now = time.time()
    ids = {name: stages_job(images) for name in ("old_done", "recent_done", "recent_failed", "queued", "running")}

    def finish_as(status: str, age_days: float, megabytes: int):
        def change(rec):
            rec.status, rec.finished_at = status, now - age_days * day
        return change, megabytes

    for name, (status, age, mb) in {"old_done": ("done", 10, 1), "recent_done": ("done", 1, 3),
                                    "recent_failed": ("failed", 2, 2)}.items():
        change, size = finish_as(status, age, mb)
        store.update(ids[name], change)
        (store.folder(ids[name]) / "out").mkdir(exist_ok=True)
        (store.folder(ids[name]) / "out" / "lora.bin").write_bytes(b"\0" * size * 10**6)
    ckpt = store.folder(ids["recent_done"]) / "out" / "none" / "checkpoints" / "step-000005"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"\0" * 10**6)
    store.update(ids["running"], lambda rec: setattr(rec, "status", "running"))

    report = jobs.cleanup(retention_days=7, disk_budget_gb=100, now=now)
    assert report["deleted"] == [ids["old_done"]] and report["checkpoints_freed_bytes"] == 10**6
    assert not ckpt.exists() and (store.folder(ids["recent_done"]) / "out" / "lora.bin").exists()
    report = jobs.cleanup(retention_days=7, disk_budget_gb=0.001, now=now)  # 1 MB: oldest finished first
    assert report["deleted"] == [ids["recent_failed"], ids["recent_done"]]
    assert sorted(v["id"] for v in jobs.list_jobs()) == sorted([ids["queued"], ids["running"]])


def test_settings_come_from_the_environment_and_are_checked(monkeypatch):
    monkeypatch.setenv("BAT_MAX_QUEUE", "7")
    monkeypatch.setenv("BAT_REDIS_URL", "redis://example:6379/0")
    settings = jobs.JobSettings.from_env(heartbeat_s=1.0)
    assert (settings.max_queue, settings.redis_url, settings.heartbeat_s) == (7, "redis://example:6379/0", 1.0)
    assert settings.env()["BAT_MAX_QUEUE"] == "7"
    monkeypatch.setenv("BAT_MAX_QUEUE", "lots")
    with pytest.raises(InputError, match="BAT_MAX_QUEUE='lots' is not a valid int"):
        jobs.JobSettings.from_env()
    with pytest.raises(InputError, match="must exceed `heartbeat_s`"):
        jobs.JobSettings(Path("."), heartbeat_s=10, stale_after_s=5)


# --- command line --------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bat_app.jobs", *args], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ), timeout=120)


def test_cli_submit_status_cancel_jobs(job_env, images, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(STAGES_JOB | {"colour": "red"}))
    from bat_app.jobs.cli import main

    assert main(["submit", str(bad), "--images", str(images)]) == 2  # in-process: saves a torch import
    assert "Unknown config key(s) ['colour']" in capsys.readouterr().err
    good = tmp_path / "good.json"
    good.write_text(json.dumps(STAGES_JOB))
    submitted = _cli("submit", str(good), "--images", str(images), "--pipeline", "stages")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    status = json.loads(_cli("status", job_id).stdout)
    assert {k: status[k] for k in ("id", "status", "stage", "step", "total", "queue_position")} == {
        "id": job_id, "status": "queued", "stage": "queued", "step": 0, "total": 0, "queue_position": 1}
    assert job_id in _cli("jobs").stdout
    assert json.loads(_cli("cancel", job_id).stdout)["status"] == "cancelled"
    assert json.loads(_cli("jobs", "--json").stdout)[0]["status"] == "cancelled"
    missing = _cli("status", "f" * 32)
    assert missing.returncode == 2 and "No job ffff" in missing.stderr


def test_example_config_is_a_valid_two_method_shapes_job():
    from bat_app.compare.config import CompareConfig

    config = CompareConfig.from_file(REPO / "examples" / "shapes_job.json")
    assert config.model == "shapes" and len(config.methods) == 2


@pytest.mark.slow
def test_example_job_runs_end_to_end_on_the_shapes_backbone(tmp_path, monkeypatch):
    """The shipped example through the real CLI, queue, worker and compare pipeline (~2 CPU-minutes)."""
    monkeypatch.setenv("BAT_TORCH_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = dict(os.environ)

    def bat(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bat_app", *args], capture_output=True, text=True, cwd=REPO,
                              env=env, timeout=timeout, check=True)

    job_id = bat("submit", "examples/shapes_job.json", "--images", "assets/subjects/dot_star").stdout.split()[-1]
    bat("worker", "--max-jobs", "1", timeout=1800)
    done = json.loads(bat("status", job_id).stdout)
    assert done["status"] == "done", done["error"]
    for method in ("none", "albat"):
        assert (Path(done["dir"]) / done["outputs"][f"{method}:diffusers"]).is_file()


def test_cleanup_prunes_the_shared_cache_by_last_use(job_env):
    """Cache entries (latents of photos, surrogates, base previews) go once unused for the
    retention period, whatever job made them; recently used ones stay."""
    settings, _, _ = connect()
    now = time.time()
    cache = settings.data_dir / "cache"
    old = cache / "latents" / "vae-32" / "a.safetensors"
    read_lately = cache / "surrogates" / "b.safetensors"
    fresh = cache / "reference-losses" / "plan" / "c.npy"
    for path in (old, read_lately, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
    ten_days = now - 10 * 86400
    os.utime(old, (ten_days, ten_days))
    os.utime(read_lately, (now - 3600, ten_days))  # written long ago, read an hour ago
    report = jobs.cleanup(retention_days=7, disk_budget_gb=100, now=now)
    assert report["cache_freed_bytes"] == 1000
    assert not old.exists() and not old.parent.exists()  # its folder, left empty, too
    assert read_lately.exists() and fresh.exists() and cache.is_dir()


def test_cleanup_leaves_a_folder_a_job_has_just_made(job_env):
    """A job makes a folder, then writes into it (a surrogate's work folder): the cleanup
    running between the two must not remove it; an empty folder unused for the retention
    period goes."""
    settings, _, _ = connect()
    now = time.time()
    cache = settings.data_dir / "cache"
    just_made = cache / "surrogates" / "run-abc"
    forgotten = cache / "class_images" / "0123"
    for folder in (just_made, forgotten):
        folder.mkdir(parents=True)
    ten_days = now - 10 * 86400
    os.utime(forgotten, (ten_days, ten_days))
    jobs.cleanup(retention_days=7, disk_budget_gb=100, now=now)
    assert just_made.is_dir()
    assert not forgotten.exists()
