"""The Jobs tab: connect to a job by its id, cancel it (``/cancel``), this browser's jobs, the
``/status`` endpoint; and the page load that reconnects to ``?job=<id>`` or this browser's last job."""

from __future__ import annotations

import gradio as gr

from .. import views
from .common import cancel_handler, guarded


def layout(ui) -> None:
    with gr.Tab("Jobs", id="jobs") as ui.jobs_tab:
        gr.Markdown("A job id is all it takes to follow a job: after a reload, or from another device.")
        with gr.Row():
            ui.job_id = gr.Textbox(label="Job id", placeholder="32 hexadecimal digits", scale=4, elem_id="job-id")
            ui.connect = gr.Button("Connect", scale=1)
            ui.cancel = gr.Button("Cancel job", variant="stop", scale=1)
        ui.job_info = gr.Markdown()
        ui.my_jobs = gr.Dataframe(headers=views.JOB_COLUMNS, value=[], interactive=False, elem_id="my-jobs",
                                  label="Jobs from this browser (click a row to pick it)")


def events(ui, demo) -> None:
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
    ui.cancel.click(cancel_handler(settings), ui.job_id, ui.job_info, api_name="cancel")

    def status(job_id: str) -> dict:
        """The job's status: status, stage, method, step, total, loss, eta_s, queue_position, error."""
        return guarded(views.api_status)(settings, job_id)

    gr.api(status, api_name="status")


def page_events(ui, demo) -> None:
    def on_load(last, request: gr.Request):
        job = (request.query_params.get("job") if request else None) or last or ""
        if not job:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return job, job, gr.Timer(active=True), "?"

    demo.load(on_load, ui.remembered, [ui.job_id, ui.watching, ui.timer, ui.gallery_key], api_visibility="private")
