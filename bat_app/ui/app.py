"""The Gradio Blocks app: Train, Progress, Results, Try it, Pools, Jobs. The only module importing gradio.

    demo = build_app(AppSettings.from_env())
    demo.launch(**launch_options(settings))

One function lays out each tab (``train_tab`` ...) and one wires its events (``train_events``
...), over a namespace ``ui`` of the page's components. Event handlers are thin: they call ``handlers``/``views``/``tryit`` (plain functions over the
library) and turn a BatError into a ``gr.Error`` with its message. No handler takes the
uploads as an output, so an error never clears what the user uploaded.

Named API endpoints (``gradio_client``): ``/submit`` (the Start button), ``/status`` (JSON),
``/results`` (grids, metrics, download files), ``/cancel``, ``/try``, ``/browse_pool``. Every one but ``/submit``
needs the job id; what is public and what is not: docs/security.md.
"""

from __future__ import annotations

import functools
import logging
from types import SimpleNamespace

import gradio as gr
from starlette.middleware import Middleware

from ..errors import BatError
from ..limits import SEED_MAX, Limits, bounds, check_range, check_text, env_name
from ..models.presets import presets
from . import browse, handlers, served, tryit, views
from .defaults import suggested_settings
from .idle_page import SlowStatusTrackerLoop
from .model_note import model_note
from .public import client_id, public_message, scrub
from .settings import AppSettings

# How often an open page asks for its job's progress. Each tick is a request to the server and a
# re-render in the browser: at 1 s, Chromium's renderer took about a quarter of a core for a whole
# example job on the 2-core machine (ninth session), CPU the job's own lanes would use.
TICK_S = 2.0
ADVANCED = ("steps", "rank", "lr", "resolution", "seed", "k", "m", "aug_weight", "pivotal", "prior",
            "num_class_images")
# System fonts only: the app must render offline (no Google Fonts request).
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
log = logging.getLogger(__name__)
CSS = "#uploads {min-height: 220px} .bat-note {font-size: 0.9em; opacity: 0.85}"


def guarded(fn):
    """Show library errors as gr.Error (message only: no traceback, no server path, no operator
    setting); anything else is a bug, which Gradio shows as a bare "Error" (the log has it)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BatError as exc:
            raise gr.Error(public_message(exc), print_exception=False) from exc
    return wrapper


def _device_note(settings: AppSettings) -> str:
    import torch

    device = "CUDA GPU" if torch.cuda.is_available() else "CPU (no CUDA found)"
    form = handlers.initial_form(settings)  # names, never the server's folders
    pool = form.pool if form.pool != handlers.NO_POOL else "none configured"
    return f"Backbone **{form.model}** · pool **{pool}** · running on {device}."


def _limit_info(key: str, limits: Limits, model: str | None = None) -> str:
    lo, hi = bounds(key, limits, model)
    return f"{lo:g}–{hi:,g}" if isinstance(hi, float) else f"{lo:,}–{hi:,}"


def build_app(settings: AppSettings | None = None) -> gr.Blocks:
    """The page: shared state, the header, one layout builder per tab, then each tab's events
    (events come last: a tab's events reach components of tabs built after it)."""
    settings = settings or AppSettings.from_env()
    ui = SimpleNamespace(settings=settings, limits=Limits.from_env(), form=handlers.initial_form(settings),
                         examples=handlers.list_examples(settings.subjects_dir),
                         pool_names=browse.browsable_pools(settings))
    with gr.Blocks(title="BAT Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        ui.remembered = gr.BrowserState("", storage_key="bat-studio-last-job")  # survives a reload
        ui.history = gr.BrowserState([], storage_key="bat-studio-jobs")        # this browser's jobs
        ui.watching = gr.State("")           # the job the Progress tab follows
        ui.gallery_key = gr.State("")        # the pictures the Progress tab shows (views.JobView.shown_key):
        #                                      unchanged ones are not re-sent every tick
        ui.finished = gr.Textbox(visible=False)  # set to a job id when it finishes -> load results
        gr.Markdown("# BAT Studio\nPersonalize a text-to-image model from 3–10 photos with DreamBooth-LoRA "
                    "and **Backbone Augmented Training**: ALBAT adds matching images from the backbone's own "
                    f"pretraining data. {_device_note(settings)}")
        with gr.Tabs(selected="train") as ui.tabs:
            for layout in (train_tab, progress_tab, results_tab, try_tab, pools_tab, jobs_tab):
                layout(ui)
        ui.timer = gr.Timer(TICK_S, active=False)
        for events in (train_events, progress_events, results_events, try_events, pools_events, jobs_events,
                       page_events):
            events(ui, demo)
    return demo


def _preset_of(model: str | None) -> str | None:
    return model if model in presets() else None


# --- Train ----------------------------------------------------------------------------------

def train_tab(ui) -> None:
    form, examples, limits = ui.form, ui.examples, ui.limits
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column(scale=3):
                ui.images = gr.Gallery(label="Subject photos (3–10): drop them here", interactive=True,
                                       file_types=["image"], type="filepath", columns=5, height=260,
                                       elem_id="uploads")
                ui.notes = gr.Markdown(elem_classes="bat-note")
                if examples:
                    with gr.Row():
                        ui.example = gr.Dropdown([e.name for e in examples], value=examples[0].name,
                                                 label="Or start from an example subject", scale=3)
                        ui.use_example = gr.Button("Use example", scale=1)
            with gr.Column(scale=2):
                ui.token = gr.Textbox("sks", label="Trigger token", info="a rare word that will mean your subject")
                ui.class_noun = gr.Textbox(label="Class noun", placeholder="dog, backpack, star",
                                           info="what the subject is")
                # allow_custom_value: an unknown name reaches the handler, whose message
                # names the choices (Gradio's own says only "not in the list of choices")
                ui.model = gr.Dropdown(handlers.model_choices(ui.settings), value=form.model, label="Model preset",
                                       allow_custom_value=True, info="the backbones this server offers")
                ui.model_info = gr.Markdown(model_note(form.model), elem_id="model-note")
                ui.pool = gr.Dropdown(form.pools, value=form.pool, label="Backbone pool", allow_custom_value=True,
                                      info="the backbone's pretraining data; 'generated': its own samples of your "
                                           "class, drawn once (slow); 'none' without one")
        ui.methods = gr.CheckboxGroup([(handlers.METHOD_LABELS[m], m) for m in handlers.METHOD_LABELS],
                                      value=form.methods, label="Methods to compare (the base model is "
                                      "always the first column)")
        with gr.Accordion("Advanced settings (defaults follow the number of photos)", open=False):
            adv = form.advanced
            # No minimum/maximum here: Gradio would refuse with "Value -1 is less than
            # minimum value 0."; the handler's message names the field and its range.
            info = lambda key: _limit_info(key, limits)
            with gr.Row():
                steps = gr.Number(adv["steps"], label="steps", precision=0, info=info("steps"))
                rank = gr.Number(adv["rank"], label="LoRA rank", precision=0, info=info("rank"))
                lr = gr.Number(adv["lr"], label="learning rate", info=f"more than 0, at most {limits.lr:g}")
                resolution = gr.Number(adv["resolution"], label="resolution (0 = the model's, or its memory profile's)", precision=0,
                                       info="a multiple of 8, at most twice the model's")
            with gr.Row():
                seed = gr.Number(adv["seed"], label="seed", precision=0, info=info("seed"))
                k = gr.Number(adv["k"], label="K: retrieval candidates", precision=0, info=info("k"))
                m = gr.Number(adv["m"], label="m: backbone images kept", precision=0, info=info("m"))
                aug_weight = gr.Number(adv["aug_weight"], label="lambda: backbone loss weight",
                                       info=info("aug_weight"))
            with gr.Row():
                pivotal = gr.Checkbox(adv["pivotal"], label="pivotal tuning: train the trigger's own "
                                      "embedding vectors with the LoRA (the preset's recipe says when it helps)")
                # (the label must not contain "prompt": the Try-it box is found by that label)
                prior = gr.Checkbox(adv["prior"], label="prior preservation: every method also trains on "
                                    "the base model's own images of the class, so the bare class keeps its look")
                class_images = gr.Number(adv["num_class_images"], label="class images", precision=0,
                                         info="how many the base model draws for prior preservation (once "
                                              "per model and class, then reused); " + info("num_class_images"))
        ui.advanced = [steps, rank, lr, resolution, seed, k, m, aug_weight, pivotal, prior,
                       class_images]  # in ADVANCED's order
        ui.start = gr.Button("Start", variant="primary", elem_id="start")
        ui.start_info = gr.Markdown(elem_id="start-info")


def train_events(ui, demo) -> None:
    settings = ui.settings

    def on_images(value, model_name):
        paths = handlers.image_paths(value)
        lines = handlers.check_uploads(paths)
        for line in lines:
            gr.Warning(line)
        d = suggested_settings(len(paths), _preset_of(model_name))
        note = (f"{len(paths)} photo(s). " if paths else "") + " ".join(lines)
        return [note, *[d[key] for key in ADVANCED]]

    ui.images.change(on_images, [ui.images, ui.model], [ui.notes, *ui.advanced], api_visibility="private")

    def on_model(model_name, value):
        choices = handlers.pool_choices(settings, model_name)
        d = suggested_settings(len(handlers.image_paths(value)), _preset_of(model_name))
        return [gr.Dropdown(choices=choices, value=handlers.default_pool(settings, model_name)),
                model_note(model_name), *[d[key] for key in ADVANCED]]

    ui.model.change(on_model, [ui.model, ui.images], [ui.pool, ui.model_info, *ui.advanced],
                    api_visibility="private")

    if ui.examples:
        @guarded
        def on_example(name, model_name):
            # the same note and photo-count defaults as an upload (Gallery.change does not
            # fire for values an event sets)
            ex = handlers.get_example(settings.subjects_dir, name)
            paths = served.publish_example(ex.name, ex.images)
            return [paths, ex.class_noun, *on_images(paths, model_name)]

        ui.use_example.click(on_example, [ui.example, ui.model], [ui.images, ui.class_noun, ui.notes, *ui.advanced],
                             api_visibility="private")

    @guarded
    def on_start(value, token_, noun, model_, pool_, methods_, steps_, rank_, lr_, resolution_, seed_, k_, m_,
                 aug_weight_, pivotal_=None, prior_=None, class_images_=None, request: gr.Request = None):
        adv_values = (steps_, rank_, lr_, resolution_, seed_, k_, m_, aug_weight_, pivotal_, prior_, class_images_)
        job = handlers.start_job(settings, value, client=client_id(request, settings.proxy_hops), token=token_,
                                 class_noun=noun, model=model_, pool=pool_, methods=methods_,
                                 **dict(zip(ADVANCED, adv_values)))
        for line in job["warnings"]:
            gr.Warning(scrub(line))
        position = job["queue_position"] or 0
        # "position 1 in the queue" only when something is actually ahead of it
        where = (f"position {position} in the queue" if position > 1 or (position == 1 and job["running"])
                 else "starting now")
        return job["job_id"], (f"Job **`{job['job_id']}`** submitted ({where}). Keep the id to come back "
                               f"to it from any device; progress is on the Progress tab.")

    def follow(job, known):  # a new job to watch: "?" makes the next tick redraw the selection gallery
        return job, job, views.remember(known, job), gr.Timer(active=True), gr.Tabs(selected="progress"), "?"

    ui.start.click(on_start, [ui.images, ui.token, ui.class_noun, ui.model, ui.pool, ui.methods, *ui.advanced],
                   [ui.job_id, ui.start_info], api_name="submit").success(
        follow, [ui.job_id, ui.history], [ui.watching, ui.remembered, ui.history, ui.timer, ui.tabs, ui.gallery_key],
        api_visibility="private")


# --- Progress -------------------------------------------------------------------------------

def progress_tab(ui) -> None:
    with gr.Tab("Progress", id="progress"):
        ui.progress = gr.Markdown("No job yet: press **Start** on the Train tab, or connect to a job "
                                  "on the Jobs tab.", elem_id="progress-text")
        ui.loss = gr.Image(label="Training loss", type="pil", interactive=False, height=260, elem_id="loss")
        ui.selected = gr.Gallery(label="Backbone images selected (method · score · caption)", columns=8,
                                 height=300, elem_id="selected")
        ui.stop = gr.Button("Cancel this job", variant="stop", size="sm")


def progress_events(ui, demo) -> None:
    settings = ui.settings

    def on_tick(job, shown_key):
        if not job:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip()
        try:
            view = views.job_view(settings, job, shown_key)
        except BatError as exc:  # e.g. the job was cleaned up: stop polling, say why
            return (public_message(exc), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(),
                    gr.Button(visible=False))
        gallery = view.selection if view.selection is not None else gr.skip()
        return (view.text, view.loss_image if view.loss_image is not None else gr.skip(), gallery,
                view.shown_key, gr.Timer(active=not view.finished),
                job if view.status["status"] == "done" else gr.skip(),
                gr.Button(visible=not view.finished))  # nothing left to cancel once it ended

    ui.timer.tick(on_tick, [ui.watching, ui.gallery_key],
                  [ui.progress, ui.loss, ui.selected, ui.gallery_key, ui.timer, ui.finished, ui.stop],
                  api_visibility="private", show_progress="hidden")
    ui.stop.click(_on_cancel(settings), ui.watching, ui.progress, api_visibility="private").success(
        lambda: gr.Button(visible=False), None, ui.stop, api_visibility="private")


# --- Results --------------------------------------------------------------------------------

def results_tab(ui) -> None:
    with gr.Tab("Results", id="results"):
        ui.show = gr.Button("Show results of the current job", elem_id="show-results")
        # The caption sits above the grid, not on it: Gradio draws an image's label over its top
        # left corner, which hid the first column's header ("base").
        gr.Markdown("**Side by side:** one column per method (the base model first), the same prompts and seeds.")
        ui.grids = gr.Image(label="Side by side", show_label=False, type="filepath", interactive=False,
                            elem_id="grids", buttons=["download", "fullscreen"])
        ui.metrics = gr.Dataframe(label="Metrics", interactive=False, elem_id="metrics")
        ui.downloads = gr.File(label="Downloads: diffusers / kohya .safetensors, zip with model card and samples",
                               file_count="multiple", interactive=False, elem_id="downloads", buttons=[])
        with gr.Accordion("Push to the Hugging Face Hub", open=False):
            with gr.Row():
                ui.hub_method = gr.Dropdown([], label="Method", scale=1, allow_custom_value=True)
                ui.hub_repo = gr.Textbox(label="Repository", placeholder="my-subject-lora or user/name", scale=2)
                ui.hub_token = gr.Textbox(label="Hugging Face token (write)", type="password", scale=2,
                                          info="used for this upload only; never stored or logged")
                ui.hub_private = gr.Checkbox(True, label="private")
            ui.push = gr.Button("Push")
            ui.pushed = gr.Markdown()
        with gr.Accordion("Report", open=False):
            ui.report = gr.Markdown()


def results_events(ui, demo) -> None:
    settings = ui.settings

    @guarded
    def on_results(job):
        res = views.job_results(settings, job)
        table = {"headers": res.metric_headers, "data": res.metric_rows}
        return (res.grids[0][0] if res.grids else None), table, res.downloads, res.report

    @guarded
    def on_methods(job):
        res_methods = views.job_results(settings, job)
        choice = res_methods.methods[-1]
        return (gr.Dropdown(choices=res_methods.methods, value=choice),
                gr.Dropdown(choices=res_methods.methods, value=choice),
                tryit.suggested_prompt(res_methods.config))

    results_out = [ui.grids, ui.metrics, ui.downloads, ui.report]
    methods_out = [ui.hub_method, ui.try_method, ui.prompt]
    ui.show.click(on_results, ui.job_id, results_out, api_name="results").success(
        on_methods, ui.job_id, methods_out, api_visibility="private")
    ui.finished.change(on_results, ui.finished, results_out, api_visibility="private").success(
        on_methods, ui.finished, methods_out, api_visibility="private")

    def on_push(job, method, repo, token_value, private):
        # Not `guarded`: a raised error would leave the token in its box. Every outcome
        # returns, and empties it (Gradio runs no .then after a failed event).
        try:
            url = tryit.push_job_to_hub(settings, job, method, repo, token_value, private)
        except BatError as exc:
            gr.Warning(public_message(exc))
            return f"**Push failed:** {public_message(exc)}", ""
        except Exception:  # a bug or the network: the log has it; the page must not keep the token
            log.exception("push to the Hub failed")
            gr.Warning("The push failed unexpectedly; the server log has the details.")
            return "**Push failed** unexpectedly; the server log has the details.", ""
        return f"Pushed: [{url}]({url})", ""

    ui.push.click(on_push, [ui.job_id, ui.hub_method, ui.hub_repo, ui.hub_token, ui.hub_private],
                  [ui.pushed, ui.hub_token], api_visibility="private")


# --- Try it ---------------------------------------------------------------------------------

def try_tab(ui) -> None:
    with gr.Tab("Try it", id="try"):
        with gr.Row():
            ui.try_method = gr.Dropdown([], label="LoRA (method)", scale=1, allow_custom_value=True)
            ui.prompt = gr.Textbox(label="Prompt", placeholder="a sks dog on the beach", scale=3)
            ui.try_seed = gr.Number(0, label="seed", precision=0, scale=1)
        ui.generate = gr.Button("Generate", variant="primary")
        with gr.Row():
            ui.base_image = gr.Image(label="base model", type="pil", interactive=False, elem_id="try-base")
            ui.lora_image = gr.Image(label="with the LoRA", type="pil", interactive=False, elem_id="try-lora")


def try_events(ui, demo) -> None:
    settings, limits = ui.settings, ui.limits

    @guarded
    def on_generate(job, method, text, seed_value):
        check_text("The prompt", text or "", limits.prompt_chars, env_name("prompt_chars"))
        check_range("seed", 0 if seed_value is None else seed_value, 0, SEED_MAX)
        return tryit.try_prompt(settings, job, method, text, seed_value)

    ui.generate.click(on_generate, [ui.job_id, ui.try_method, ui.prompt, ui.try_seed],
                      [ui.base_image, ui.lora_image], api_name="try", concurrency_limit=1)


# --- Pools ----------------------------------------------------------------------------------

def pools_tab(ui) -> None:
    if not ui.pool_names:
        return
    with gr.Tab("Pools", id="pools"):
        gr.Markdown("What a backbone pool holds: the items nearest to a description, by the pool's "
                    "own CLIP (items its content filters flag are left out).")
        with gr.Row():
            ui.browse_pool = gr.Dropdown(ui.pool_names, value=ui.pool_names[0], label="Pool", scale=1,
                                         allow_custom_value=True)
            ui.browse_query = gr.Textbox(label="Search", placeholder="a red star on a blue background",
                                         scale=3, elem_id="pool-query")
            ui.browse_k = gr.Number(18, label="results", precision=0, scale=1, info=f"1 to {browse.K_MAX}")
        ui.browse_go = gr.Button("Search", variant="primary", elem_id="pool-search")
        ui.browse_sheet = gr.Image(label="contact sheet", type="pil", interactive=False, elem_id="pool-sheet")
        ui.browse_rows = gr.Dataframe(headers=["rank", "similarity", "caption", "flags"], interactive=False,
                                      wrap=True)


def pools_events(ui, demo) -> None:
    if not ui.pool_names:
        return
    settings = ui.settings

    @guarded
    def on_browse(name, text, k, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        def report(event):  # the shapes pool is built on first use: show how far
            progress((event.step, event.total), desc=event.message)
        return browse.browse_pool(settings, name, text, k, progress=report)

    inputs, outputs = [ui.browse_pool, ui.browse_query, ui.browse_k], [ui.browse_sheet, ui.browse_rows]
    ui.browse_go.click(on_browse, inputs, outputs, api_name="browse_pool", concurrency_limit=1)
    ui.browse_query.submit(on_browse, inputs, outputs, api_visibility="private", concurrency_limit=1)


# --- Jobs -----------------------------------------------------------------------------------

def jobs_tab(ui) -> None:
    with gr.Tab("Jobs", id="jobs") as ui.jobs_tab:
        gr.Markdown("A job id is all it takes to follow a job: after a reload, or from another device.")
        with gr.Row():
            ui.job_id = gr.Textbox(label="Job id", placeholder="32 hexadecimal digits", scale=4, elem_id="job-id")
            ui.connect = gr.Button("Connect", scale=1)
            ui.cancel = gr.Button("Cancel job", variant="stop", scale=1)
        ui.job_info = gr.Markdown()
        ui.my_jobs = gr.Dataframe(headers=views.JOB_COLUMNS, value=[], interactive=False, elem_id="my-jobs",
                                  label="Jobs from this browser (click a row to pick it)")


def _on_cancel(settings: AppSettings):
    @guarded
    def on_cancel(job):
        status = handlers.cancel_job(settings, job)
        return views.progress_text(status)
    return on_cancel


def jobs_events(ui, demo) -> None:
    settings = ui.settings

    @guarded
    def on_connect(job, known):
        view = views.job_view(settings, job)
        return (view.job_id, view.job_id, view.job_id, views.remember(known, view.job_id), view.text,
                gr.Timer(active=True), gr.Tabs(selected="progress"), "?")

    ui.connect.click(on_connect, [ui.job_id, ui.history],
                     [ui.job_id, ui.watching, ui.remembered, ui.history, ui.progress, ui.timer, ui.tabs,
                      ui.gallery_key], api_visibility="private")
    ui.jobs_tab.select(lambda known: views.jobs_table(settings, known), ui.history, ui.my_jobs,
                       api_visibility="private")

    def on_pick(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.skip()

    ui.my_jobs.select(on_pick, None, ui.job_id, api_visibility="private")
    ui.cancel.click(_on_cancel(settings), ui.job_id, ui.job_info, api_name="cancel")

    def status(job_id: str) -> dict:
        """The job's status: status, stage, method, step, total, loss, eta_s, queue_position, error."""
        return guarded(views.api_status)(settings, job_id)

    gr.api(status, api_name="status")


# --- page load: reconnect to ?job=<id> or the last job of this browser ------------------------

def page_events(ui, demo) -> None:
    def on_load(last, request: gr.Request):
        job = (request.query_params.get("job") if request else None) or last or ""
        if not job:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return job, job, gr.Timer(active=True), "?"

    demo.load(on_load, ui.remembered, [ui.job_id, ui.watching, ui.timer, ui.gallery_key], api_visibility="private")


def launch_options(settings: AppSettings) -> dict:
    """Keyword arguments for ``demo.launch`` (theme, CSS, what the app must never serve).

    No ``allowed_paths``: Gradio serves only its own cache, where ``served.publish`` puts a
    job's results under the job id. The data dir (queue database, every job's inputs, config
    and log, pools) is blocked outright, so no path trick (``..``, encoding, symlinks) reaches
    it; where the Gradio cache was put inside the data dir, its jobs and pools folders are.
    Gradio's run history is off: it would keep every call's inputs, the Hub token among them.
    Uploads larger than a photo may be (BAT_LIMIT_PHOTO_MB) are refused by Gradio itself.
    Every page gets ``idle_page.SCRIPT``, which slows a frame loop Gradio leaves running.
    """
    data = settings.jobs.data_dir.resolve()
    blocked = [data] if data not in served.cache_root().resolve().parents else [settings.jobs.jobs_dir, data / "pools"]
    # Gradio refuses bigger uploads before they reach the disk; the intake checks again per photo.
    max_upload = Limits.from_env().photo_mb * 1024 * 1024
    return {"theme": THEME, "css": CSS, "blocked_paths": [str(p) for p in blocked], "footer_links": ["api"],
            "run_history": False, "max_file_size": max_upload,
            "app_kwargs": {"middleware": [Middleware(SlowStatusTrackerLoop)]}}
