"""Previews: prompt sets (data), sampling with fixed seeds through the base model and each LoRA, grids."""

from .prompts import PromptSet, available_prompt_sets, default_prompt_set, load_prompt_set
from .sample import comparison_grid, sample_images

__all__ = ["PromptSet", "available_prompt_sets", "comparison_grid", "default_prompt_set", "load_prompt_set",
           "sample_images"]
