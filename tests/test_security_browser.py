"""Issue 11 in a real browser (Playwright + Debian's Chromium): bounds named at Start, "Use example"
applying the photo-count defaults, the cancel button leaving with the job, the download list
without remove buttons, and the Hub token box emptied after a failed push.

The server has no worker: jobs only queue (nothing trains); a finished job is made by hand.
"""

from __future__ import annotations

import re

import pytest

from test_browser import ARGS, CHROMIUM
from test_security import library_job
from test_ui_api import job_threads, launch_app, stop_app, tiny_assets

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")]


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir, tiny_pool_dir, tiny_clip_dir):
    root = tmp_path_factory.mktemp("security-browser")
    settings = tiny_assets(root, tiny_model_dir, tiny_pool_dir, tiny_clip_dir, n_images=4)
    with job_threads():
        demo, worker, url = launch_app(root / "home", embedded_worker=False, **settings)
        yield {"url": url, "home": root / "home", "subjects": settings["subjects_dir"], "root": root}
        stop_app(demo, worker)


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(app["url"])
        page.get_by_role("button", name="Start").wait_for()
        yield page
        browser.close()


def test_bounds_and_example_defaults_in_the_form(page, app):
    from playwright.sync_api import expect

    photos = sorted((app["subjects"] / "red_disc").glob("*.png"))
    for i, photo in enumerate(photos):  # the example's captions, as the shipped subjects have them
        photo.with_suffix(".txt").write_text(f"on a plain background, view {i}")
    page.get_by_text("Advanced settings").click()
    steps = page.get_by_label("steps", exact=True)
    steps.fill("7")
    page.get_by_role("button", name="Use example").click()
    expect(page.locator("#uploads img")).to_have_count(4, timeout=30_000)
    expect(page.get_by_text("4 photo(s).")).to_be_visible(timeout=10_000)  # the photo count note
    expect(steps).to_have_value("400", timeout=10_000)                     # defaults for 4 photos
    expect(page.get_by_label("Class noun")).to_have_value("disc")
    captions = page.locator("#captions textarea")
    expect(captions).to_have_value("")  # the example's captions only when asked for
    page.get_by_label("with its captions").check()
    page.get_by_role("button", name="Use example").click()
    expect(captions).to_have_value("\n".join(f"on a plain background, view {i}" for i in range(len(photos))))
    page.get_by_label("with its captions").uncheck()
    page.get_by_role("button", name="Use example").click()
    expect(captions).to_have_value("")

    steps.fill("100000")
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_text("steps must be between 1 and 5,000, got 100,000: lower it to 5,000 or less."
                            ).first).to_be_visible(timeout=30_000)
    expect(page.locator("#uploads img")).to_have_count(4)  # the error left the uploads in place
    assert "BAT_LIMIT" not in page.content()

    steps.fill("-1")  # Gradio's own range check would say "Value -1 is less than minimum value"
    page.get_by_role("button", name="Start").click()
    expect(page.get_by_text("steps must be between 1 and 5,000, got -1: raise it to 1.").first).to_be_visible(
        timeout=30_000)
    assert "minimum value" not in page.content()


def test_cancel_button_leaves_with_the_job(page):
    from playwright.sync_api import expect

    page.get_by_label("steps", exact=True).fill("4")
    page.get_by_role("button", name="Start").click()
    progress = page.locator("#progress-text")
    expect(progress).to_contain_text("Next in line", timeout=30_000)  # nothing runs: not "position 1"
    stop = page.get_by_role("button", name="Cancel this job")
    expect(stop).to_be_visible()
    stop.click()
    expect(progress).to_contain_text("Cancelled", timeout=30_000)
    expect(stop).to_be_hidden(timeout=10_000)


def test_results_downloads_and_a_failed_push(page, app, monkeypatch):
    from playwright.sync_api import expect

    import bat_app.export.hub as hub
    from bat_app.errors import HubError

    def refused(*args, **kwargs):  # what the Hub answers a bad token (offline here: no real Hub)
        raise HubError("The Hub refused the token (401 Unauthorized): use a token with write access.")

    monkeypatch.setattr(hub, "push_lora", refused)

    job_id = library_job(app, status="done")
    page.get_by_role("tab", name="Jobs").click()
    page.get_by_label("Job id").fill(job_id)
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("#progress-text")).to_contain_text("Finished", timeout=20_000)
    expect(page.get_by_role("button", name="Cancel this job")).to_be_hidden(timeout=10_000)
    page.get_by_role("tab", name="Results").click()
    page.get_by_role("button", name="Show results of the current job").click()
    downloads = page.locator("#downloads")
    expect(downloads.locator('a[download="none_pytorch_lora_weights.safetensors"]')).to_be_visible(timeout=20_000)
    expect(downloads.get_by_role("button", name=re.compile("remove|clear|×", re.I))).to_have_count(0)
    expect(downloads.get_by_text("×", exact=True)).to_have_count(0)
    expect(page.locator("#metrics")).to_contain_text("DreamBooth-LoRA")

    page.get_by_text("Push to the Hugging Face Hub").click()
    page.get_by_label("Repository").fill("someone/some-lora")
    token = page.get_by_label("Hugging Face token (write)")
    token.fill("hf_notarealtoken123456")
    page.get_by_role("button", name="Push", exact=True).click()
    expect(page.get_by_text("The Hub refused the token").first).to_be_visible(timeout=30_000)
    expect(token).to_have_value("", timeout=10_000)  # emptied although the push failed
    assert "hf_notarealtoken123456" not in page.content()


def test_an_idle_page_does_not_redraw_sixty_times_a_second(app, page):
    """Gradio's loading indicator leaves a requestAnimationFrame loop running (ui/idle_page.py): 60
    frames a second on an idle page, taken from the job when browser and server share a machine.
    The page's load events show spinners for a few seconds first: the quietest 2 s counts."""
    context = page.context.browser.new_context()
    # runs before the page's own scripts: counts every frame asked of the browser
    context.add_init_script("window.__frames = 0; const native = window.requestAnimationFrame.bind(window);"
                            "window.requestAnimationFrame = (cb) => { window.__frames++; return native(cb); };")
    idle = context.new_page()
    try:
        idle.goto(app["url"])
        idle.get_by_role("button", name="Start").wait_for()
        counts = []
        while len(counts) < 8 and min(counts, default=999) > 20:
            idle.evaluate("window.__frames = 0")
            idle.wait_for_timeout(2000)
            counts.append(idle.evaluate("window.__frames"))
    finally:
        context.close()
    assert min(counts) <= 20, f"frames asked for per 2 s on an idle page: {counts} (Gradio's loop alone asks 120)"
