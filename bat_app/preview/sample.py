"""Sampling previews: the same prompts and seeds through the base model and each trained LoRA."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from ..export import DIFFUSERS_FILE
from ..export.embeddings import find_embeddings, load_embedding_state
from ..images.grid import image_grid
from ..models import Components, build_pipeline
from ..models.fingerprint import model_fingerprint


def sample_images(components: Components, prompts: Sequence[str], seeds: Sequence[int],
                  lora_dir: str | Path | None = None, batch_size: int | None = None,
                  progress: Callable[[int, int], None] | None = None, lora_scale: float = 1.0,
                  guidance_scale: float | None = None, lora_start: float = 0.0) -> list[list[Image.Image]]:
    """images[p][s] for prompt p and seed s; with ``lora_dir`` its diffusers LoRA is applied.

    Seed s always draws the same initial noise, so columns of a grid differ only by the weights.
    ``lora_scale`` is the LoRA's strength (the weight A1111 and ComfyUI users set; the trigger's
    embeddings are not scaled); ``guidance_scale`` overrides the preset's CFG scale.
    ``lora_start`` (0-1) is the share of the sampling steps the denoiser runs without its LoRA
    (ComfyUI's LoRA hook keyframes): the first, noisiest steps lay out the picture, the base
    model's way, and the LoRA draws the subject into it from then on.
    """
    pipe = build_pipeline(components)
    sampling = components.spec.sampling
    batch_size = batch_size or components.spec.sample_batch
    resolution = components.spec.resolution
    embedding = find_embeddings(lora_dir) if lora_dir is not None else None
    if lora_dir is not None:
        from diffusers.utils import logging as diffusers_logging

        # A UNet-only LoRA makes diffusers warn that the text encoder got no keys: expected here.
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            # low_cpu_mem_usage (diffusers' default) injects the adapter inside peft's
            # init_empty_weights, which patches nn.Module.register_parameter for the whole
            # process: a module another thread (a compare run's other lane) creates meanwhile
            # gets meta weights, e.g. the embedding unload_textual_inversion builds ("set_data:
            # incompatible tensor type", seen once in ~12 two-lane test runs). Small LoRAs gain
            # nothing from it.
            pipe.load_lora_weights(str(lora_dir), weight_name=DIFFUSERS_FILE, low_cpu_mem_usage=False)
            if embedding is not None:  # pivotal tuning: the trigger's own vectors, as users load them
                load_trigger_embeddings(components, pipe, *embedding)
        finally:
            diffusers_logging.set_verbosity(level)
    scale_kwargs = lora_scale_kwargs(pipe, lora_scale) if lora_dir is not None and lora_scale != 1.0 else {}
    steps = sampling.get("steps", 30)
    start_step = round(lora_start * steps) if lora_dir is not None else 0
    if start_step:
        scale_kwargs["callback_on_step_end"] = lora_from_step(components, start_step)
    jobs = [(p, s) for p in range(len(prompts)) for s in range(len(seeds))]
    out: list[list[Image.Image | None]] = [[None] * len(seeds) for _ in prompts]
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            if start_step:
                components.denoiser.disable_adapters()  # the callback turns it on at start_step
            with torch.no_grad():
                images = pipe([prompts[p] for p, _ in chunk], height=resolution, width=resolution,
                              num_inference_steps=steps,
                              guidance_scale=guidance_scale or sampling.get("guidance_scale", 7.5),
                              **scale_kwargs,
                              generator=[torch.Generator().manual_seed(seeds[s]) for _, s in chunk]).images
            for (p, s), image in zip(chunk, images):
                out[p][s] = image
            if progress:
                progress(start + len(chunk), len(jobs))
    finally:
        if lora_dir is not None:
            if start_step:
                components.denoiser.enable_adapters()
            pipe.unload_lora_weights()
        if embedding is not None:
            unload_trigger_embeddings(components, pipe)
    return out


def lora_scale_kwargs(pipe, scale: float) -> dict:
    """The pipeline argument that scales the PEFT LoRA layers for one call: SD and SDXL take
    ``cross_attention_kwargs``, Flux ``joint_attention_kwargs``."""
    name = "joint_attention_kwargs" if "joint_attention_kwargs" in inspect.signature(pipe.__call__).parameters \
        else "cross_attention_kwargs"
    return {name: {"scale": float(scale)}}


def lora_from_step(components: Components, start_step: int) -> Callable:
    """A ``callback_on_step_end`` that turns the denoiser's LoRA on after ``start_step`` steps
    (the pipeline calls it after each step, with that step's index)."""
    def callback(pipe, index: int, timestep, kwargs: dict) -> dict:
        if index + 1 == start_step:
            components.denoiser.enable_adapters()
        return kwargs

    return callback


def load_trigger_embeddings(components: Components, pipe, path: Path, token: str) -> None:
    """Load pivotal tuning's ``<trigger>.safetensors`` into ``pipe``: each of the file's tensors
    (SD's ``emb_params``; SDXL's ``clip_l`` and ``clip_g``) into its own text encoder and tokenizer."""
    state = load_embedding_state(path)
    for index, key in components.family.pivotal_embedding_keys:
        pipe.load_textual_inversion(state[key], token=token, text_encoder=components.text_encoders[index],
                                    tokenizer=components.tokenizers[index])


def unload_trigger_embeddings(components: Components, pipe) -> None:
    for index, _ in components.family.pivotal_embedding_keys:
        pipe.unload_textual_inversion(tokenizer=components.tokenizers[index],
                                      text_encoder=components.text_encoders[index])


def backbone_sampler(components: Components, steps: int | None = None, safety_checker: bool = True):
    """(sampler, model_key): ``sampler(captions, seeds) -> images`` draws from the backbone as it
    is (no LoRA) with the preset's sampling settings; ``model_key`` names those settings and the
    weights (a generated pool's cache key). What ``pool generate`` and a job's generated pool use.

    With ``safety_checker`` on and a model that has one, the sampler returns ``(images, flags)``:
    flagged images grey (:mod:`bat_app.preview.safety`), their flags the pool's ``unsafe`` scores."""
    from .safety import flag_images, has_safety_checker, hidden_image

    spec = components.spec
    pipe = build_pipeline(components)
    sampling = spec.training_sampling()  # its samples become training data (a generated pool)
    steps = steps or sampling.get("steps", 30)
    guidance = sampling.get("guidance_scale", 7.5)
    check = safety_checker and has_safety_checker(spec)

    def sampler(captions, seeds):
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        with torch.no_grad():
            images = pipe(list(captions), height=spec.resolution, width=spec.resolution, num_inference_steps=steps,
                          guidance_scale=guidance, generator=generators).images
        if not check:
            return images
        flags = flag_images(components, images)
        return [hidden_image(im.size) if flag else im for im, flag in zip(images, flags)], flags

    settings = {"model": str(spec.source), "weights": model_fingerprint(components), "resolution": spec.resolution,
                "steps": steps, "guidance": guidance}
    if check:  # checked samples are other files than unchecked ones
        settings["safety"] = "checked"
    return sampler, json.dumps(settings, sort_keys=True)


def comparison_grid(columns: dict[str, list[list[Image.Image]]], prompts: Sequence[str], cell: int = 96) -> Image.Image:
    """Rows = prompts, columns = methods (labelled); a cell shows every seed side by side."""
    methods = list(columns)
    n_seeds = len(next(iter(columns.values()))[0]) if columns else 1
    strips = []
    for p in range(len(prompts)):
        for method in methods:
            strips.append(image_grid(columns[method][p], columns=n_seeds, cell=cell, pad=1))
    strip_size = strips[0].size if strips else (cell, cell)
    return image_grid(strips, columns=len(methods), cell=strip_size, column_titles=methods,
                      row_titles=list(prompts), title_width=220, pad=6) if strips else Image.new("RGB", (1, 1))

