"""The Pools tab: a contact sheet of a backbone pool's items nearest to a description
(``/browse_pool``); absent when the server offers no pool."""

from __future__ import annotations

import gradio as gr

from .. import browse
from .common import guarded


def layout(ui) -> None:
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


def events(ui, demo) -> None:
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
