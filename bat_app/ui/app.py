"""The Gradio Blocks app: Train, Progress, Results, Try it, Jobs. The only module importing gradio.

    demo = build_app(AppSettings.from_env())
    demo.launch(**launch_options(settings))

Event handlers are thin: they call ``handlers``/``views``/``tryit`` (plain functions over the
library) and turn a BatError into a ``gr.Error`` with its message. No handler takes the
uploads as an output, so an error never clears what the user uploaded.

Named API endpoints (``gradio_client``): ``/submit`` (the Start button), ``/status`` (JSON),
``/results`` (grids, metrics, download files), ``/cancel``, ``/try``. Every one but ``/submit``
needs the job id; what is public and what is not: docs/security.md.
"""

from __future__ import annotations

import functools
import logging

import gradio as gr

from ..errors import BatError
from ..limits import SEED_MAX, Limits, bounds, check_range, check_text, env_name
from ..models.presets import presets
from . import browse, handlers, served, tryit, views
from .defaults import suggested_settings
from .public import client_id, public_message, scrub
from .settings import AppSettings

TICK_S = 1.0
ADVANCED = ("steps", "rank", "lr", "resolution", "seed", "k", "m", "aug_weight", "pivotal")
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
    settings = settings or AppSettings.from_env()
    form = handlers.initial_form(settings)
    examples = handlers.list_examples(settings.subjects_dir)
    preset_of = lambda model: model if model in presets() else None
    limits = Limits.from_env()

    with gr.Blocks(title="BAT Studio", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        remembered = gr.BrowserState("", storage_key="bat-studio-last-job")  # survives a reload
        history = gr.BrowserState([], storage_key="bat-studio-jobs")        # this browser's jobs
        watching = gr.State("")           # the job the Progress tab follows
        gallery_key = gr.State("")        # selection gallery shown (skip re-sending it)
        finished = gr.Textbox(visible=False)  # set to a job id when it finishes -> load results
        gr.Markdown("# BAT Studio\nPersonalize a text-to-image model from 3–10 photos with DreamBooth-LoRA "
                    "and **Backbone Augmented Training**: ALBAT adds matching images from the backbone's own "
                    f"pretraining data. {_device_note(settings)}")

        with gr.Tabs(selected="train") as tabs:
            # --- Train --------------------------------------------------------------------
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column(scale=3):
                        images = gr.Gallery(label="Subject photos (3–10): drop them here", interactive=True,
                                            file_types=["image"], type="filepath", columns=5, height=260,
                                            elem_id="uploads")
                        notes = gr.Markdown(elem_classes="bat-note")
                        if examples:
                            with gr.Row():
                                example = gr.Dropdown([e.name for e in examples], value=examples[0].name,
                                                      label="Or start from an example subject", scale=3)
                                use_example = gr.Button("Use example", scale=1)
                    with gr.Column(scale=2):
                        token = gr.Textbox("sks", label="Trigger token", info="a rare word that will mean your subject")
                        class_noun = gr.Textbox(label="Class noun", placeholder="dog, backpack, star",
                                                info="what the subject is")
                        # allow_custom_value: an unknown name reaches the handler, whose message
                        # names the choices (Gradio's own says only "not in the list of choices")
                        model = gr.Dropdown(handlers.model_choices(settings), value=form.model, label="Model preset",
                                            allow_custom_value=True, info="the backbones this server offers")
                        model_info = gr.Markdown(handlers.model_note(form.model), elem_id="model-note")
                        pool = gr.Dropdown(form.pools, value=form.pool, label="Backbone pool", allow_custom_value=True,
                                           info="the backbone's pretraining data; 'generated': its own samples of your "
                                                "class, drawn once (slow); 'none' without one")
                methods = gr.CheckboxGroup([(handlers.METHOD_LABELS[m], m) for m in handlers.METHOD_LABELS],
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
                        resolution = gr.Number(adv["resolution"], label="resolution (0 = the model's)", precision=0,
                                               info="a multiple of 8, at most twice the model's")
                    with gr.Row():
                        seed = gr.Number(adv["seed"], label="seed", precision=0, info=info("seed"))
                        k = gr.Number(adv["k"], label="K: retrieval candidates", precision=0, info=info("k"))
                        m = gr.Number(adv["m"], label="m: backbone images kept", precision=0, info=info("m"))
                        aug_weight = gr.Number(adv["aug_weight"], label="lambda: backbone loss weight",
                                               info=info("aug_weight"))
                    pivotal = gr.Checkbox(adv["pivotal"], label="pivotal tuning: train the trigger's own "
                                          "embedding vectors with the LoRA (the preset's recipe says when it helps)")
                advanced = [steps, rank, lr, resolution, seed, k, m, aug_weight, pivotal]
                start = gr.Button("Start", variant="primary", elem_id="start")
                start_info = gr.Markdown(elem_id="start-info")

            # --- Progress -----------------------------------------------------------------
            with gr.Tab("Progress", id="progress"):
                progress = gr.Markdown("No job yet: press **Start** on the Train tab, or connect to a job "
                                       "on the Jobs tab.", elem_id="progress-text")
                loss = gr.Image(label="Training loss", type="pil", interactive=False, height=260, elem_id="loss")
                selected = gr.Gallery(label="Backbone images selected (method · score · caption)", columns=8,
                                      height=300, elem_id="selected")
                stop = gr.Button("Cancel this job", variant="stop", size="sm")

            # --- Results ------------------------------------------------------------------
            with gr.Tab("Results", id="results"):
                show = gr.Button("Show results of the current job", elem_id="show-results")
                grids = gr.Image(label="Side by side: one column per method (the base model first), same seeds",
                                 type="filepath", interactive=False, elem_id="grids", buttons=["download", "fullscreen"])
                metrics = gr.Dataframe(label="Metrics", interactive=False, elem_id="metrics")
                downloads = gr.File(label="Downloads: diffusers / kohya .safetensors, zip with model card and samples",
                                    file_count="multiple", interactive=False, elem_id="downloads", buttons=[])
                with gr.Accordion("Push to the Hugging Face Hub", open=False):
                    with gr.Row():
                        hub_method = gr.Dropdown([], label="Method", scale=1, allow_custom_value=True)
                        hub_repo = gr.Textbox(label="Repository", placeholder="my-subject-lora or user/name", scale=2)
                        hub_token = gr.Textbox(label="Hugging Face token (write)", type="password", scale=2,
                                               info="used for this upload only; never stored or logged")
                        hub_private = gr.Checkbox(True, label="private")
                    push = gr.Button("Push")
                    pushed = gr.Markdown()
                with gr.Accordion("Report", open=False):
                    report = gr.Markdown()

            # --- Try it -------------------------------------------------------------------
            with gr.Tab("Try it", id="try"):
                with gr.Row():
                    try_method = gr.Dropdown([], label="LoRA (method)", scale=1, allow_custom_value=True)
                    prompt = gr.Textbox(label="Prompt", placeholder="a sks dog on the beach", scale=3)
                    try_seed = gr.Number(0, label="seed", precision=0, scale=1)
                generate = gr.Button("Generate", variant="primary")
                with gr.Row():
                    base_image = gr.Image(label="base model", type="pil", interactive=False, elem_id="try-base")
                    lora_image = gr.Image(label="with the LoRA", type="pil", interactive=False, elem_id="try-lora")

            # --- Pools --------------------------------------------------------------------
            pool_names = browse.browsable_pools(settings)
            if pool_names:
                with gr.Tab("Pools", id="pools"):
                    gr.Markdown("What a backbone pool holds: the items nearest to a description, by the pool's "
                                "own CLIP (items its content filters flag are left out).")
                    with gr.Row():
                        browse_pool = gr.Dropdown(pool_names, value=pool_names[0], label="Pool", scale=1,
                                                  allow_custom_value=True)
                        browse_query = gr.Textbox(label="Search", placeholder="a red star on a blue background",
                                                  scale=3, elem_id="pool-query")
                        browse_k = gr.Number(18, label="results", precision=0, scale=1,
                                             info=f"1 to {browse.K_MAX}")
                    browse_go = gr.Button("Search", variant="primary", elem_id="pool-search")
                    browse_sheet = gr.Image(label="contact sheet", type="pil", interactive=False,
                                            elem_id="pool-sheet")
                    browse_rows = gr.Dataframe(headers=["rank", "similarity", "caption", "flags"],
                                               interactive=False, wrap=True)

            # --- Jobs ---------------------------------------------------------------------
            with gr.Tab("Jobs", id="jobs") as jobs_tab:
                gr.Markdown("A job id is all it takes to follow a job: after a reload, or from another device.")
                with gr.Row():
                    job_id = gr.Textbox(label="Job id", placeholder="32 hexadecimal digits", scale=4, elem_id="job-id")
                    connect = gr.Button("Connect", scale=1)
                    cancel = gr.Button("Cancel job", variant="stop", scale=1)
                job_info = gr.Markdown()
                my_jobs = gr.Dataframe(headers=views.JOB_COLUMNS, value=[], interactive=False, elem_id="my-jobs",
                                       label="Jobs from this browser (click a row to pick it)")

        timer = gr.Timer(TICK_S, active=False)

        # --- Train events -----------------------------------------------------------------
        def on_images(value, model_name):
            paths = handlers.image_paths(value)
            lines = handlers.check_uploads(paths)
            for line in lines:
                gr.Warning(line)
            d = suggested_settings(len(paths), preset_of(model_name))
            note = (f"{len(paths)} photo(s). " if paths else "") + " ".join(lines)
            return [note, *[d[key] for key in ADVANCED]]

        images.change(on_images, [images, model], [notes, *advanced], api_visibility="private")

        def on_model(model_name, value):
            choices = handlers.pool_choices(settings, model_name)
            d = suggested_settings(len(handlers.image_paths(value)), preset_of(model_name))
            return [gr.Dropdown(choices=choices, value=handlers.default_pool(settings, model_name)),
                    handlers.model_note(model_name), *[d[key] for key in ADVANCED]]

        model.change(on_model, [model, images], [pool, model_info, *advanced], api_visibility="private")

        if examples:
            @guarded
            def on_example(name, model_name):
                # the same note and photo-count defaults as an upload (Gallery.change does not
                # fire for values an event sets)
                ex = handlers.get_example(settings.subjects_dir, name)
                paths = served.publish_example(ex.name, ex.images)
                return [paths, ex.class_noun, *on_images(paths, model_name)]

            use_example.click(on_example, [example, model], [images, class_noun, notes, *advanced],
                              api_visibility="private")

        @guarded
        def on_start(value, token_, noun, model_, pool_, methods_, steps_, rank_, lr_, resolution_, seed_, k_, m_,
                     aug_weight_, pivotal_=None, request: gr.Request = None):
            adv_values = (steps_, rank_, lr_, resolution_, seed_, k_, m_, aug_weight_, pivotal_)
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

        start.click(on_start, [images, token, class_noun, model, pool, methods, *advanced], [job_id, start_info],
                    api_name="submit").success(follow, [job_id, history],
                                               [watching, remembered, history, timer, tabs, gallery_key],
                                               api_visibility="private")

        # --- Progress events --------------------------------------------------------------
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
                    view.selection_key, gr.Timer(active=not view.finished),
                    job if view.status["status"] == "done" else gr.skip(),
                    gr.Button(visible=not view.finished))  # nothing left to cancel once it ended

        timer.tick(on_tick, [watching, gallery_key], [progress, loss, selected, gallery_key, timer, finished, stop],
                   api_visibility="private", show_progress="hidden")

        # --- Results events ---------------------------------------------------------------
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

        results_out = [grids, metrics, downloads, report]
        show.click(on_results, job_id, results_out, api_name="results").success(
            on_methods, job_id, [hub_method, try_method, prompt], api_visibility="private")
        finished.change(on_results, finished, results_out, api_visibility="private").success(
            on_methods, finished, [hub_method, try_method, prompt], api_visibility="private")

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

        push.click(on_push, [job_id, hub_method, hub_repo, hub_token, hub_private], [pushed, hub_token],
                   api_visibility="private")

        # --- Try it -----------------------------------------------------------------------
        @guarded
        def on_generate(job, method, text, seed_value):
            check_text("The prompt", text or "", limits.prompt_chars, env_name("prompt_chars"))
            check_range("seed", 0 if seed_value is None else seed_value, 0, SEED_MAX)
            return tryit.try_prompt(settings, job, method, text, seed_value)

        generate.click(on_generate, [job_id, try_method, prompt, try_seed], [base_image, lora_image],
                       api_name="try", concurrency_limit=1)

        # --- Pools ------------------------------------------------------------------------
        if pool_names:
            @guarded
            def on_browse(name, text, k, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
                def report(event):  # the shapes pool is built on first use: show how far
                    progress((event.step, event.total), desc=event.message)
                return browse.browse_pool(settings, name, text, k, progress=report)

            browse_go.click(on_browse, [browse_pool, browse_query, browse_k], [browse_sheet, browse_rows],
                            api_name="browse_pool", concurrency_limit=1)
            browse_query.submit(on_browse, [browse_pool, browse_query, browse_k], [browse_sheet, browse_rows],
                                api_visibility="private", concurrency_limit=1)

        # --- Jobs -------------------------------------------------------------------------
        @guarded
        def on_connect(job, known):
            view = views.job_view(settings, job)
            return (view.job_id, view.job_id, view.job_id, views.remember(known, view.job_id), view.text,
                    gr.Timer(active=True), gr.Tabs(selected="progress"), "?")

        connect.click(on_connect, [job_id, history],
                      [job_id, watching, remembered, history, progress, timer, tabs, gallery_key],
                      api_visibility="private")

        jobs_tab.select(lambda known: views.jobs_table(settings, known), history, my_jobs, api_visibility="private")

        def on_pick(evt: gr.SelectData):
            return evt.row_value[0] if evt.row_value else gr.skip()

        my_jobs.select(on_pick, None, job_id, api_visibility="private")

        @guarded
        def on_cancel(job):
            status = handlers.cancel_job(settings, job)
            return views.progress_text(status)

        cancel.click(on_cancel, job_id, job_info, api_name="cancel")
        stop.click(on_cancel, watching, progress, api_visibility="private").success(
            lambda: gr.Button(visible=False), None, stop, api_visibility="private")

        def status(job_id: str) -> dict:
            """The job's status: status, stage, method, step, total, loss, eta_s, queue_position, error."""
            return guarded(views.api_status)(settings, job_id)

        gr.api(status, api_name="status")

        # --- page load: reconnect to ?job=<id> or the last job of this browser ------------
        def on_load(last, request: gr.Request):
            job = (request.query_params.get("job") if request else None) or last or ""
            if not job:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return job, job, gr.Timer(active=True), "?"

        demo.load(on_load, remembered, [job_id, watching, timer, gallery_key], api_visibility="private")
    return demo


def launch_options(settings: AppSettings) -> dict:
    """Keyword arguments for ``demo.launch`` (theme, CSS, what the app must never serve).

    No ``allowed_paths``: Gradio serves only its own cache, where ``served.publish`` puts a
    job's results under the job id. The data dir (queue database, every job's inputs, config
    and log, pools) is blocked outright, so no path trick (``..``, encoding, symlinks) reaches
    it; where the Gradio cache was put inside the data dir, its jobs and pools folders are.
    Gradio's run history is off: it would keep every call's inputs, the Hub token among them.
    Uploads larger than a photo may be (BAT_LIMIT_PHOTO_MB) are refused by Gradio itself.
    """
    data = settings.jobs.data_dir.resolve()
    blocked = [data] if data not in served.cache_root().resolve().parents else [settings.jobs.jobs_dir, data / "pools"]
    # Gradio refuses bigger uploads before they reach the disk; the intake checks again per photo.
    max_upload = Limits.from_env().photo_mb * 1024 * 1024
    return {"theme": THEME, "css": CSS, "blocked_paths": [str(p) for p in blocked], "footer_links": ["api"],
            "run_history": False, "max_file_size": max_upload}
