"""The Train tab: photos (or an example), trigger and class, model and pool, methods, advanced
settings that follow the number of photos, and Start (the ``/submit`` endpoint)."""

from __future__ import annotations

import gradio as gr

from ...limits import Limits, bounds
from ...models.presets import presets
from .. import handlers, served, views
from ..captions import caption_count_note, suggest_captions
from ..defaults import suggested_settings
from ..model_note import model_note
from ..public import client_id, scrub
from .common import guarded

ADVANCED = ("steps", "rank", "lr", "resolution", "seed", "k", "m", "aug_weight", "pivotal", "prior",
            "num_class_images", "step_choices")


def _preset_of(model: str | None) -> str | None:
    return model if model in presets() else None


def _limit_info(key: str, limits: Limits, model: str | None = None) -> str:
    lo, hi = bounds(key, limits, model)
    return f"{lo:g}–{hi:,g}" if isinstance(hi, float) else f"{lo:,}–{hi:,}"


def layout(ui) -> None:
    form, examples, limits = ui.form, ui.examples, ui.limits
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column(scale=3):
                ui.images = gr.Gallery(label="Subject photos (3–10): drop them here", interactive=True,
                                       file_types=["image"], type="filepath", columns=5, height=260,
                                       elem_id="uploads")
                ui.notes = gr.Markdown(elem_classes="bat-note")
                # (the label must not contain "prompt": the Try-it box is found by that label)
                ui.captions = gr.Textbox(
                    label="Captions (optional): one line per photo, in the gallery's order", lines=3,
                    max_lines=10, elem_id="captions",
                    placeholder="on the beach\nat the bottom on a blue background\n(an empty line: none)",
                    info="say what differs from photo to photo (place, background, position) so the LoRA "
                         "learns the subject, not its surroundings; a line without the trigger continues "
                         "'a photo of <trigger> <class>'")
                # the model's CLIP names each photo's background; the user checks the lines
                # (docs/shapes.md, twenty-third session: a suggestion, not a default)
                ui.suggest_captions = gr.Button("Suggest backgrounds", size="sm", elem_id="suggest-captions")
                if examples:
                    with gr.Row():
                        ui.example = gr.Dropdown([e.name for e in examples], value=examples[0].name,
                                                 label="Or start from an example subject", scale=3)
                        # off by default: on the shapes examples the captions raised prompt
                        # following but cost the trait (docs/shapes.md, fifteenth session)
                        ui.example_captions = gr.Checkbox(False, label="with its captions", scale=1,
                                                          info="one line per photo: where it is, on what")
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
            with gr.Row():
                step_choices = gr.Number(adv["step_choices"], label="earlier steps to choose from", precision=0,
                                         info="steps of the last third also kept and drawn side by side in "
                                              "Results, to keep the one that shows your subject best (0: only "
                                              "the final LoRA); " + info("step_choices"))
        ui.advanced = [steps, rank, lr, resolution, seed, k, m, aug_weight, pivotal, prior,
                       class_images, step_choices]  # in ADVANCED's order
        ui.start = gr.Button("Start", variant="primary", elem_id="start")
        ui.start_info = gr.Markdown(elem_id="start-info")


def events(ui, demo) -> None:
    settings = ui.settings

    def on_images(value, model_name, captions=None):
        paths = handlers.image_paths(value)
        lines = handlers.check_uploads(paths) + caption_count_note(captions, len(paths))
        for line in lines:
            gr.Warning(line)
        d = suggested_settings(len(paths), _preset_of(model_name))
        note = (f"{len(paths)} photo(s). " if paths else "") + " ".join(lines)
        return [note, *[d[key] for key in ADVANCED]]

    ui.images.change(on_images, [ui.images, ui.model, ui.captions], [ui.notes, *ui.advanced],
                     api_visibility="private")

    def on_model(model_name, value):
        choices = handlers.pool_choices(settings, model_name)
        d = suggested_settings(len(handlers.image_paths(value)), _preset_of(model_name))
        return [gr.Dropdown(choices=choices, value=handlers.default_pool(settings, model_name)),
                model_note(model_name), *[d[key] for key in ADVANCED]]

    ui.model.change(on_model, [ui.model, ui.images], [ui.pool, ui.model_info, *ui.advanced],
                    api_visibility="private")

    @guarded
    def on_suggest(value, model_name, noun):
        text = suggest_captions(handlers.image_paths(value), _preset_of(model_name), noun)
        gr.Info("Each photo's background as the model's CLIP names it: check every line before Start.")
        return text

    ui.suggest_captions.click(on_suggest, [ui.images, ui.model, ui.class_noun], ui.captions, api_visibility="private")

    if ui.examples:
        @guarded
        def on_example(name, with_captions, model_name):
            # the same note and photo-count defaults as an upload (Gallery.change does not
            # fire for values an event sets)
            ex = handlers.get_example(settings.subjects_dir, name)
            paths = served.publish_example(ex.name, ex.images)
            captions = "\n".join(ex.captions) if with_captions and any(ex.captions) else ""
            return [paths, ex.class_noun, captions, *on_images(paths, model_name)]

        ui.use_example.click(on_example, [ui.example, ui.example_captions, ui.model],
                             [ui.images, ui.class_noun, ui.captions, ui.notes, *ui.advanced],
                             api_visibility="private")

    @guarded
    def on_start(value, token_, noun, model_, pool_, methods_, steps_, rank_, lr_, resolution_, seed_, k_, m_,
                 aug_weight_, pivotal_=None, prior_=None, class_images_=None, captions_=None, step_choices_=None,
                 request: gr.Request = None):
        adv_values = (steps_, rank_, lr_, resolution_, seed_, k_, m_, aug_weight_, pivotal_, prior_, class_images_,
                      step_choices_)
        job = handlers.start_job(settings, value, client=client_id(request, settings.proxy_hops), token=token_,
                                 class_noun=noun, model=model_, pool=pool_, methods=methods_, captions=captions_,
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

    # the newer inputs last (captions, then the step choices): API clients that send an older
    # argument list still work
    ui.start.click(on_start, [ui.images, ui.token, ui.class_noun, ui.model, ui.pool, ui.methods, *ui.advanced[:-1],
                              ui.captions, ui.advanced[-1]],
                   [ui.job_id, ui.start_info], api_name="submit").success(
        follow, [ui.job_id, ui.history], [ui.watching, ui.remembered, ui.history, ui.timer, ui.tabs, ui.gallery_key],
        api_visibility="private")
