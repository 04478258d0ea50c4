"""Loading backbones: presets (data), local diffusers folders and hub ids, the offline tokenizer."""

from .loading import Components, build_pipeline, load_components, pick_device, pick_dtype
from .presets import ModelSpec, default_preset, presets, resolve_model
from .tokenizer import offline_clip_tokenizer

__all__ = [
    "Components", "ModelSpec", "build_pipeline", "default_preset", "load_components",
    "offline_clip_tokenizer", "pick_device", "pick_dtype", "presets", "resolve_model",
]
