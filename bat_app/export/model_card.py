"""The README.md model card written next to the LoRA files (also the Hub repo's card), and the
one place that says which base model a LoRA was trained on.

A card, the kohya metadata and a Hub push name the real model (``sd15`` is
``stable-diffusion-v1-5/stable-diffusion-v1-5``), with its revision when it is known:

    >>> base = base_model_of("sd15")
    >>> base.hub_id
    'stable-diffusion-v1-5/stable-diffusion-v1-5'
    >>> base_model_of("someone/model", revision="abc123").pretrained_args()
    "'someone/model', revision='abc123'"
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BatError
from .embeddings import embeddings_file_name
from ..train.config import TrainConfig

# A model folder inside the Hugging Face cache: .../models--org--name/snapshots/<commit>
_HUB_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})")


@dataclass(frozen=True)
class BaseModel:
    """The backbone a LoRA belongs to."""

    name: str                    # what the user chose: preset, folder or hub id
    hub_id: str | None = None    # the model on the Hub (None: a local folder only)
    revision: str | None = None  # the Hub commit, when known
    folder: str | None = None    # the local folder it was loaded from, if any
    license: str | None = None   # the base model's licence (Hub id), when known
    guidance: float | None = None  # a preset's CFG scale: what its previews draw with

    @property
    def id(self) -> str:
        """The name files record: the hub id, else what the user chose (a preset or a folder)."""
        return self.hub_id or self.name

    def metadata(self) -> dict[str, str]:
        """The kohya file's metadata keys for the base model (A1111 shows ``ss_sd_model_name``)."""
        return {"ss_sd_model_name": self.id, "bat_base_model": self.id,
                **({"bat_base_revision": self.revision} if self.revision else {})}

    @property
    def ref(self) -> str:
        """What to pass to ``from_pretrained``: the hub id, else the folder, else the name."""
        return self.hub_id or self.folder or self.name

    def pretrained_args(self) -> str:
        """The arguments of ``from_pretrained(...)`` in the card's usage snippet."""
        return repr(self.ref) + (f", revision={self.revision!r}" if self.hub_id and self.revision else "")


def base_model_of(model, revision: str | None = None) -> BaseModel:
    """The :class:`BaseModel` of a ModelSpec, a preset name, a hub id or a folder.

    Training logs keep only a string; a preset name in an older log still resolves to its model.
    """
    from ..models.presets import ModelSpec, resolve_model

    if isinstance(model, BaseModel):
        return model
    if not isinstance(model, ModelSpec):
        try:
            model = resolve_model(str(model))
        except BatError:  # a folder that is gone: keep its name
            return BaseModel(str(model), revision=revision)
    revision = revision or getattr(model, "revision", None)
    guidance = model.sampling.get("guidance_scale") if model.preset else None
    if not model.is_local:
        return BaseModel(model.name, str(model.source), revision or _cached_revision(str(model.source)),
                         license=model.license, guidance=guidance)
    snapshot = _HUB_SNAPSHOT.search(Path(model.source).as_posix())
    if snapshot:
        return BaseModel(model.name, f"{snapshot['org']}/{snapshot['name']}", revision or snapshot["revision"],
                         folder=str(model.source), license=model.license, guidance=guidance)
    return BaseModel(model.name, folder=str(model.source), license=model.license, guidance=guidance)


def _cached_revision(hub_id: str) -> str | None:
    """The commit of the snapshot in the local Hugging Face cache (never asks the Hub)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_id, "model_index.json")
    found = _HUB_SNAPSHOT.search(Path(path).as_posix()) if isinstance(path, str) else None
    return found["revision"] if found else None


def model_card(config: TrainConfig, base_model, kohya_name: str, method: str = "dreambooth-lora",
               samples: list[str] | None = None, extra: dict | None = None,
               pipeline: str = "StableDiffusionPipeline") -> str:
    """Markdown with Hub front matter: base model, trigger, usage in diffusers/A1111/ComfyUI, settings.

    ``base_model``: a :class:`BaseModel`, or anything :func:`base_model_of` takes. ``pipeline``:
    the diffusers pipeline class of the model's family (the usage snippet loads with it). The
    card's licence is the base model's (a LoRA is a derivative of it), "other" when unknown.
    """
    base = base_model_of(base_model)
    trigger = config.prompt
    front = ["---", "library_name: diffusers", f"license: {base.license or 'other'}",
             "tags:", "- text-to-image", "- diffusers", "- lora", "- dreambooth", "- bat-studio", f"- {method}"]
    if base.hub_id:  # the Hub links the card to its base model; a local folder has no such page
        front += [f"base_model: {base.hub_id}", "base_model_relation: adapter"]
    front += [f"instance_prompt: {json.dumps(trigger)}", "---", ""]
    settings = {k: v for k, v in config.to_dict().items() if v is not None}
    settings.update(extra or {})
    if base.hub_id:
        made_for = f"**{base.hub_id}**" + (f" (revision `{base.revision}`)" if base.revision else "")
    else:
        made_for = f"the local model **{base.name}** (`{base.ref}`)"
    lines = [
        f"# {config.token} {config.class_noun} — LoRA made with BAT Studio", "",
        f"A DreamBooth-LoRA (method: `{method}`) of one subject, for {made_for}.", "",
        f"**Trigger:** put `{config.token} {config.class_noun}` in the prompt, e.g. `{trigger}`.", "",
    ]
    if config.captions:
        half = {"half": " (each photo also with the plain trigger prompt)",
                "third": " (each photo also twice with the plain trigger prompt)"}.get(config.caption_mix, "")
        lines += [f"**Captions:** trained on a caption per photo{half}; words like the captions' (a place, a "
                  f"background, a position) after `{trigger}` steer the scene.", ""]
    if base.license:
        lines += [f"**Licence:** the base model's licence (`{base.license}`) applies to this LoRA and to what "
                  "you make with it.", ""]
    if samples:
        lines += ["## Samples", ""] + [f"![sample]({s})" for s in samples] + [""]
    # Pivotal tuning: the trigger has its own trained vectors in <trigger>.safetensors; every
    # tool below needs them as well as the LoRA (without them the trigger is an untrained word).
    emb = embeddings_file_name(config.token) if config.pivotal else None
    if emb:
        lines += [f"**Pivotal tuning:** `{config.token}` has {config.pivotal_vectors} trained embedding vectors in "
                  f"`{emb}`; load them with the LoRA (below).", ""]
    lines += [
        "## Use it", "",
        "### diffusers", "", "```python",
        "import torch",
        f"from diffusers import {pipeline}",
        f"pipe = {pipeline}.from_pretrained({base.pretrained_args()})",
        "pipe.load_lora_weights('.', weight_name='pytorch_lora_weights.safetensors')",
        *(_load_embeddings_lines(emb, config.token, pipeline) if emb else []),
        f"image = pipe({(trigger + ' on the beach')!r}"
        + (f", guidance_scale={base.guidance:g}).images[0]  # the previews' guidance" if base.guidance else
           ").images[0]"),
        "```", "",
        "### AUTOMATIC1111 / Forge",
        f"Copy `{kohya_name}` into `models/Lora/` and add "
        f"`<lora:{Path(kohya_name).stem}:1>` to a prompt that contains `{config.token} {config.class_noun}`."
        + (f" Copy `{emb}` into `embeddings/`: its file name is the trigger word `{config.token}`." if emb else ""),
        "",
        "### ComfyUI",
        f"Copy `{kohya_name}` into `models/loras/`, add a *LoraLoader* node between the checkpoint "
        "loader and the sampler, and use the trigger in the prompt."
        + (f" Copy `{emb}` into `models/embeddings/` and write `embedding:{Path(emb).stem}` where the "
           "trigger goes." if emb else ""),
        "",
        "## Training settings", "", "| setting | value |", "|---|---|",
    ]
    lines += [f"| {k} | {_cell(v)} |" for k, v in sorted(settings.items())]
    return "\n".join(front + lines) + "\n"


def _cell(value) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("|", "\\|")


def _load_embeddings_lines(emb: str, token: str, pipeline: str) -> list[str]:
    """diffusers lines that load the trigger's vectors: one file (SD), or SDXL's ``clip_l`` and
    ``clip_g``, one per text encoder."""
    if not pipeline.startswith("StableDiffusionXL"):
        return [f"pipe.load_textual_inversion({emb!r}, token={token!r})  # the trigger's own vectors"]
    return ["from safetensors.torch import load_file",
            f"state = load_file({emb!r})  # the trigger's own vectors, one per text encoder",
            f"pipe.load_textual_inversion(state['clip_l'], token={token!r}, text_encoder=pipe.text_encoder, "
            "tokenizer=pipe.tokenizer)",
            f"pipe.load_textual_inversion(state['clip_g'], token={token!r}, text_encoder=pipe.text_encoder_2, "
            "tokenizer=pipe.tokenizer_2)"]
