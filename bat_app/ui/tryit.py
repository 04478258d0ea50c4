"""Try it: any prompt through a finished LoRA next to the base model, same seed; push to the Hub.

    base, lora = try_prompt(settings, job_id, "albat", "a sks star on a blue background", seed=3)
    base, lora = try_prompt(settings, job_id, "albat", "a sks star", strength=0.8, guidance=6)
    url = push_job_to_hub(settings, job_id, "albat", "me/sks-star", token)
"""

from __future__ import annotations

import threading
from functools import lru_cache

from PIL import Image

from ..errors import InputError
from ..limits import GUIDANCE_MAX, GUIDANCE_MIN, STRENGTH_MAX, STRENGTH_MIN, check_range
from .loras import OUT, finished_job, lora_dir, lora_in, split_choice
from .settings import AppSettings

# One sampling at a time: loading a LoRA changes the shared UNet's modules in place.
_LOCK = threading.Lock()
SHOW = 256  # small backbones (shapes: 32 px) are shown enlarged


@lru_cache(maxsize=1)
def _components(model: str):
    from ..models import load_components

    return load_components(model)


def try_prompt(settings: AppSettings, job_id: str, method: str, prompt: str, seed: int | float | None = 0,
               strength: float = 1.0, guidance: float | None = None) -> tuple[Image.Image, Image.Image]:
    """(base image, LoRA image) for ``prompt`` with the same seed, i.e. the same initial noise;
    through the model's safety checker when the operator's setting has it on (and the model has one).
    ``strength`` scales the LoRA (the weight A1111/ComfyUI users set); ``guidance`` is the CFG
    scale of both images (None: the model's preset)."""
    from ..preview import sample_images
    from ..preview.safety import check_images

    if not (prompt or "").strip():
        raise InputError("The prompt is empty: write one, and include the trigger (e.g. 'a sks dog on the beach').")
    folder, config = lora_dir(settings, job_id, method)
    seed = int(seed or 0)
    if seed < 0:
        raise InputError(f"The seed must be 0 or more, got {seed}.")
    check_range("LoRA strength", strength, STRENGTH_MIN, STRENGTH_MAX, integer=False)
    if guidance is not None:
        check_range("guidance (CFG scale)", guidance, GUIDANCE_MIN, GUIDANCE_MAX, integer=False)
    with _LOCK:
        components = _components(config["model"])
        base = sample_images(components, [prompt], [seed], guidance_scale=guidance)[0][0]
        tuned = sample_images(components, [prompt], [seed], folder, lora_scale=strength,
                              guidance_scale=guidance)[0][0]
        if settings.safety_checker:
            (base, tuned), _ = check_images(components, [base, tuned])
    return _enlarge(base), _enlarge(tuned)


def suggested_prompt(config: dict) -> str:
    return f"a {config.get('token', 'sks')} {config.get('class_noun', 'object')} on a blue background"


def _enlarge(image: Image.Image) -> Image.Image:
    if image.width >= SHOW:
        return image
    factor = max(1, SHOW // image.width)
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def push_job_to_hub(settings: AppSettings, job_id: str, method: str, repo_id: str, token: str,
                    private: bool = True) -> str:
    """Push one LoRA of a finished job (``method``: "albat", or an earlier step it kept,
    "albat@250"), with its preview samples in the model card."""
    from ..export.hub import push_lora

    job, config = finished_job(settings, job_id)
    folder = lora_in(job, config, job_id, method)
    name, step = split_choice(method)
    out = job / OUT
    previews = (out / "previews" / "samples" / name if step is None
                else out / "previews" / "steps" / name / f"step-{step:06d}")
    return push_lora(folder, repo_id, token, samples=sorted(previews.glob("*.png"))[:8], private=bool(private))


