"""The Results tab: the side-by-side grid, metrics, downloads (``/results``), the earlier steps
each training kept (a picture per method, and the files of the one the user keeps), the report,
and the push to the Hugging Face Hub."""

from __future__ import annotations

import logging

import gradio as gr

from ...albat import METHODS
from ...errors import BatError
from .. import loras, tryit, views
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
        # Steps of one training differ on shapes as much as training seeds do; the user's eye picks
        # (docs/shapes.md, twenty-first session; compare/steps.py)
        with gr.Accordion("Earlier steps: keep the one that shows your subject best", open=True,
                          visible=False, elem_id="steps-box") as ui.steps_box:
            gr.Markdown("Each method's training also kept earlier steps of its last third. Here they are "
                        "side by side, on the grid's prompts and seeds (the last block is the final LoRA, "
                        "as in the grid above), under your photos: look for the marks that make your subject "
                        "yours. Pick one to download it; Try it and the Hub push offer them too.")
            # one picture per method the job may train (the ones it did not are hidden), each shown
            # whole: a gallery would crop these tall pictures to its thumbnails' height
            with gr.Column(elem_id="steps"):
                ui.steps = [gr.Image(type="filepath", interactive=False, visible=False, buttons=["download", "fullscreen"],
                                     elem_id=f"steps-{method}") for method in METHODS]
            ui.step_choice = gr.Dropdown([], label="LoRA to download", allow_custom_value=True,
                                         elem_id="step-choice")
            ui.step_downloads = gr.File(label="Its files: diffusers / kohya .safetensors (and the trigger's "
                                        "vectors)", file_count="multiple", interactive=False,
                                        elem_id="step-downloads", buttons=[])
        with gr.Accordion("Push to the Hugging Face Hub", open=False):
            with gr.Row():
                ui.hub_method = gr.Dropdown([], label="LoRA (method, or a step it kept)", scale=1, allow_custom_value=True)
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
        res = views.job_results(settings, job)
        choice = res.methods[-1]  # the last method's final LoRA (earlier steps follow in the list)
        pictures = [gr.Image(value=path, label=caption, visible=True) for path, caption in res.steps]
        pictures += [gr.Image(value=None, visible=False)] * (len(ui.steps) - len(pictures))
        return (gr.Dropdown(choices=res.choices, value=choice), gr.Dropdown(choices=res.choices, value=choice),
                tryit.suggested_prompt(res.config), gr.Accordion(visible=bool(res.steps)), *pictures,
                gr.Dropdown(choices=res.choices, value=None), None)

    @guarded
    def on_step_choice(job, choice):
        return loras.step_files(settings, job, choice) if choice else None

    results_out = [ui.grids, ui.metrics, ui.downloads, ui.report]
    methods_out = [ui.hub_method, ui.try_method, ui.prompt, ui.steps_box, *ui.steps, ui.step_choice,
                   ui.step_downloads]
    ui.step_choice.input(on_step_choice, [ui.job_id, ui.step_choice], ui.step_downloads,
                         api_visibility="private")
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
