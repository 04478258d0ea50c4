"""The Gradio Blocks app: Train, Progress, Results, Try it, Pools, Jobs. Only this module and the
tabs (``ui/tabs/``) import gradio.

    demo = build_app(AppSettings.from_env())
    demo.launch(**launch_options(settings))

Each tab's module lays out its components (``layout``) and wires its events (``events``), over a
namespace ``ui`` of the page's components. Event handlers are thin: they call
``handlers``/``views``/``tryit`` (plain functions over the library) and turn a BatError into a
``gr.Error`` with its message (``tabs.common.guarded``). No handler takes the uploads as an
output, so an error never clears what the user uploaded.

Named API endpoints (``gradio_client``): ``/submit`` (the Start button), ``/status`` (JSON),
``/results`` (grids, metrics, download files), ``/cancel``, ``/try``, ``/browse_pool``. Every one but ``/submit``
needs the job id; what is public and what is not: docs/security.md.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
from starlette.middleware import Middleware

from ..limits import Limits
from . import browse, handlers, served
from .idle_page import SlowStatusTrackerLoop
from .settings import AppSettings
from .tabs import TABS, jobs, progress

# System fonts only: the app must render offline (no Google Fonts request).
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = "#uploads {min-height: 220px} .bat-note {font-size: 0.9em; opacity: 0.85}"


def _device_note(settings: AppSettings) -> str:
    import torch

    device = "CUDA GPU" if torch.cuda.is_available() else "CPU (no CUDA found)"
    form = handlers.initial_form(settings)  # names, never the server's folders
    pool = form.pool if form.pool != handlers.NO_POOL else "none configured"
    return f"Backbone **{form.model}** · pool **{pool}** · running on {device}."


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
            for tab in TABS:
                tab.layout(ui)
        ui.timer = gr.Timer(progress.TICK_S, active=False)
        for tab in TABS:
            tab.events(ui, demo)
        jobs.page_events(ui, demo)
    return demo


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
