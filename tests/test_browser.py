"""The app in a real browser: Playwright driving Debian's headless Chromium (no browser download).

Upload example images, start a two-method job, watch progress, see both columns in the results,
download the LoRA and load it, pick an earlier step the training kept and download that one, try
a prompt, reconnect after a reload. Runs on the shapes
backbone when its assets are there, else on the tiny test model. Screenshots of every tab go to
docs/screenshots/ with BAT_UPDATE_SCREENSHOTS=1 (else to a temporary folder); timings are
printed (pytest -s) and written to ``browser_timings.json`` next to the screenshots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from bat_app.paths import assets_dir
from test_ui_api import SHAPES_BACKBONE, job_threads, launch_app, stop_app, tiny_assets

CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("ui-browser")
    if (SHAPES_BACKBONE / "model_index.json").is_file():
        # the shapes backbone with the session's shared shapes pool (conftest: shapes_pool_dir)
        from bat_app.testing import share_shapes_pool

        pool = share_shapes_pool(request.getfixturevalue("shapes_pool_dir"), root / "home")
        overrides = {"model": "shapes", "pool": "shapes", "subjects_dir": assets_dir() / "subjects"}
        # 8 class images: the recipe's prior preservation, at a tenth of the recipe's draws
        plan = {"class_noun": None, "steps": 30, "m": 8, "k": 64, "class_images": 8,
                "pool_size": pool.name.removeprefix("shapes-")}
    else:
        tiny = [request.getfixturevalue(n) for n in ("tiny_model_dir", "tiny_pool_dir", "tiny_clip_dir")]
        overrides = tiny_assets(root, *tiny, n_images=4)
        plan = {"class_noun": "disc", "steps": 6, "m": 4, "k": 16, "class_images": 4, "pool_size": None}
    with job_threads(), pytest.MonkeyPatch.context() as mp:
        if plan["pool_size"]:
            mp.setenv("BAT_SHAPES_POOL_SIZE", plan["pool_size"])
        demo, worker, url = launch_app(root / "home", **overrides)
        yield {"url": url, "plan": plan, "subjects": overrides["subjects_dir"], "model": overrides["model"],
               "home": root / "home"}
        stop_app(demo, worker)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shots_dir(tmp_path) -> Path:
    folder = DOCS if os.environ.get("BAT_UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_train_compare_download_in_the_browser(server, browser, tmp_path):
    from playwright.sync_api import expect

    shots, plan, timings = shots_dir(tmp_path), server["plan"], {}
    subject = sorted(p for p in Path(server["subjects"]).iterdir() if (p / "subject.json").is_file())[0]
    images = sorted(str(p) for p in subject.glob("*.png"))
    class_noun = plan["class_noun"] or json.loads((subject / "subject.json").read_text())["class_noun"]
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    tab = lambda name: page.get_by_role("tab", name=name)

    # --- load and upload ------------------------------------------------------------------
    started = time.perf_counter()
    page.goto(server["url"])
    page.get_by_role("button", name="Start").wait_for()
    timings["page_load_s"] = time.perf_counter() - started
    page.locator("#uploads input[type=file]").set_input_files(images)
    expect(page.locator("#uploads img")).to_have_count(len(images), timeout=30_000)
    page.get_by_label("Class noun").fill(class_noun)
    if server["model"] == "shapes":
        # the model's CLIP suggests each photo's background, one line per photo, for the user to check
        page.locator("#suggest-captions").click()
        expect(page.locator("#captions textarea")).to_have_value(
            re.compile(r"^(on a [a-z]+ background\n){%d}on a [a-z]+ background$" % (len(images) - 1)), timeout=60_000)
    captions = [f"on a {colour} background" for colour in ("red", "green", "blue", "white", "black")][:len(images)]
    captions[1] = ""  # a photo without a caption trains on the plain instance prompt
    page.locator("#captions textarea").fill("\n".join(captions))
    page.get_by_label("ALBAT (BAT)").uncheck()
    page.get_by_label("random backbone images").check()
    page.get_by_text("Advanced settings").click()
    for label, value in (("steps", plan["steps"]), ("m: backbone images kept", plan["m"]),
                         ("K: retrieval candidates", plan["k"]), ("class images", plan["class_images"]),
                         ("earlier steps to choose from", 2)):
        box = page.get_by_label(label, exact=True)
        expect(box).not_to_have_value("")  # filled from the number of photos
        box.fill(str(value))
    page.screenshot(path=str(shots / "train.png"), full_page=True)

    # --- start and watch ------------------------------------------------------------------
    started = time.perf_counter()
    page.get_by_role("button", name="Start").click()
    progress = page.locator("#progress-text")
    expect(progress).to_contain_text("Stage:", timeout=60_000)
    timings["start_to_first_progress_s"] = time.perf_counter() - started
    job_id = re.search(r"[0-9a-f]{32}", progress.inner_text()).group(0)
    expect(progress).to_contain_text("step", timeout=240_000)
    try:  # a fuller picture for the screenshot: the second method training (may be too quick to catch)
        expect(progress).to_contain_text("random backbone images · step", timeout=60_000)
        page.wait_for_timeout(1500)
    except AssertionError:
        pass
    page.screenshot(path=str(shots / "progress.png"), full_page=True)
    expect(progress).to_contain_text("Finished", timeout=600_000)
    timings["start_to_done_s"] = time.perf_counter() - started
    # the captions box reached the job: one caption file per stored photo, in the gallery's order
    from bat_app import jobs

    settings = jobs.JobSettings.from_env(data_dir=server["home"])
    stored = jobs.status(job_id, settings=settings)["images"]
    folder = jobs.job_dir(job_id, settings=settings)
    assert [(folder / name).with_suffix(".txt").read_text() for name in stored] == \
        [line or f"a photo of sks {class_noun}" for line in captions]

    # --- results: both columns, metrics, downloads ----------------------------------------
    tab("Results").click()
    expect(page.locator("#grids img").first).to_be_visible(timeout=30_000)
    metrics = page.locator("#metrics")
    for row in ("base model", "DreamBooth-LoRA", "random backbone images"):
        expect(metrics).to_contain_text(row)
    link = page.locator('#downloads a[download="none_pytorch_lora_weights.safetensors"]')
    expect(link).to_be_visible()
    expect(page.locator('#downloads a[download="random_lora.zip"]')).to_be_visible()
    page.screenshot(path=str(shots / "results.png"), full_page=True)
    with page.expect_download() as info:
        link.click()
    weights = tmp_path / "downloaded.safetensors"
    info.value.save_as(weights)
    _check_lora_loads(server["model"], weights)

    # --- the earlier steps each training kept: their picture, and one of them downloaded ----
    from bat_app.train.tail_average import tail_points

    kept = tail_points(plan["steps"], 3)[0]  # 2 choices: the first of the last third's points
    expect(page.locator("#steps img").first).to_be_visible(timeout=30_000)
    page.locator("#step-choice input").click()
    page.get_by_role("option", name=f"DreamBooth-LoRA · step {kept}").click()
    step_link = page.locator(f'#step-downloads a[download="none_step{kept}_pytorch_lora_weights.safetensors"]')
    expect(step_link).to_be_visible(timeout=30_000)
    page.locator("#steps-box").screenshot(path=str(shots / "steps.png"))
    with page.expect_download() as info:
        step_link.click()
    step_weights = tmp_path / "step" / "downloaded.safetensors"
    step_weights.parent.mkdir()
    info.value.save_as(step_weights)
    _check_lora_loads(server["model"], step_weights)
    assert step_weights.read_bytes() != weights.read_bytes()  # another step's LoRA

    # --- try it ----------------------------------------------------------------------------
    tab("Try it").click()
    expect(page.get_by_label("Prompt")).to_have_value(f"a sks {class_noun} on a blue background")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#try-base img")).to_be_visible(timeout=60_000)
    expect(page.locator("#try-lora img")).to_be_visible(timeout=60_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "try_it.png"), full_page=True)

    # --- reconnect after a reload, and from another "device" --------------------------------
    page.reload()
    tab("Progress").click()
    expect(page.locator("#progress-text")).to_contain_text(job_id, timeout=20_000)
    other = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    other.goto(server["url"])
    other.get_by_role("tab", name="Jobs").click()
    other.get_by_label("Job id").fill(job_id)
    other.get_by_role("button", name="Connect").click()
    expect(other.locator("#progress-text")).to_contain_text("Finished", timeout=20_000)
    other.get_by_role("tab", name="Jobs").click()
    expect(other.locator("#my-jobs")).to_contain_text(job_id)  # remembered in that browser too
    other.screenshot(path=str(shots / "jobs.png"), full_page=True)
    context.close()

    (shots / "browser_timings.json").write_text(json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=1))
    print("browser timings:", timings)


def _check_lora_loads(model: str, weights: Path) -> None:
    """The downloaded file is a diffusers LoRA that a pipeline of the base model accepts."""
    from safetensors.torch import load_file

    from bat_app.models import build_pipeline, load_components

    state = load_file(weights)
    assert state and all("lora" in k for k in state)
    pipe = build_pipeline(load_components(model))
    pipe.load_lora_weights(str(weights.parent), weight_name=weights.name)
    assert pipe.get_active_adapters()
