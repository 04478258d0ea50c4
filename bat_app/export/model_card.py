"""The README.md model card written next to the LoRA files (also the Hub repo's card)."""

from __future__ import annotations

import json
from pathlib import Path

from ..train.config import TrainConfig


def model_card(config: TrainConfig, base_model: str, kohya_name: str, method: str = "dreambooth-lora",
               samples: list[str] | None = None, extra: dict | None = None) -> str:
    """Markdown with Hub front matter: base model, trigger, usage in diffusers/A1111/ComfyUI, settings."""
    trigger = config.prompt
    hub_base = base_model if base_model.count("/") == 1 and not Path(base_model).exists() else None
    front = ["---", "library_name: diffusers", "license: other",
             "tags:", "- text-to-image", "- diffusers", "- lora", "- dreambooth", "- bat-studio", f"- {method}"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += [f"instance_prompt: {json.dumps(trigger)}", "---", ""]
    settings = {k: v for k, v in config.to_dict().items() if v is not None}
    settings.update(extra or {})
    lines = [
        f"# {config.token} {config.class_noun} — LoRA made with BAT Studio", "",
        f"A DreamBooth-LoRA (method: `{method}`) of one subject, for **{base_model}**.", "",
        f"**Trigger:** put `{config.token} {config.class_noun}` in the prompt, e.g. `{trigger}`.", "",
    ]
    if samples:
        lines += ["## Samples", ""] + [f"![sample]({s})" for s in samples] + [""]
    lines += [
        "## Use it", "",
        "### diffusers", "", "```python",
        "import torch",
        "from diffusers import StableDiffusionPipeline",
        f"pipe = StableDiffusionPipeline.from_pretrained({base_model!r})",
        "pipe.load_lora_weights('.', weight_name='pytorch_lora_weights.safetensors')",
        f"image = pipe({(trigger + ' on the beach')!r}).images[0]",
        "```", "",
        "### AUTOMATIC1111 / Forge",
        f"Copy `{kohya_name}` into `models/Lora/` and add "
        f"`<lora:{Path(kohya_name).stem}:1>` to a prompt that contains `{config.token} {config.class_noun}`.", "",
        "### ComfyUI",
        f"Copy `{kohya_name}` into `models/loras/`, add a *LoraLoader* node between the checkpoint "
        "loader and the sampler, and use the trigger in the prompt.", "",
        "## Training settings", "", "| setting | value |", "|---|---|",
    ]
    lines += [f"| {k} | {_cell(v)} |" for k, v in sorted(settings.items())]
    return "\n".join(front + lines) + "\n"


def _cell(value) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("|", "\\|")
