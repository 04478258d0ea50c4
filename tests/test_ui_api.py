"""The app's named API endpoints through gradio_client: submit, status, results, cancel.

A real server (in this process) with an embedded worker runs one tiny compare job end to end.
``launch_app`` is reused by test_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bat_app.paths import assets_dir
from conftest import make_subject_images

SHAPES_BACKBONE = assets_dir() / "shapes" / "backbone"


def tiny_assets(root: Path, tiny_model_dir, tiny_pool_dir, tiny_clip_dir, n_images: int = 3) -> dict:
    """App settings for the tiny model, pool and CLIP, and one example subject."""
    subjects = root / "subjects"
    folder = make_subject_images(subjects / "red_disc", n=n_images)
    (folder / "subject.json").write_text(json.dumps({"class_noun": "disc", "description": "a red disc"}))
    return {"model": str(tiny_model_dir), "pool": str(tiny_pool_dir), "clip_model": str(tiny_clip_dir),
            "subjects_dir": subjects}


def launch_app(data_dir: Path, **overrides):
    """(demo, worker, url): the app on a free local port, jobs in ``data_dir``."""
    from bat_app.jobs import JobSettings
    from bat_app.ui.serve import serve
    from bat_app.ui.settings import AppSettings

    jobs = JobSettings.from_env(data_dir=data_dir, heartbeat_s=1.0, stale_after_s=30.0, poll_s=0.1,
                                progress_every_s=0.2, prewarm=True)
    settings = AppSettings.from_env(jobs=jobs, preview_prompts=2, seeds=(0,), **overrides)
    demo, worker = serve(settings, host="127.0.0.1", port=None, block=False, quiet=True)
    return demo, worker, demo.local_url.rstrip("/")


def stop_app(demo, worker) -> None:
    if worker is not None:
        worker.stop(timeout=30)
    demo.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir, tiny_pool_dir, tiny_clip_dir):
    root = tmp_path_factory.mktemp("ui-api")
    settings = tiny_assets(root, tiny_model_dir, tiny_pool_dir, tiny_clip_dir)
    with job_threads():
        demo, worker, url = launch_app(root / "home", **settings)
        yield {"url": url, "subjects": settings["subjects_dir"], "home": root / "home"}
        stop_app(demo, worker)


@contextlib.contextmanager
def job_threads():
    """One torch thread per job process unless told otherwise: on a few shared cores, torch's
    default (one thread per core) spins against the other processes and runs ~50x slower."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAT_TORCH_THREADS", os.environ.get("BAT_TORCH_THREADS", "1"))
        yield


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app["url"], verbose=False)


def _images(app):
    from gradio_client import handle_file

    return [{"image": handle_file(str(p)), "caption": None}
            for p in sorted((app["subjects"] / "red_disc").glob("*.png"))]


def submit(client, images, methods=("none",), steps=4, class_noun="disc"):
    # token, class noun, model, pool, methods, steps, rank, lr, resolution, seed, K, m, lambda
    return client.predict(images, "sks", class_noun, None, None, list(methods), steps, 4, 5e-3, 0, 0, 50, 4, 1.0,
                          api_name="/submit")


def wait_done(client, job_id, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(job_id, api_name="/status")
        if status["status"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {status}")


def test_endpoints_are_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/submit", "/status", "/results", "/cancel"} <= names


def test_submit_status_results(client, app):
    from safetensors.torch import load_file

    job_id, info = submit(client, _images(app), methods=("none", "random"))
    assert len(job_id) == 32 and job_id in info
    status = wait_done(client, job_id)
    assert status["status"] == "done", status["error"]
    assert status["stage"] == "done" and status["error"] is None

    grid, metrics, downloads, report = client.predict(job_id, api_name="/results")
    assert Path(grid).is_file()
    assert metrics["headers"][:3] == ["method", "name", "backbone images"]  # method: the grid's column title
    assert [row[:2] for row in metrics["data"]] == [["base", "base model"], ["none", "DreamBooth-LoRA"],
                                                    ["random", "random backbone images"]]
    names = sorted(Path(p).name for p in downloads)
    # per method: the zip, the diffusers and kohya LoRA files, and the trigger's pivotal vectors
    assert names == ["none_lora.zip", "none_pytorch_lora_weights.safetensors", "none_sks.safetensors",
                     "none_sks_disc_kohya.safetensors", "random_lora.zip", "random_pytorch_lora_weights.safetensors",
                     "random_sks.safetensors", "random_sks_disc_kohya.safetensors"]
    weights = load_file(next(p for p in downloads if p.endswith("none_pytorch_lora_weights.safetensors")))
    assert weights and all("lora" in k for k in weights)
    assert "| none |" in report

    base, tuned = client.predict(job_id, "none", "a sks disc on a blue background", 3, api_name="/try")
    assert Path(base).is_file() and Path(tuned).is_file()  # a client of the older 4-input /try still works
    # strength 0: the LoRA's picture is the base model's (no trigger in the prompt: its vectors are idle)
    base, off = client.predict(job_id, "none", "a disc on a blue background", 3, 0.0, 0, api_name="/try")
    _, full = client.predict(job_id, "none", "a disc on a blue background", 3, 1.0, 0, api_name="/try")
    assert np.abs(np.asarray(Image.open(full), float) - np.asarray(Image.open(base), float)).mean() > 0.5
    assert np.abs(np.asarray(Image.open(off), float) - np.asarray(Image.open(base), float)).mean() < 1.0


def test_the_pool_browser_shows_what_a_pool_holds(client, app, tiny_pool_dir):
    from gradio_client.exceptions import AppError
    from PIL import Image

    from bat_app.pool import Pool

    name = tiny_pool_dir.name  # the configured pool, offered by its folder's name
    sheet, rows = client.predict(name, "a red disc", 4, api_name="/browse_pool")
    with Image.open(sheet) as im:
        assert im.width > 0 and im.height > 0
    with Pool.open(tiny_pool_dir) as pool:
        captions = {pool.item(i).caption for i in range(len(pool))}
    assert [r[0] for r in rows["data"]] == [1, 2, 3, 4]
    assert all(r[2] in captions for r in rows["data"])
    scores = [r[1] for r in rows["data"]]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(AppError, match="not offered by this server"):
        client.predict("/etc", "a red disc", 4, api_name="/browse_pool")
    with pytest.raises(AppError, match="results must be"):
        client.predict(name, "a red disc", 1000, api_name="/browse_pool")
    with pytest.raises(AppError, match="search text is empty"):
        client.predict(name, "  ", 4, api_name="/browse_pool")


def test_errors_name_the_problem(client, app):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="upload 3-10 photos"):
        submit(client, _images(app)[:2])
    with pytest.raises(AppError, match="class noun is empty"):
        submit(client, _images(app), class_noun=" ")
    with pytest.raises(AppError, match="not a job id"):
        client.predict("nope", api_name="/status")
    with pytest.raises(AppError, match="No job"):
        client.predict("0" * 32, api_name="/results")


def test_cancel_a_queued_or_running_job(client, app):
    job_id, _ = submit(client, _images(app), steps=400)
    client.predict(job_id, api_name="/cancel")
    status = wait_done(client, job_id, timeout=60)
    assert status["status"] == "cancelled"
