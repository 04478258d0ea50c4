"""Model families (SD 1.x/2.x, ...): what differs between them, behind :class:`Family`.

    family = family_for_pipeline("StableDiffusionPipeline")   # from model_index.json
    family = get_family("sd")                                 # by name (presets.json `family`)
"""

from __future__ import annotations

from ...errors import ModelLoadError
from .base import Cond, Family, Part, cat_cond, cond_to, stack_cond, unbatch_cond
from .flux import Flux
from .sd import StableDiffusion
from .sdxl import StableDiffusionXL

FAMILIES: dict[str, Family] = {f.name: f for f in (StableDiffusion(), StableDiffusionXL(), Flux())}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ModelLoadError(f"Unknown model family {name!r}; BAT Studio knows {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def family_for_pipeline(class_name: str | None) -> Family | None:
    """The family that loads a diffusers ``_class_name`` (None if no family does)."""
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            return family
    return None


def supported_pipelines() -> list[str]:
    return sorted(c for f in FAMILIES.values() for c in f.pipeline_classes)


__all__ = ["FAMILIES", "Cond", "Family", "Part", "cat_cond", "cond_to", "family_for_pipeline", "get_family",
           "stack_cond", "supported_pipelines", "unbatch_cond"]
