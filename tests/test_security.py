"""The app probed from outside as a second user would, over real HTTP on loopback (issue 11).

One server (tiny model, no embedded worker: jobs only queue, nothing trains) with a cap of 3
jobs per client and 5 in the whole queue. Clients are told apart by address: uvicorn takes
X-Forwarded-For from a loopback peer (as from a local reverse proxy), so a client that sends
``X-Forwarded-For: 10.0.0.2`` is, to the app, another machine.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bat_app.models.presets import presets
from test_ui_api import job_threads, launch_app, stop_app, tiny_assets

MAX_PER_CLIENT, MAX_QUEUE = 3, 5


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir, tiny_pool_dir, tiny_clip_dir):
    root = tmp_path_factory.mktemp("security")
    settings = tiny_assets(root, tiny_model_dir, tiny_pool_dir, tiny_clip_dir)
    with job_threads(), pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAT_MAX_PER_CLIENT", str(MAX_PER_CLIENT))
        mp.setenv("BAT_MAX_QUEUE", str(MAX_QUEUE))
        demo, worker, url = launch_app(root / "home", embedded_worker=False, **settings)
        yield {"url": url, "home": root / "home", "jobs": root / "home" / "jobs", "subjects": settings["subjects_dir"],
               "root": root}
        stop_app(demo, worker)


def client(app, address: str | None = None):
    from gradio_client import Client

    headers = {"X-Forwarded-For": address} if address else None
    return Client(app["url"], verbose=False, headers=headers)


def photos(app):
    from gradio_client import handle_file

    return [{"image": handle_file(str(p)), "caption": None}
            for p in sorted((app["subjects"] / "red_disc").glob("*.png"))]


def form(app, **changes):
    """The /submit inputs: photos, token, noun, model, pool, methods, then the advanced numbers."""
    values = {"token": "sks", "class_noun": "disc", "model": None, "pool": None, "methods": ["none"], "steps": 4,
              "rank": 4, "lr": 5e-3, "resolution": 0, "seed": 0, "k": 50, "m": 4, "aug_weight": 1.0, **changes}
    return [photos(app), *values.values()]


def job_settings(app):
    from bat_app.jobs import JobSettings

    return JobSettings.from_env(data_dir=app["home"])


def library_job(app, status: str | None = None, error: str | None = None) -> str:
    """A job submitted as the CLI would (no client), optionally marked done with outputs or failed."""
    from bat_app import jobs
    from bat_app.jobs.queue import open_store

    settings = job_settings(app)
    config = {"class_noun": "disc", "model": str(app["root"] / "no-model"), "methods": ["none"], "train": {"steps": 2}}
    job_id = jobs.submit(config, app["subjects"] / "red_disc", settings=settings)
    out = jobs.job_dir(job_id, settings=settings) / "out"
    if status == "done":
        lora = out / "methods" / "none" / "lora"
        lora.mkdir(parents=True)
        (lora / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
        (out / "previews").mkdir()
        Image.new("RGB", (16, 8)).save(out / "previews" / "grid_object.png")
        (out / "metrics.json").write_text(json.dumps({"methods": {"base": {}, "none": {}}}))
    def change(record):
        record.status = status or record.status
        record.error = error
    if status:
        open_store(settings).update(job_id, lambda r: change(r) or True)
    return job_id


def fetch(app, path: str) -> httpx.Response:
    return httpx.get(f"{app['url']}/gradio_api/file={path}", timeout=30)


def queued_count(app) -> int:
    from bat_app import jobs

    return len(jobs.list_jobs(status="queued", settings=job_settings(app)))


def cancel_all(app) -> None:
    from bat_app import jobs

    for view in jobs.list_jobs(status="queued", settings=job_settings(app)):
        jobs.cancel(view["id"], settings=job_settings(app))


# --- files -----------------------------------------------------------------------------------

def test_the_jobs_folder_is_never_served(app):
    job_id = library_job(app)
    folder = app["jobs"] / job_id
    secrets_ = [app["jobs"] / "queue.db", app["jobs"] / "queue.db-wal", folder / "job.json",
                folder / "config.json", next((folder / "inputs").iterdir())]
    (folder / "log.txt").write_text("Traceback: secret\n")
    secrets_.append(folder / "log.txt")
    for path in secrets_:
        if path.exists():
            response = fetch(app, str(path))
            assert response.status_code in (403, 404), (path, response.status_code)
            assert path.read_bytes()[:64] not in response.content or not path.read_bytes()
    assert (app["jobs"] / "queue.db").exists()  # the database was there to be refused
    cancel_all(app)


def test_example_photos_are_served_from_the_cache_wherever_the_app_runs(app):
    from bat_app.errors import InputError
    from bat_app.ui import served

    sources = sorted((app["subjects"] / "red_disc").glob("*.png"))
    paths = served.publish_example("red_disc", sources)
    assert [Path(p).name for p in paths] == [p.name for p in sources]
    assert all(Path(p).is_relative_to(served.cache_root()) for p in paths)
    response = fetch(app, paths[0])
    assert response.status_code == 200 and response.content == sources[0].read_bytes()
    with pytest.raises(InputError, match="not an example"):
        served.publish_example("../jobs", sources)


def test_results_are_served_under_the_job_id_only(app):
    from gradio_client import Client

    job_id = library_job(app, status="done")
    out = app["jobs"] / job_id / "out"
    photo = next((app["jobs"] / job_id / "inputs").iterdir())
    # a planted symlink among the outputs must not carry an input (or anything) out
    os.symlink(photo, out / "previews" / "grid_leak.png")
    (out / "downloads").mkdir(exist_ok=True)
    os.symlink(app["jobs"] / job_id / "config.json", out / "downloads" / "none_leak.zip")

    other = client(app, "10.0.0.9")
    grid, metrics, downloads, _ = other.predict(job_id, api_name="/results")  # the id is the capability
    assert Path(grid).read_bytes()[:4] == b"\x89PNG"
    assert sorted(Path(p).name for p in downloads) == ["none_pytorch_lora_weights.safetensors"]
    assert [row[:2] for row in metrics["data"]] == [["base", "base model"], ["none", "DreamBooth-LoRA"]]

    # where the server put them: a folder named by the job id in Gradio's cache, not the jobs folder
    from bat_app.ui.served import FOLDER, cache_root

    served = cache_root() / FOLDER / job_id
    assert sorted(p.name for p in served.iterdir()) == ["grid_object.png", "none_pytorch_lora_weights.safetensors"]
    assert fetch(app, str(served / "grid_object.png")).status_code == 200
    for name in ("grid_leak.png", "none_leak.zip"):
        assert fetch(app, str(served / name)).status_code in (403, 404)

    queue_db = app["jobs"] / "queue.db"
    relative_up = os.path.relpath(queue_db, served)
    attempts = [
        str(served / relative_up),                                          # ..
        str(served) + "/" + relative_up.replace("..", "%2e%2e"),            # encoded ..
        str(served) + "/" + urllib.parse.quote(urllib.parse.quote(relative_up, safe=""), safe=""),  # twice
        urllib.parse.quote(str(queue_db), safe=""),                          # encoded absolute
        str(photo), "/etc/passwd", str(app["home"]),                         # absolute, a folder
    ]
    link = cache_root() / f"link-{job_id}"  # a symlink inside the served cache, into the jobs folder
    os.symlink(app["jobs"], link)
    attempts += [str(link / "queue.db"), str(link / job_id / "config.json")]
    try:
        for path in attempts:
            response = fetch(app, path)
            assert response.status_code in (403, 404), (path, response.status_code)
            assert b"SQLite format" not in response.content and b"class_noun" not in response.content
    finally:
        link.unlink()

    # no id, no results; and an unknown id tells nothing about the server
    with pytest.raises(Exception) as info:
        Client(app["url"], verbose=False).predict("f" * 32, api_name="/results")
    assert "No job ffff" in str(info.value) and str(app["home"]) not in str(info.value)


def test_an_unknown_id_reveals_nothing(app):
    from gradio_client.exceptions import AppError

    c = client(app)
    for endpoint in ("/status", "/results", "/cancel"):
        with pytest.raises(AppError) as info:
            c.predict("a" * 32, api_name=endpoint)
        message = str(info.value)
        assert "No job aaaa" in message and "/" not in message.replace("a" * 32, ""), message
    with pytest.raises(AppError, match="not a job id"):
        c.predict("../../jobs/queue.db", api_name="/status")


def test_a_failed_jobs_error_shows_no_server_path(app):
    log = app["jobs"] / ("0" * 32) / "log.txt"
    job_id = library_job(app, status="failed", error=(
        f"Internal error in stage 'train': FileNotFoundError: [Errno 2] No such file: '{app['home']}/models/x.bin'. "
        f"The traceback is in {log}; the inputs are kept.\nTraceback (most recent call last):\n"
        f'  File "{app["root"]}/bat_app/train/loop.py", line 3'))
    status = client(app).predict(job_id, api_name="/status")
    assert status["status"] == "failed"
    assert status["error"].startswith("Internal error in stage 'train': FileNotFoundError")
    assert "x.bin" in status["error"]
    for leak in (str(app["root"]), "/models/", "log.txt", "Traceback", "loop.py"):
        assert leak not in status["error"], status["error"]


# --- bounds at submit ------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"steps": 10**12}, "steps must be between 1 and 5,000, got 1,000,000,000,000: lower it to 5,000 or less."),
    ({"steps": -1}, "steps must be between 1 and 5,000, got -1: raise it to 1."),
    ({"rank": 100_000}, "LoRA rank must be between 1 and 128, got 100,000: lower it to 128 or less."),
    ({"resolution": 100_000}, "resolution must be between 8 and 64, got 100,000"),
    ({"lr": 5.0}, "learning rate must be more than 0 and at most 0.01, got 5"),
    ({"k": 10**7}, "K (retrieval candidates) must be between 1 and 5,000"),
    ({"m": 10**6}, "m (backbone images kept) must be between 1 and 500"),
    ({"aug_weight": -2}, "lambda (backbone loss weight) must be between 0 and 10"),
    ({"seed": 2**40}, "seed must be between 0 and 4,294,967,295"),
    ({"class_noun": "x" * 10_000}, "The class noun is 10,000 characters long; the limit is 40: shorten it."),
    ({"class_noun": "a" * 300}, "The class noun is 300 characters long"),
    ({"token": "sks" * 20}, "The trigger token is 60 characters long; the limit is 32"),
    ({"model": "/etc"}, "Model 'etc' is not offered by this server: choose one of tiny-sd, " + ", ".join(presets())),
    ({"model": "../../"}, "Model '../../' is not offered by this server"),
    ({"pool": "/etc", "methods": ["random"]}, "Pool 'etc' is not offered by this server: choose one of"),
    ({"pool": "../../pools", "methods": ["random"]}, "is not offered by this server"),
])
def test_every_bound_is_enforced_at_submit_through_the_api(app, changes, message):
    from gradio_client.exceptions import AppError

    before = queued_count(app)
    with pytest.raises(AppError) as info:
        client(app, "10.1.0.1").predict(*form(app, **changes), api_name="/submit")
    text = str(info.value)
    assert message in text, text
    assert "BAT_" not in text and "operator" not in text  # no server settings told to web users
    assert queued_count(app) == before  # refused at the door: no queue slot taken


def test_photo_bounds_name_no_cli_flag(app):
    from gradio_client.exceptions import AppError

    many = photos(app) * 4  # 12 photos
    with pytest.raises(AppError) as info:
        client(app, "10.1.0.2").predict(many, *form(app)[1:], api_name="/submit")
    assert "12 photo(s) uploaded: remove some, keeping 3-10 photos" in str(info.value)
    assert "--max-images" not in str(info.value)


def test_a_server_file_cannot_be_passed_as_a_photo(app):
    """Raw HTTP: a photo given as a server path (another job's input) is refused by Gradio."""
    job_id = library_job(app)
    victim = next((app["jobs"] / job_id / "inputs").iterdir())
    fake = {"path": str(victim), "meta": {"_type": "gradio.FileData"}, "orig_name": victim.name}
    data = [[{"image": fake, "caption": None}] * 3, *form(app)[1:]]
    posted = httpx.post(f"{app['url']}/gradio_api/call/submit", json={"data": data}, timeout=30)
    assert posted.status_code == 200
    event = posted.json()["event_id"]
    stream = httpx.get(f"{app['url']}/gradio_api/call/submit/{event}", timeout=60).text
    assert "event: error" in stream, stream
    assert queued_count(app) == 1  # only library_job's
    cancel_all(app)


def test_bounds_hold_for_the_cli_and_the_job_json(app, tmp_path):
    from bat_app.compare.config import CompareConfig
    from bat_app.errors import LimitError

    config = tmp_path / "job.json"
    config.write_text(json.dumps({"class_noun": "star", "model": "shapes", "methods": ["none"],
                                  "train": {"steps": 10**12}}))
    env = {**os.environ, "BAT_HOME": str(app["home"]), "BAT_TORCH_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bat_app", "submit", str(config), "--images",
                           str(app["subjects"] / "red_disc")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "steps must be between 1 and 5,000" in done.stderr and "BAT_LIMIT_STEPS" in done.stderr
    assert queued_count(app) == 0
    # a job JSON a worker reads is the same config: the same bounds
    config.write_text(json.dumps({"class_noun": "star", "model": "shapes", "train": {"rank": 100_000}}))
    with pytest.raises(LimitError, match="LoRA rank must be between 1 and 128"):
        CompareConfig.from_file(config)
    for train, message in (({"pivotal_vectors": 100}, "pivotal_vectors must be between 1 and 16"),
                           ({"batch_size": 64}, "batch size must be between 1 and 8"),
                           ({"alpha": 1e9}, "LoRA alpha must be more than 0 and at most 1,024"),
                           ({"instance_prompt": "a sks star " * 100}, "instance_prompt is 1,100 characters long"),
                           ({"target_modules": ["to_q/../x"]}, "target_modules entry 'to_q/../x' is not allowed")):
        config.write_text(json.dumps({"class_noun": "star", "model": "shapes", "train": train}))
        with pytest.raises(LimitError, match=message):
            CompareConfig.from_file(config)
    config.write_text(json.dumps({"class_noun": "star", "model": "shapes", "seeds": list(range(20))}))
    with pytest.raises(LimitError, match="seeds lists 20 preview seeds; the limit is 4"):
        CompareConfig.from_file(config)


# --- fairness --------------------------------------------------------------------------------

def test_one_client_cannot_fill_the_queue(app):
    from gradio_client.exceptions import AppError

    cancel_all(app)
    greedy = client(app, "10.0.0.1")
    pending = [greedy.submit(*form(app), api_name="/submit") for _ in range(20)]
    accepted, refused = [], []
    for job in pending:
        try:
            accepted.append(job.result(timeout=240)[0])
        except AppError as exc:
            refused.append(str(exc))
    assert len(accepted) == MAX_PER_CLIENT and len(refused) == 20 - MAX_PER_CLIENT
    assert all(f"the most one user may have at a time ({MAX_PER_CLIENT})" in m for m in refused), refused[0]

    polite = client(app, "10.0.0.2")  # another machine still gets in ...
    first, info = polite.predict(*form(app), api_name="/submit")
    assert len(first) == 32 and "position" in info
    second, _ = polite.predict(*form(app), api_name="/submit")
    # ... until the whole queue is full: then everyone is told to come back later
    with pytest.raises(AppError, match="The queue is full \\(5 jobs are waiting\\): please try again later."):
        polite.predict(*form(app), api_name="/submit")
    assert queued_count(app) == MAX_QUEUE

    # a cancelled job frees a slot in the queue, but the cap per client still holds ...
    polite.predict(second, api_name="/cancel")
    with pytest.raises(AppError, match="the most one user may have at a time"):
        greedy.predict(*form(app), api_name="/submit")
    greedy.predict(accepted[0], api_name="/cancel")  # ... until one of its own ends
    assert len(greedy.predict(*form(app), api_name="/submit")[0]) == 32
    cancel_all(app)


def test_concurrent_submits_never_overshoot_the_cap(app):
    """The library under threads: the count and the add happen under one lock."""
    from bat_app import jobs

    cancel_all(app)
    settings = job_settings(app)
    config = {"class_noun": "disc", "model": "shapes", "methods": ["none"], "train": {"steps": 2}}

    def one(_):
        try:
            return jobs.submit(config, app["subjects"] / "red_disc", settings=settings, client="ip:10.9.9.9")
        except jobs.QueueFull:
            return None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert sum(r is not None for r in results) == MAX_PER_CLIENT
    record = json.loads((app["jobs"] / next(r for r in results if r) / "job.json").read_text())
    assert record["client"] and "10.9.9.9" not in record["client"]  # a keyed hash, not the address
    cancel_all(app)


def test_the_page_names_no_server_folder(app, tiny_model_dir, tiny_pool_dir):
    """The page's config (every component's choices and values) and the API description."""
    for path in ("/config", "/gradio_api/info"):
        response = httpx.get(app["url"] + path, timeout=30)
        assert response.status_code == 200, path
        for folder in (app["home"], tiny_model_dir, tiny_pool_dir, app["subjects"]):
            assert str(folder) not in response.text, (path, folder)
    config = httpx.get(app["url"] + "/config", timeout=30).json()
    dropdowns = {c["props"].get("label"): c["props"] for c in config["components"] if c.get("type") == "dropdown"}
    from bat_app.models import presets

    assert [v for v, _ in dropdowns["Model preset"]["choices"]] == ["tiny-sd", *presets()]
    assert dropdowns["Backbone pool"]["value"] == tiny_pool_dir.name


def test_try_it_is_bounded_and_needs_a_finished_job(app):
    from gradio_client.exceptions import AppError

    job_id = library_job(app, status="done")
    c = client(app, "10.3.0.1")
    with pytest.raises(AppError, match="The prompt is 1,000 characters long; the limit is 300: shorten it."):
        c.predict(job_id, "none", "p" * 1000, 0, api_name="/try")
    with pytest.raises(AppError, match="seed must be between 0 and 4,294,967,295, got -5: raise it to 0."):
        c.predict(job_id, "none", "a sks disc", -5, api_name="/try")
    with pytest.raises(AppError, match="No job 0000"):
        c.predict("0" * 32, "none", "a sks disc", 0, api_name="/try")
