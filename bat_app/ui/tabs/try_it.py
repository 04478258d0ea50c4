"""The Try it tab: one prompt and seed, drawn by the base model and with a job's LoRA (``/try``)."""

from __future__ import annotations

import gradio as gr

from ...limits import GUIDANCE_MAX, GUIDANCE_MIN, SEED_MAX, STRENGTH_MAX, STRENGTH_MIN, check_range, check_text, env_name
from .. import tryit
from .common import guarded


def layout(ui) -> None:
    with gr.Tab("Try it", id="try"):
        with gr.Row():
            ui.try_method = gr.Dropdown([], label="LoRA (method, or a step it kept)", scale=1, allow_custom_value=True)
            ui.prompt = gr.Textbox(label="Prompt", placeholder="a sks dog on the beach", scale=3)
            ui.try_seed = gr.Number(0, label="seed", precision=0, scale=1)
        with gr.Row():
            ui.try_strength = gr.Slider(STRENGTH_MIN, STRENGTH_MAX, value=1.0, step=0.05, label="LoRA strength",
                                        info="1 as trained; lower it if the subject overrides your prompt")
            # 0, not empty, for the default: an API client may then leave both new inputs out
            ui.try_guidance = gr.Number(0, label="guidance (CFG scale)", minimum=0, maximum=GUIDANCE_MAX,
                                        info=f"0: the model's default; else {GUIDANCE_MIN:g} to {GUIDANCE_MAX:g}")
        ui.generate = gr.Button("Generate", variant="primary")
        with gr.Row():
            ui.base_image = gr.Image(label="base model", type="pil", interactive=False, elem_id="try-base")
            ui.lora_image = gr.Image(label="with the LoRA", type="pil", interactive=False, elem_id="try-lora")


def events(ui, demo) -> None:
    settings, limits = ui.settings, ui.limits

    @guarded
    def on_generate(job, method, text, seed_value, strength, guidance):
        check_text("The prompt", text or "", limits.prompt_chars, env_name("prompt_chars"))
        check_range("seed", 0 if seed_value is None else seed_value, 0, SEED_MAX)
        return tryit.try_prompt(settings, job, method, text, seed_value,
                                1.0 if strength is None else float(strength), guidance or None)

    ui.generate.click(on_generate, [ui.job_id, ui.try_method, ui.prompt, ui.try_seed, ui.try_strength,
                                    ui.try_guidance],
                      [ui.base_image, ui.lora_image], api_name="try", concurrency_limit=1)
