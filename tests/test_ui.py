"""The web app without a browser: defaults, handlers, views, error mapping, the Blocks wiring."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from bat_app import jobs
from bat_app.errors import ImageError, InputError
from bat_app.models.presets import presets
from bat_app.paths import assets_dir
from bat_app.ui import handlers, loras, model_note, views
from bat_app.ui.captions import caption_count_note, parse_captions
from bat_app.ui.defaults import suggested_settings
from bat_app.ui.settings import AppSettings
from conftest import make_subject_images


@pytest.fixture
def settings(tmp_path, tiny_model_dir):
    subjects = tmp_path / "subjects"
    folder = make_subject_images(subjects / "red_disc", n=4)
    (folder / "subject.json").write_text(json.dumps({"class_noun": "disc", "description": "a red disc"}))
    return AppSettings.from_env(model=str(tiny_model_dir), pool=None, subjects_dir=subjects,
                                jobs=jobs.JobSettings.from_env(data_dir=tmp_path / "home"))


def example_paths(settings, n=4):
    return [str(p) for p in handlers.get_example(settings.subjects_dir, "red_disc").images[:n]]


# --- defaults from the number of images ----------------------------------------------------

def test_suggested_settings_follow_the_number_of_images():
    gpu = [suggested_settings(n, "sd15") for n in range(0, 13)]
    assert [g["steps"] for g in gpu][3:11] == [400, 400, 500, 600, 700, 800, 900, 1000]
    assert gpu[0] == gpu[3] and gpu[12] == gpu[10]            # clamped to the 3-10 images the intake allows
    assert gpu[6]["rank"] == 4 and gpu[7]["rank"] == 8
    assert gpu[3]["aug_weight"] == 0.5 and gpu[4]["aug_weight"] == 1.0
    assert all(100 <= g["m"] <= 200 and g["k"] >= 5 * g["m"] for g in gpu)
    cpu = suggested_settings(5, "shapes")
    assert cpu["steps"] < gpu[5]["steps"] and cpu["k"] <= 1000 and cpu["resolution"] == 0
    assert suggested_settings(5, None) == gpu[5]                # a folder or hub id: an SD-sized model


# --- Train tab -----------------------------------------------------------------------------

def test_build_config_defaults_and_overrides(settings):
    cfg = handlers.build_config(settings, class_noun="disc", methods=["none"], n_images=4)
    assert cfg.model == settings.model and cfg.pool is None and cfg.methods == ["none"]
    assert cfg.train["steps"] == suggested_settings(4)["steps"] and "resolution" not in cfg.train
    cfg = handlers.build_config(settings, class_noun=" disc ", methods=["none"], steps=7, lr=0.001, resolution=32,
                                m=5, k=9, aug_weight=0.3, seed=3)
    assert cfg.class_noun == "disc" and cfg.train["steps"] == 7 and cfg.train["resolution"] == 32
    assert cfg.selection == {"k": 9, "m": 5} and cfg.train["aug_weight"] == 0.3 and cfg.train["seed"] == 3
    # pivotal tuning: the recipe's unless the form says otherwise
    assert "pivotal" not in cfg.train and cfg.train_config(4).pivotal is suggested_settings(4)["pivotal"]
    off = handlers.build_config(settings, class_noun="disc", methods=["none"], pivotal=False, n_images=4)
    assert off.train["pivotal"] is False and off.train_config(4).pivotal is False
    with pytest.raises(InputError, match="pivotal must be true or false"):
        handlers.build_config(settings, class_noun="disc", methods=["none"], pivotal="yes", n_images=4)
    # prior preservation likewise (the shapes recipe turns it on)
    assert "prior" not in cfg.train and cfg.train_config(4).prior is suggested_settings(4)["prior"]
    no_prior = handlers.build_config(settings, class_noun="disc", methods=["none"], prior=False, n_images=4)
    assert no_prior.train_config(4).prior is False
    with pytest.raises(InputError, match="prior must be true or false"):
        handlers.build_config(settings, class_noun="disc", methods=["none"], prior="yes", n_images=4)
    # how many class images: the recipe's unless the form's field says otherwise
    assert cfg.train_config(4).num_class_images == suggested_settings(4)["num_class_images"]
    fewer = handlers.build_config(settings, class_noun="disc", methods=["none"], num_class_images=12, n_images=4)
    assert fewer.train_config(4).num_class_images == 12
    # the 'prior' method on top of prior preservation would only re-weight the same class images
    with pytest.raises(InputError, match="'prior' method would repeat what every column already does"):
        handlers.build_config(settings, class_noun="disc", methods=["none", "prior"], prior=True, n_images=4)
    assert handlers.build_config(settings, class_noun="disc", methods=["none", "prior"], prior=False).methods[1] == "prior"


@pytest.mark.parametrize("form, message", [
    ({"methods": []}, "No method selected"),
    ({"class_noun": "  "}, "class noun is empty"),
    ({"methods": ["none", "albat"]}, "need a backbone pool"),
    ({"pool": "shapes"}, "'shapes' pool is the shapes backbone's"),
    ({"token": "two words"}, "must be one word"),
    ({"steps": 0}, "steps must be between 1 and 5,000, got 0: raise it to 1"),
    ({"steps": 10**12}, "steps must be between 1 and 5,000, got 1,000,000,000,000: lower it to 5,000"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"rank": 100_000}, "LoRA rank must be between 1 and 128"),
    ({"lr": float("nan")}, "learning rate must be a finite number"),
    ({"resolution": 100_000}, "resolution must be between 8 and 64, got 100,000"),  # twice the tiny model's 32 px
    ({"seed": -1}, "seed must be between 0 and 4,294,967,295"),
    ({"k": 10**9}, "K \\(retrieval candidates\\) must be between 1 and 5,000"),
    ({"m": 0}, "m \\(backbone images kept\\) must be between 1 and 500"),
    ({"aug_weight": 1e6}, "lambda \\(backbone loss weight\\) must be between 0 and 10"),
    ({"num_class_images": 0}, "class images \\(num_class_images\\) must be between 1 and 200, got 0"),
    ({"num_class_images": 3.5}, "class images \\(num_class_images\\) must be a whole number"),
    ({"class_noun": "x" * 10_000}, "class noun is 10,000 characters long; the limit is 40"),
    ({"class_noun": "dog/../../etc"}, "class noun 'dog/../../etc' is not allowed: use letters"),
    ({"token": "t" * 33}, "trigger token is 33 characters long; the limit is 32"),
    ({"model": "/etc"}, "Model '/etc' is not offered by this server: choose one of tiny-sd, " + ", ".join(presets())),
    ({"model": "../../"}, "Model '../../' is not offered"),
    ({"pool": "/etc"}, "Pool '/etc' is not offered by this server: choose one of generated, none"),
])
def test_build_config_errors_name_the_fix(settings, form, message):
    with pytest.raises(InputError, match=message):
        handlers.build_config(settings, **{"class_noun": "disc", "methods": ["none"], **form})


def test_pool_choices(settings, tmp_path):
    assert handlers.pool_choices(settings, settings.model) == ["generated", "none"]
    assert handlers.default_pool(settings, settings.model) == "none"  # generating costs: opt in
    assert handlers.pool_choices(settings.with_(pool="/pools/laion"), "sd15") == ["laion", "generated", "none"]  # names only
    assert handlers.pool_choices(settings, "shapes")[0] == "shapes"
    assert handlers.initial_form(settings).methods == ["none"]  # ALBAT needs a pool: not ticked without one


def test_choices_are_names_and_map_to_what_the_server_offers(settings, tmp_path):
    built = settings.jobs.data_dir / "pools" / "laion-1k"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text("{}")
    other_users = settings.jobs.data_dir / "pools" / "generated-0123456789ab"  # a job's generated pool
    other_users.mkdir()
    (other_users / "manifest.json").write_text("{}")
    extra = tmp_path / "operator" / "my-pool"
    s = settings.with_(allowed_models=("org/model",), allowed_pools=(str(extra),))
    from bat_app.models import presets

    assert handlers.model_choices(s) == ["tiny-sd", *presets(), "org/model"]
    assert handlers.pool_choices(s, "tiny-sd") == ["laion-1k", "my-pool", "generated", "none"]
    form = handlers.initial_form(s)
    assert form.model == "tiny-sd" and "/" not in "".join(form.pools)  # the browser sees no server path
    cfg = handlers.build_config(s, class_noun="disc", model="tiny-sd", pool="my-pool", methods=["random"])
    assert cfg.model == settings.model and cfg.pool == str(extra)
    assert handlers.build_config(s, class_noun="disc", pool="laion-1k", methods=["random"]).pool == str(built)
    assert handlers.build_config(s, class_noun="disc", model="org/model", methods=["none"]).model == "org/model"
    with pytest.raises(InputError, match="Pool 'pools' is not offered"):
        handlers.build_config(s, class_noun="disc", pool="pools", methods=["random"])


def test_limits_are_operator_settings(settings, monkeypatch):
    from bat_app.errors import LimitError
    from bat_app.limits import Limits

    monkeypatch.setenv("BAT_LIMIT_STEPS", "20000")
    assert handlers.build_config(settings, class_noun="disc", methods=["none"], steps=20_000).train["steps"] == 20_000
    with pytest.raises(LimitError) as info:
        handlers.build_config(settings, class_noun="disc", methods=["none"], steps=20_001)
    assert info.value.public == "steps must be between 1 and 20,000, got 20,001: lower it to 20,000 or less."
    assert "BAT_LIMIT_STEPS" in str(info.value)  # the CLI and the server log say where the limit is set
    monkeypatch.setenv("BAT_LIMIT_STEPS", "many")
    with pytest.raises(InputError, match="BAT_LIMIT_STEPS='many' must be a whole number"):
        Limits.from_env()
    monkeypatch.setenv("BAT_LIMIT_STEPS", "0")
    with pytest.raises(InputError, match="must be a positive number"):
        Limits.from_env()


def test_check_uploads_names_bad_files(settings, tmp_path):
    good = example_paths(settings)
    assert handlers.check_uploads(good) == []
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    lines = handlers.check_uploads(good[:1] + [str(broken)])
    assert any(line.startswith("broken.png:") for line in lines)
    assert any("add at least 1 more" in line for line in lines)
    assert handlers.image_paths([(good[0], None), {"path": good[1]}, good[2]]) == good[:3]


def test_start_job_queues_and_refuses_bad_input(settings, tmp_path):
    job = handlers.start_job(settings, [(p, None) for p in example_paths(settings)], class_noun="disc",
                             methods=["none"], steps=3)
    assert job["queue_position"] == 1 and job["config"]["train"]["steps"] == 3
    view = views.job_view(settings, job["job_id"])
    # nothing runs: the job is next, not "position 1 in the queue"
    assert "Next in line" in view.text and "position" not in view.text
    assert not view.finished and view.loss_image is None
    second = handlers.start_job(settings, example_paths(settings), class_noun="disc", methods=["none"], steps=3)
    assert "position 2 of 2" in views.job_view(settings, second["job_id"]).text
    handlers.cancel_job(settings, second["job_id"])
    with pytest.raises(InputError, match="still waiting in the queue"):
        views.job_results(settings, job["job_id"])
    assert handlers.cancel_job(settings, job["job_id"])["status"] == "cancelled"

    with pytest.raises(InputError, match="2 photo\\(s\\) uploaded: upload 3-10 photos"):
        handlers.start_job(settings, example_paths(settings, 2), class_noun="disc", methods=["none"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        handlers.start_job(settings, example_paths(settings, 3) + [str(broken)], class_noun="disc", methods=["none"])
    with pytest.raises(InputError, match="No job id"):
        handlers.cancel_job(settings, " ")

    history = views.remember(views.remember(["0" * 32], "1" * 32), job["job_id"])
    assert history == [job["job_id"], "1" * 32, "0" * 32]
    assert views.remember(history, "0" * 32, keep=2) == ["0" * 32, job["job_id"]]
    (row,) = views.jobs_table(settings, history)  # jobs that do not exist (any more) are left out
    assert row[:4] == [job["job_id"], "cancelled", "cancelled", "none"]


def test_captions_travel_with_the_photos_into_the_job(settings):
    paths = example_paths(settings, 3)
    lines = "on the beach\n\na photo of sks disc on a red background\n"  # the middle photo has none
    job = handlers.start_job(settings, paths, class_noun="disc", methods=["none"], steps=3, captions=lines)
    assert job["config"]["train"]["captions"] is True
    folder = jobs.job_dir(job["job_id"], settings=settings.jobs)
    record = jobs.status(job["job_id"], settings=settings.jobs)
    texts = [(folder / image).with_suffix(".txt").read_text() for image in record["images"]]
    # a blank line: the plain instance prompt, so training reads a caption for every photo
    assert texts == ["on the beach", "a photo of sks disc", "a photo of sks disc on a red background"]
    handlers.cancel_job(settings, job["job_id"])

    plain = handlers.start_job(settings, paths, class_noun="disc", methods=["none"], steps=3, captions=" \n ")
    assert "captions" not in plain["config"]["train"]  # an empty box: no captions
    handlers.cancel_job(settings, plain["job_id"])
    with pytest.raises(InputError, match="2 caption line\\(s\\) for 3 photo\\(s\\): write one line per photo"):
        handlers.start_job(settings, paths, class_noun="disc", methods=["none"], captions="a\nb")
    with pytest.raises(InputError, match="Caption 2 is 301 characters long; the limit is 300"):
        handlers.start_job(settings, paths, class_noun="disc", methods=["none"], captions=f"a\n{'x' * 301}\nc")
    # while photos come and go, the note under them says when the lines no longer match
    assert caption_count_note("a\nb\nc", 3) == [] and caption_count_note("", 4) == []
    assert parse_captions("\nb\n\n\n\n", 3) == ["", "b", ""]  # empty lines count up to the photos
    assert caption_count_note("a\nb\nc", 4) == [
        "3 caption line(s) for 4 photo(s): write one line per photo, in the gallery's order (an empty line for "
        "a photo without one), or clear the captions."]
    with pytest.raises(InputError, match="1 caption\\(s\\) for 3 image\\(s\\)"):
        jobs.submit(job["config"], paths, settings=settings.jobs, captions=["only one"])


def test_photo_limits_tell_web_users_no_operator_setting(settings, tmp_path, monkeypatch):
    import numpy as np

    from bat_app.ui.public import public_message

    monkeypatch.setenv("BAT_LIMIT_PHOTO_MB", "1")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1024 * 1024
    lines = handlers.check_uploads(example_paths(settings, 3) + [str(big)])
    assert any(line.startswith("big.png: file is") and "the limit is 1.0 MB" in line for line in lines), lines
    with pytest.raises(ImageError) as info:
        handlers.start_job(settings, example_paths(settings, 3) + [str(big)], class_noun="disc", methods=["none"])
    shown = public_message(info.value)
    assert "big.png" in shown and "the limit is 1.0 MB" in shown
    for hint in ("max_file_bytes", "max_pixels", "--max-images", "BAT_", str(tmp_path)):
        assert hint not in shown and not any(hint in line for line in lines), hint


def test_public_messages():
    from bat_app.errors import LimitError
    from bat_app.ui.public import client_id, public_job_text, scrub

    assert scrub("No job in /data/bat/jobs; see /tmp/x/log.txt, step 3/40, https://hf.co/a/b") == \
        "No job in jobs; see log.txt, step 3/40, https://hf.co/a/b"
    assert scrub("Got 12 images; at most 10 are used. Remove 2 images or raise the limit (--max-images).") == \
        "Got 12 images; at most 10 are used. Remove 2 images."
    assert scrub("token hf_abcdefghijklmnop rejected") == "token hf_*** rejected"
    assert public_job_text("The job process was killed in stage 'train'. Inputs and checkpoints are kept. "
                           "Last lines of log.txt:\nTraceback ...\n  File \"/srv/x.py\"") == \
        "The job process was killed in stage 'train'. Inputs and checkpoints are kept."
    error = LimitError("steps must be between 1 and 5,000, got 9,000: lower it to 5,000 or less.", "BAT_LIMIT_STEPS")
    assert str(error).endswith("or less (operator setting BAT_LIMIT_STEPS).") and "BAT_" not in scrub(str(error))

    class Request:  # what gr.Request offers
        def __init__(self, username=None, host=None, forwarded=None, session_hash="s1"):
            self.username, self.session_hash = username, session_hash
            self.client = type("C", (), {"host": host})() if host else None
            self.headers = {"x-forwarded-for": forwarded} if forwarded else {}

    assert client_id(Request(username="ann", host="1.2.3.4")) == "user:ann"
    assert client_id(Request(host="1.2.3.4", forwarded="6.6.6.6")) == "ip:1.2.3.4"  # no proxy: the socket
    # behind one proxy: the entry that proxy appended, never what the client wrote before it
    assert client_id(Request(host="10.0.0.1", forwarded="6.6.6.6, 5.5.5.5"), proxy_hops=1) == "ip:5.5.5.5"
    assert client_id(Request()) == "session:s1" and client_id(None) is None


def test_examples(settings):
    (ex,) = handlers.list_examples(settings.subjects_dir)
    assert ex.name == "red_disc" and ex.class_noun == "disc" and len(ex.images) == 4
    assert ex.captions == [""] * 4  # no .txt beside these photos
    (ex.images[1].with_suffix(".txt")).write_text("on the grass\n")
    assert handlers.get_example(settings.subjects_dir, "red_disc").captions == ["", "on the grass", "", ""]
    shipped = {e.name: e for e in handlers.list_examples(assets_dir() / "subjects")}
    assert shipped["dot_star"].captions[0] == "in the center on a blue background"
    assert all(len(e.captions) == len(e.images) and all(e.captions) for e in shipped.values())
    assert handlers.list_examples(None) == [] and handlers.list_examples(Path("/nonexistent")) == []
    with pytest.raises(InputError, match="available: red_disc"):
        handlers.get_example(settings.subjects_dir, "cat")


# --- Progress and Results ------------------------------------------------------------------

def test_progress_text():
    running = {"id": "a" * 32, "status": "running", "stage": "train", "method": "albat", "step": 30, "total": 120,
               "eta_s": 75.2, "loss": 0.1234, "message": ""}
    assert "Stage: train · ALBAT (BAT) · step 30/120 · ETA 1 min 15 s · loss 0.1234" in views.progress_text(running)
    failed = {**running, "status": "failed", "error": "Out of memory: lower the resolution."}
    assert "Failed: Out of memory: lower the resolution." in views.progress_text(failed)
    assert views.format_seconds(3700) == "1 h 01 min" and views.format_seconds(None) == "?"


def finished_job(settings, tmp_path) -> str:
    """A submitted job given the outputs of a compare run by hand, and marked done."""
    from bat_app.jobs.queue import open_store

    job_id = handlers.start_job(settings, example_paths(settings), class_noun="disc", methods=["none"],
                                steps=3)["job_id"]
    folder = jobs.job_dir(job_id, settings=settings.jobs)
    out = folder / "out"
    lora = out / "methods" / "none" / "lora"
    lora.mkdir(parents=True)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"w" * 10)
    (lora / "sks_disc_kohya.safetensors").write_bytes(b"k" * 10)
    (lora / "loss_log.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1 / i}) + "\n" for i in range(1, 6)))
    (out / "downloads").mkdir()
    (out / "downloads" / "none_lora.zip").write_bytes(b"zip")
    (out / "previews").mkdir()
    Image.new("RGB", (40, 20)).save(out / "previews" / "grid_object.png")
    (out / "metrics.json").write_text(json.dumps({"methods": {"base": {"clip_i": 0.51234, "clip_t": 0.2},
                                                              "none": {"clip_i": 0.7, "clip_t": 0.25}},
                                                  "counts": {"none": 0}}))
    (out / "report.md").write_text("# report")
    open_store(settings.jobs).update(job_id, lambda r: setattr(r, "status", jobs.DONE) or True)
    return job_id


def test_results_of_a_finished_job(settings, tmp_path):
    job_id = finished_job(settings, tmp_path)
    view = views.job_view(settings, job_id)
    assert view.finished and view.loss_image.size == (480, 240) and view.selection == []
    again = views.job_view(settings, job_id, view.shown_key)
    assert again.selection is None and again.loss_image is None  # unchanged: not re-read, not re-sent
    log = Path(jobs.job_dir(job_id, settings=settings.jobs)) / "out" / "methods" / "none" / "lora" / "loss_log.jsonl"
    with log.open("a") as f:  # more steps logged: the curve is drawn again
        f.write("".join(json.dumps({"step": i, "loss": 1 / i}) + "\n" for i in range(6, 100)))
    assert views.job_view(settings, job_id, view.shown_key).loss_image is not None
    res = views.job_results(settings, job_id)
    assert res.methods == ["none"] and [c for _, c in res.grids] == ["object"]
    # "method" is what the grid's column titles say; "name" what the method is
    assert res.metric_headers == ["method", "name", "backbone images", "clip_i", "clip_t"]
    assert res.metric_rows == [["base", "base model", 0, 0.5123, 0.2], ["none", "DreamBooth-LoRA", 0, 0.7, 0.25]]
    assert [Path(p).name for p in res.downloads] == ["none_pytorch_lora_weights.safetensors",
                                                      "none_sks_disc_kohya.safetensors", "none_lora.zip"]
    assert Path(res.downloads[0]).read_bytes() == b"w" * 10
    # served from a folder named by the job id outside the jobs folder, never from the job folder
    folder = jobs.job_dir(job_id, settings=settings.jobs)
    for path in [res.grids[0][0], *res.downloads]:
        assert Path(path).parent.name == job_id and folder not in Path(path).parents
    assert views.api_status(settings, job_id)["status"] == "done"
    with pytest.raises(InputError, match="did not train method 'albat'"):
        loras.lora_dir(settings, job_id, "albat")
    from bat_app.ui.tryit import try_prompt

    with pytest.raises(InputError, match="prompt is empty"):
        try_prompt(settings, job_id, "none", " ")
    with pytest.raises(InputError, match=r"LoRA strength must be between 0 and 2, got 2.5: lower it to 2"):
        try_prompt(settings, job_id, "none", "a sks disc", strength=2.5)
    with pytest.raises(InputError, match=r"guidance \(CFG scale\) must be between 1 and 20, got 0.5"):
        try_prompt(settings, job_id, "none", "a sks disc", guidance=0.5)


def with_kept_steps(settings, job_id: str, steps=(2, 4, 5), final: int = 6) -> Path:
    """The finished job's training given a final step and earlier steps it kept, and their picture."""
    out = jobs.job_dir(job_id, settings=settings.jobs) / "out"
    lora = out / "methods" / "none" / "lora"
    (lora / "training_log.json").write_text(json.dumps({"config": {"steps": final}}))
    for step in steps:
        folder = lora / "steps" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "pytorch_lora_weights.safetensors").write_bytes(b"s" * step)
        (folder / "sks_disc_kohya.safetensors").write_bytes(b"t" * step)
        (folder / "sks.safetensors").write_bytes(b"v" * step)  # the trigger's pivotal vectors
    Image.new("RGB", (60, 20)).save(out / "previews" / "steps_none.png")
    return out


def test_the_steps_a_training_kept_are_shown_downloaded_and_refused_by_name(settings, tmp_path, monkeypatch):
    import bat_app.export.hub as hub
    from bat_app.ui.tryit import push_job_to_hub

    monkeypatch.setattr(loras, "find_embeddings", lambda folder: [folder / "sks.safetensors"]
                        if (folder / "sks.safetensors").is_file() else None)
    job_id = finished_job(settings, tmp_path)
    res = views.job_results(settings, job_id)
    assert res.steps == [] and res.choices == [("DreamBooth-LoRA", "none")]  # no log, no steps: the final only
    out = with_kept_steps(settings, job_id)
    res = views.job_results(settings, job_id)
    # step 2 is not in the last third of 6: only 4 and 5 are offered, after the final LoRA
    assert res.choices == [("DreamBooth-LoRA (final, step 6)", "none"), ("DreamBooth-LoRA · step 4", "none@4"),
                           ("DreamBooth-LoRA · step 5", "none@5")]
    [(picture, caption)] = res.steps
    assert Path(picture).name == "steps_none.png" and Path(picture).parent.name == job_id
    assert caption == "DreamBooth-LoRA: its steps side by side"
    files = loras.step_files(settings, job_id, "none@4")
    assert [Path(p).name for p in files] == ["none_step4_pytorch_lora_weights.safetensors",
                                             "none_step4_sks_disc_kohya.safetensors", "none_step4_sks.safetensors"]
    assert Path(files[0]).read_bytes() == b"s" * 4 and all(Path(p).parent.name == job_id for p in files)
    assert [Path(p).name for p in loras.step_files(settings, job_id, "none")][:2] == [
        "none_pytorch_lora_weights.safetensors", "none_sks_disc_kohya.safetensors"]
    assert loras.lora_dir(settings, job_id, "none@5")[0] == out / "methods" / "none" / "lora" / "steps" / "step-000005"
    with pytest.raises(InputError, match="kept no step 2; it kept steps 4, 5"):
        loras.lora_dir(settings, job_id, "none@2")
    with pytest.raises(InputError, match="names no step"):
        loras.lora_dir(settings, job_id, "none@last")
    with pytest.raises(InputError, match="did not train method 'albat'"):
        loras.step_files(settings, job_id, "albat@4")
    # the Hub gets the step's LoRA and the step's own samples
    samples = out / "previews" / "steps" / "none" / "step-000004"
    samples.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(samples / "p00_s1.png")
    calls = []
    monkeypatch.setattr(hub, "push_lora", lambda *a, **kw: calls.append((a, kw)) or "https://huggingface.co/a/b")
    push_job_to_hub(settings, job_id, "none@4", "a/b", "hf_x")
    (folder, _, _), kw = calls[0]
    assert folder.name == "step-000004" and [p.name for p in kw["samples"]] == ["p00_s1.png"]


def test_try_it_draws_with_the_strength_and_guidance_asked(settings, tmp_path, monkeypatch):
    import bat_app.preview as preview
    from bat_app.ui import tryit

    job_id = finished_job(settings, tmp_path)
    calls = []

    def fake_sample(components, prompts, seeds, lora_dir=None, **kw):
        calls.append((lora_dir is not None, kw))
        return [[Image.new("RGB", (32, 32))]]

    monkeypatch.setattr(preview, "sample_images", fake_sample)
    monkeypatch.setattr(tryit, "_components", lambda model: None)
    settings = dataclasses.replace(settings, safety_checker=False)  # nothing to check in fakes
    base, tuned = tryit.try_prompt(settings, job_id, "none", "a sks disc", seed=3, strength=0.6, guidance=7.5)
    assert calls == [(False, {"guidance_scale": 7.5}), (True, {"lora_scale": 0.6, "guidance_scale": 7.5})]
    assert base.size == tuned.size == (256, 256)  # shown enlarged


def test_push_a_finished_job(settings, tmp_path, monkeypatch):
    import bat_app.export.hub as hub
    from bat_app.ui.tryit import push_job_to_hub

    job_id = finished_job(settings, tmp_path)
    samples = jobs.job_dir(job_id, settings=settings.jobs) / "out" / "previews" / "samples" / "none"
    samples.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(samples / "p00_s0.png")
    calls = []
    monkeypatch.setattr(hub, "push_lora", lambda *a, **kw: calls.append((a, kw)) or "https://huggingface.co/a/b")
    assert push_job_to_hub(settings, job_id, "none", "a/b", "hf_x", private=False) == "https://huggingface.co/a/b"
    (folder, repo, token), kw = calls[0]
    assert folder.name == "lora" and folder.parent.name == "none" and (repo, token) == ("a/b", "hf_x")
    assert [p.name for p in kw["samples"]] == ["p00_s0.png"] and kw["private"] is False


# --- the gradio layer ----------------------------------------------------------------------

def test_app_wiring(settings):
    import gradio as gr

    from bat_app.ui.app import build_app, launch_options
    from bat_app.ui.tabs.common import guarded

    options = launch_options(settings)
    assert options["run_history"] is False  # it would keep the Hub token in the browser
    assert [m.cls.__name__ for m in options["app_kwargs"]["middleware"]] == ["SlowStatusTrackerLoop"]

    demo = build_app(settings)
    config = demo.get_config_file()
    named = {d["api_name"]: d for d in config["dependencies"] if d.get("api_visibility", "public") == "public"
             and d.get("api_name")}
    assert {"submit", "status", "results", "cancel", "try"} <= set(named)
    uploads = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "uploads")
    # no event writes to the upload box except "Use example": an error never clears the uploads
    writers = [d for d in config["dependencies"] if uploads in d["outputs"]]
    assert len(writers) == 1 and writers[0]["api_visibility"] == "private"

    def bad():
        raise InputError("Fix this.")

    with pytest.raises(gr.Error, match="Fix this."):
        guarded(bad)()
    with pytest.raises(ZeroDivisionError):
        guarded(lambda: 1 / 0)()


def test_every_html_page_gets_the_idle_page_script_first():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bat_app.ui.idle_page import SCRIPT, SlowStatusTrackerLoop

    page = "<html><head><meta charset='utf-8'><script>gradio()</script></head></html>"

    async def chunks():
        yield page[:20].encode()
        yield page[20:].encode()

    app = Starlette(routes=[Route("/", lambda r: HTMLResponse(page), methods=["GET", "HEAD"]),
                            Route("/chunked", lambda r: StreamingResponse(chunks(), media_type="text/html")),
                            Route("/api", lambda r: JSONResponse({"html": "<script>"}))],
                    middleware=[Middleware(SlowStatusTrackerLoop)])
    client = TestClient(app)
    for path in ("/", "/chunked"):
        response = client.get(path)
        assert response.text == page.replace("<script>", SCRIPT + "<script>", 1)
        if path == "/":
            assert int(response.headers["content-length"]) == len(response.content)
    assert client.get("/api").json() == {"html": "<script>"}  # not a page: untouched
    assert int(client.head("/").headers["content-length"]) == len(page)


def test_settings_and_cli(monkeypatch, tmp_path):
    from bat_app.ui import cli

    monkeypatch.setenv("BAT_MODEL", "shapes")
    monkeypatch.delenv("BAT_POOL", raising=False)
    monkeypatch.setenv("BAT_PREVIEW_PROMPTS", "3")
    s = AppSettings.from_env()
    assert (s.model, s.pool, s.preview_prompts, s.embedded_worker) == ("shapes", "shapes", 3, True)
    monkeypatch.setenv("BAT_POOL", "none")
    monkeypatch.setenv("BAT_EMBEDDED_WORKER", "0")
    assert AppSettings.from_env().pool is None and not AppSettings.from_env().embedded_worker
    monkeypatch.setenv("BAT_PREVIEW_PROMPTS", "many")
    with pytest.raises(InputError, match="BAT_PREVIEW_PROMPTS"):
        AppSettings.from_env()

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker"])
    assert (args.host, args.port, args.share, args.no_worker, args.func) == ("0.0.0.0", 8080, False, True, cli.run)


def test_the_model_note_says_licence_and_whether_it_fits():
    assert "Runs on the CPU" in model_note.model_note("shapes")
    note = model_note.model_note("flux-dev")
    assert "Licence: flux-1-dev-non-commercial" in note
    assert model_note.fit_note({"min_gpu_gb": 16}, gpu_gb=0).startswith(" Needs a CUDA GPU with ~16 GB; none")
    assert model_note.fit_note({"min_gpu_gb": 16}, gpu_gb=24).endswith("this GPU has 24 GB: fits.")
    assert "does not fit" in model_note.fit_note({"min_gpu_gb": 40}, gpu_gb=24)
    assert model_note.model_note("/some/folder") == ""
