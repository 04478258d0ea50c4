"""The Results tab: the side-by-side grid, metrics, downloads (``/results``), the report, and the
push to the Hugging Face Hub."""

from __future__ import annotations

import logging

import gradio as gr

from ...errors import BatError
from .. import tryit, views
from ..public import public_message
from .common import guarded

log = logging.getLogger(__name__)


def layout(ui) -> None:
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


def events(ui, demo) -> None:
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
