"""The model's own safety checker on generated previews (SD 1.x from the Hub ships one).

A model whose ``model_index.json`` lists a ``safety_checker`` (diffusers'
``StableDiffusionSafetyChecker`` with its ``feature_extractor``) has it loaded once per
Components, on first use, from the same folder or hub cache as the model. Each flagged image is
replaced by a grey one saying so; models without a checker (the shapes backbone, SDXL, Flux)
pass their images through unchanged.

    images, hidden = check_images(components, images)       # hidden: how many were replaced
    rows, hidden = check_rows(components, rows)              # images[prompt][seed]
    describe_safety(enabled=True, present=False)             # "no safety checker in this model"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

HIDDEN_TEXT = "hidden by the model's safety checker"
NO_CHECKER = "no safety checker in this model"
GREY = (128, 128, 128)
BATCH = 16  # images per checker pass (CLIP ViT-L at 224 px: small next to the denoiser)


@dataclass
class SafetyChecker:
    """The loaded checker (``model`` and ``processor`` None: the model has none)."""

    model: object = None
    processor: object = None

    @property
    def present(self) -> bool:
        return self.model is not None


def has_safety_checker(spec, local_only: bool = True) -> bool:
    """Whether ``model_index.json`` lists a safety checker (a ``[null, null]`` entry is none)."""
    from ..models.loading import model_index

    entry = (model_index(spec, local_only) or {}).get("safety_checker")
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def safety_checker(components) -> SafetyChecker:
    """The checker of ``components``' model, loaded on the first call and kept on the object."""
    if components.safety is None:
        components.safety = _load(components)
    return components.safety


def _load(components) -> SafetyChecker:
    from ..models.loading import _loader, _local_only

    spec = components.spec
    local_only = _local_only(spec)
    if not has_safety_checker(spec, local_only):
        return SafetyChecker()
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    load = _loader(spec, local_only)
    model = load(StableDiffusionSafetyChecker, "safety_checker", dtype=components.dtype)
    processor = load(CLIPImageProcessor, "feature_extractor")
    model.requires_grad_(False)
    model.eval()
    model.to(components.device)
    log.info("%s: safety checker loaded", spec.name)
    return SafetyChecker(model, processor)


def check_images(components, images: Sequence[Image.Image]) -> tuple[list[Image.Image], int]:
    """(images, hidden): each image the model's checker flags replaced by :func:`hidden_image`."""
    flags = flag_images(components, images)
    out = [hidden_image(image.size) if flag else image for image, flag in zip(images, flags)]
    return out, sum(flags)


def flag_images(components, images: Sequence[Image.Image]) -> list[bool]:
    """Which of ``images`` the model's checker flags (all False without a checker)."""
    import torch

    checker = safety_checker(components)
    if not checker.present or not images:
        return [False] * len(images)
    flags: list[bool] = []
    for start in range(0, len(images), BATCH):
        chunk = [image.convert("RGB") for image in images[start:start + BATCH]]
        pixels = checker.processor(chunk, return_tensors="pt").pixel_values
        pixels = pixels.to(components.device, checker.model.dtype)
        # The checker blacks out the arrays it is given: placeholders, the images stay ours.
        with torch.no_grad():
            _, nsfw = checker.model(clip_input=pixels, images=[np.zeros((1, 1, 3))] * len(chunk))
        flags += [bool(f) for f in nsfw]
    return flags


def check_rows(components, rows: list[list[Image.Image]]) -> tuple[list[list[Image.Image]], int]:
    """:func:`check_images` over ``images[prompt][seed]`` (what ``sample_images`` returns)."""
    flat, hidden = check_images(components, [image for row in rows for image in row])
    out, i = [], 0
    for row in rows:
        out.append(flat[i:i + len(row)])
        i += len(row)
    return out, hidden


def hidden_image(size: tuple[int, int]) -> Image.Image:
    """A neutral grey image of ``size`` saying it was hidden by the safety checker."""
    image = Image.new("RGB", size, GREY)
    draw = ImageDraw.Draw(image)
    lines, line = [], ""
    for word in HIDDEN_TEXT.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial) > size[0] - 4:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    text = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, align="center")
    draw.multiline_text(((size[0] - (right - left)) / 2, (size[1] - (bottom - top)) / 2), text,
                        fill=(240, 240, 240), align="center")
    return image


def describe_safety(enabled: bool, present: bool, hidden: dict[str, int] | None = None) -> str:
    """One line for a report: whether the checker ran and what it hid."""
    if not enabled:
        return "off (`safety_checker: false`): previews are shown as drawn"
    if not present:
        return f"on, but {NO_CHECKER}: previews are shown as drawn"
    hidden = hidden or {}
    counts = ", ".join(f"{column} {n}" for column, n in hidden.items())
    return f"on: it hid {sum(hidden.values())} preview(s)" + (f" ({counts})" if counts else "")
