"""What differs between model families, behind one small interface.

The trainer, ALBAT's score, the previews and the exports call a :class:`Family` and never
branch on which one it is:

    family = components.family
    ids = family.tokenize(components, captions)          # one id tensor per text encoder
    cond = family.encode(components, ids)                # {"hidden": ..., "pooled": ..., ...}
    loss = family.loss(components, latents, cond, noise, timesteps)   # (batch,) fp32
    pipe = family.pipeline(components)                   # diffusers' own sampling pipeline

Conditioning is a dict of batch-first tensors, so caching, stacking and concatenating it is
the same for every family (:func:`stack_cond`, :func:`cat_cond`). Timesteps are integers in
``[0, num_timesteps)`` for every family: ALBAT's stratified draws need not know whether a
family regresses noise, velocity or a flow (a flow-matching family maps them to sigmas).

Adding a family is one module with a subclass and one line in ``families/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import torch

Cond = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Part:
    """One component a family loads: the Components attribute, the class, its subfolder."""

    attr: str            # "denoiser", "vae", "text_encoder", "text_encoder_2", "tokenizer", ...
    cls: type
    subfolder: str
    weights: bool = True  # a module with weights (dtype, device, frozen) vs a tokenizer/scheduler
    kwargs: tuple = ()    # extra from_pretrained keyword arguments, as (name, value) pairs


class Family:
    """The interface; each family overrides what it does differently."""

    name: ClassVar[str]
    display_name: ClassVar[str]                    # in messages: "SD 1.x/2.x", "SDXL", "Flux"
    pipeline_classes: ClassVar[frozenset[str]]   # model_index.json `_class_name`s it loads
    kohya_version: ClassVar[str]                  # ss_base_model_version in kohya metadata
    lora_targets: ClassVar[tuple[str, ...]]       # default LoRA target modules of the denoiser
    text_encoder_lora_targets: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "out_proj")
    supports_pivotal: ClassVar[bool] = True       # pivotal tuning (train/pivotal.py) works on this family
    # Which text encoders (indices into ``Components.text_encoders``) a text-encoder LoRA goes on;
    # in the trainer's one ``te_lora`` dict, encoder i > 0 has its keys prefixed (``te_lora_prefix``).
    text_encoder_lora_indices: ClassVar[tuple[int, ...]] = (0,)
    # Pivotal tuning: (text encoder index, key in the ``<trigger>.safetensors`` embeddings file)
    # per encoder that gets the trigger's own vectors (SD: ``emb_params``; SDXL: ``clip_l``, ``clip_g``).
    pivotal_embedding_keys: ClassVar[tuple[tuple[int, str], ...]] = ((0, "emb_params"),)
    # Aspect-ratio buckets (bat_app/images/buckets.py): the trainer encodes each image at the
    # bucket closest to its shape instead of a centre-cropped square, and adds what
    # ``placement_cond`` returns to that example's conditioning. Off: the square crop.
    uses_buckets: ClassVar[bool] = False

    # --- loading ----------------------------------------------------------------------
    def parts(self) -> tuple[Part, ...]:
        raise NotImplementedError

    def scheduler_class(self):
        """The training noise scheduler's class (its config is read from ``scheduler/``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler

    def required_subfolders(self) -> tuple[str, ...]:
        return tuple(p.subfolder for p in self.parts() if p.weights) + ("scheduler",)

    def finish_loading(self, loaded: dict, spec, load_tokenizer: Callable) -> dict:
        """Turn the loaded parts into Components fields: tokenizers, text_encoders, ..."""
        raise NotImplementedError

    # --- text -------------------------------------------------------------------------
    def tokenize(self, components, captions: Sequence[str]) -> list[torch.Tensor]:
        """Token ids per text encoder, padded to each tokenizer's length."""
        return [tok(list(captions), padding="max_length", max_length=tok.model_max_length,
                    truncation=True, return_tensors="pt").input_ids for tok in components.tokenizers]

    def encode(self, components, ids: Sequence[torch.Tensor]) -> Cond:
        raise NotImplementedError

    # --- latents and the objective ------------------------------------------------------
    def vae_scale_factor(self, components) -> int:
        """Image pixels per latent pixel (8 for SD, SDXL and Flux; 2 for the tiny test VAEs)."""
        return 2 ** (len(components.vae.config.block_out_channels) - 1)

    def bucket_step(self, components) -> int:
        """Bucket sides are multiples of this many pixels: 8 latent pixels (kohya's 64 px at a VAE
        factor of 8), which also keeps Flux's 2x2 packing and the UNets' down-sampling whole."""
        return 8 * self.vae_scale_factor(components)

    def placement_cond(self, placement) -> Cond:
        """Per-example conditioning from where a bucketed image came from (a
        :class:`~bat_app.images.buckets.Placement`): nothing by default; SDXL's time ids."""
        return {}

    def scale_latents(self, components, latents: torch.Tensor) -> torch.Tensor:
        """A VAE sample -> what the denoiser is trained on (SD: times the scaling factor)."""
        config = components.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return (latents - shift) * config.scaling_factor

    def num_timesteps(self, components) -> int:
        return int(components.noise_scheduler.config.num_train_timesteps)

    def loss(self, components, latents: torch.Tensor, cond: Cond, noise: torch.Tensor,
             timesteps: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss per batch item (fp32), at integer ``timesteps``; with ``weight``
        (b, 1, h, w) on the latent grid, each item's weighted mean (:func:`weighted_mean`)."""
        raise NotImplementedError

    # --- sampling and export ------------------------------------------------------------
    def pipeline(self, components, scheduler=None):
        raise NotImplementedError

    def pipeline_class(self):
        """The diffusers pipeline whose ``save_lora_weights``/``load_lora_weights`` we use."""
        raise NotImplementedError

    def save_lora(self, out_dir: Path, denoiser_lora: dict, te_lora: dict, rank: int, alpha: float,
                  targets: Sequence[str], te_targets: Sequence[str], file_name: str) -> Path:
        raise NotImplementedError

    def to_kohya(self, denoiser_lora: dict, te_lora: dict, alpha: float) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def weighted_mean(error: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per batch item, the mean of ``error`` (b, ...), or with ``weight`` (broadcast to it) the
    weighted mean: divided by the weights' sum, so an item weighs the same in its batch whatever
    its share of down-weighted cells (OneTrainer's normalized masked loss)."""
    dims = tuple(range(1, error.ndim))
    if weight is None:
        return error.mean(dim=dims)
    weight = weight.to(error).expand_as(error)
    return (error * weight).sum(dim=dims) / weight.sum(dim=dims).clamp_min(1e-8)


def stack_cond(items: Sequence[Cond]) -> Cond:
    """Per-example conditionings (no batch dim) -> one batch."""
    return {k: torch.stack([c[k] for c in items]) for k in items[0]}


def cat_cond(batches: Sequence[Cond]) -> Cond:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def unbatch_cond(cond: Cond) -> list[Cond]:
    """One batch -> per-example conditionings (fp32, on the CPU: what the text cache keeps)."""
    n = next(iter(cond.values())).shape[0]
    return [{k: v[i].float().cpu() for k, v in cond.items()} for i in range(n)]


def cond_to(cond: Cond, device, dtype=None) -> Cond:
    return {k: v.to(device, dtype) if dtype is not None and v.is_floating_point() else v.to(device)
            for k, v in cond.items()}


def te_lora_prefix(index: int) -> str:
    """Key prefix of text encoder ``index``'s LoRA weights in the trainer's one ``te_lora`` dict:
    none for the first (so SD's dict is the encoder's own PEFT state dict), ``text_encoder_2.``
    for the second, as diffusers names the pipelines' attributes."""
    return "" if index == 0 else f"text_encoder_{index + 1}."


def split_te_lora(te_lora: dict[str, torch.Tensor], indices: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
    """``te_lora`` -> {encoder index: its own PEFT state dict} (the inverse of ``te_lora_prefix``)."""
    out: dict[int, dict[str, torch.Tensor]] = {i: {} for i in indices}
    prefixes = {te_lora_prefix(i): i for i in indices if i != 0}
    for key, value in te_lora.items():
        index, name = next(((i, key[len(p):]) for p, i in prefixes.items() if key.startswith(p)), (0, key))
        if index in out:
            out[index][name] = value
    return out


def adapter_metadata(rank: int, alpha: float, targets: Sequence[str]) -> dict:
    """The LoraConfig kwargs diffusers stores beside the weights, so alpha != rank loads right."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(targets)}
