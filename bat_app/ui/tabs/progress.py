"""The Progress tab: the followed job's stage, steps, ETA, loss curve and selected backbone images,
polled every ``TICK_S``, and its Cancel button."""

from __future__ import annotations

import gradio as gr

from ...errors import BatError
from .. import views
from ..public import public_message
from .common import cancel_handler

# How often an open page asks for its job's progress. Each tick is a request to the server and a
# re-render in the browser: at 1 s, Chromium's renderer took about a quarter of a core for a whole
# example job on the 2-core machine (ninth session), CPU the job's own lanes would use.
TICK_S = 2.0


def layout(ui) -> None:
    with gr.Tab("Progress", id="progress"):
        ui.progress = gr.Markdown("No job yet: press **Start** on the Train tab, or connect to a job "
                                  "on the Jobs tab.", elem_id="progress-text")
        ui.loss = gr.Image(label="Training loss", type="pil", interactive=False, height=260, elem_id="loss")
        ui.selected = gr.Gallery(label="Backbone images selected (method · score · caption)", columns=8,
                                 height=300, elem_id="selected")
        ui.stop = gr.Button("Cancel this job", variant="stop", size="sm")


def events(ui, demo) -> None:
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
    ui.stop.click(cancel_handler(settings), ui.watching, ui.progress, api_visibility="private").success(
        lambda: gr.Button(visible=False), None, ui.stop, api_visibility="private")
