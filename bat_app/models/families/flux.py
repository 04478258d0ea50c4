"""Flux.1 (dev, schnell): a rectified-flow transformer with a CLIP-L (pooled) and a T5 (sequence)
text encoder, trained by flow matching.

The objective follows diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py``: a
timestep index ``t`` in ``[0, N)`` is the sigma ``(t + 1) / N`` (shifted as the scheduler's
config says when it does not shift dynamically, as FLUX.1's does); the noisy latent is
``(1 - sigma) * x0 + sigma * noise``; the transformer, fed the latents packed into 2x2 patches
(``FluxPipeline._pack_latents``), with ``timestep=sigma`` (it multiplies by 1000 itself) and the
embedded guidance where the model has one (dev; schnell has none), regresses the flow
``noise - x0``. The loss is the per-sample mean squared error in fp32.

Files:

- ``pytorch_lora_weights.safetensors``: ``FluxPipeline.save_lora_weights`` (``transformer.`` and
  ``text_encoder.`` keys, alpha in the adapter metadata).
- the ComfyUI file (``*_kohya.safetensors``, :meth:`Flux.to_kohya`): the same diffusers-named keys
  (``transformer.<module>.lora_A.weight`` / ``lora_B.weight``, CLIP as
  ``text_encoder.text_model.…``) plus a ``<module>.alpha`` tensor per module, so loaders that do not
  read diffusers' metadata (ComfyUI) still scale by alpha / rank. ComfyUI's Flux key map takes
  ``transformer.<module>`` names and ``.alpha`` tensors, and diffusers' ``FluxPipeline.load_lora_weights``
  reads the alphas as network alphas (tests/test_family_flux.py checks that it draws the same
  image as the diffusers file). kohya's own ``lora_unet_double_blocks_…`` layout is not written:
  it fuses q/k/v (and, in single blocks, q/k/v/mlp) into one Linear, and diffusers' converter
  for it hard-codes FLUX.1's widths, so it cannot be checked on the tiny test model.

Pivotal tuning is not supported yet (``supports_pivotal = False``): the trigger's meaning sits
in T5, which the pivotal code does not train. Text embeddings are cached per caption by the
trainer (``TextCache``) when no text-encoder LoRA is trained; the T5 encoder stays loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ...errors import ModelLoadError
from .base import Cond, Family, Part, adapter_metadata, weighted_mean
from .sd import canonical_text_encoder_keys

# The reference script's --guidance_scale default: the value the dev model's guidance
# embedding is fed while training (a preset's sampling guidance takes its place).
TRAIN_GUIDANCE = 3.5


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C * 4): 2x2 patches, as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def latent_image_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """(h * w, 3) positions of the packed patches, as ``FluxPipeline._prepare_latent_image_ids``."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


class Flux(Family):
    name = "flux"
    display_name = "Flux"
    pipeline_classes = frozenset({"FluxPipeline"})
    kohya_version = "flux1"
    # The reference script's default --lora_layers: attention and MLP of every block.
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
    supports_pivotal = False  # the trigger lives in T5; pivotal tuning trains CLIP's embeddings only
    # Aspect-ratio buckets as SDXL's (64 px sides: even latents, as the 2x2 packing needs); Flux
    # has no size conditioning, so nothing is added to the conditioning.
    uses_buckets = True

    # --- loading ----------------------------------------------------------------------
    def parts(self) -> tuple[Part, ...]:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from transformers import CLIPTextModel, T5EncoderModel

        return (Part("denoiser", FluxTransformer2DModel, "transformer"), Part("vae", AutoencoderKL, "vae"),
                Part("text_encoder", CLIPTextModel, "text_encoder"),
                Part("text_encoder_2", T5EncoderModel, "text_encoder_2"))

    def scheduler_class(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler

    def required_subfolders(self) -> tuple[str, ...]:
        return super().required_subfolders() + ("tokenizer_2",)

    def finish_loading(self, loaded: dict, spec, load_tokenizer) -> dict:
        te, te2 = loaded.pop("text_encoder"), loaded.pop("text_encoder_2")
        return {**loaded, "text_encoders": [te, te2],
                "tokenizers": [load_tokenizer("tokenizer", te), self.load_t5_tokenizer(spec)]}

    @staticmethod
    def load_t5_tokenizer(spec):
        """The model's own T5 tokenizer (``tokenizer_2/``); there is no offline stand-in."""
        from transformers import T5TokenizerFast

        from ..loading import _in_hub_cache

        source = str(spec.source)
        local_only = spec.is_local or _in_hub_cache(source)
        try:
            return T5TokenizerFast.from_pretrained(source, subfolder="tokenizer_2", local_files_only=local_only)
        except (OSError, ValueError, TypeError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelLoadError(
                f"Could not load the T5 tokenizer (tokenizer_2/) of model {spec.name!r}: {type(exc).__name__}: "
                f"{text}. A Flux model needs its own tokenizer_2/ folder (tokenizer.json); download the "
                f"complete model (`hf download {source}`) or copy it from the original repository.") from exc

    # --- text -------------------------------------------------------------------------
    def encode(self, components, ids: Sequence[torch.Tensor]) -> Cond:
        """``hidden``: T5's last hidden state; ``pooled``: CLIP's pooled output (FluxPipeline.encode_prompt)."""
        clip, t5 = components.text_encoders
        pooled = clip(ids[0].to(clip.device), output_hidden_states=False).pooler_output
        hidden = t5(ids[1].to(t5.device), output_hidden_states=False)[0]
        return {"hidden": hidden, "pooled": pooled}

    # --- the objective ------------------------------------------------------------------
    def sigmas(self, components, timesteps: torch.Tensor) -> torch.Tensor:
        """Integer timesteps -> sigmas in (0, 1]: the training scheduler's ``sigmas[N - 1 - t]``,
        computed from its config (the scheduler object's own sigmas change when it samples)."""
        config = components.noise_scheduler.config
        sigma = (timesteps.float() + 1) / int(config.num_train_timesteps)
        shift = float(config.get("shift", 1.0) or 1.0)
        if not config.get("use_dynamic_shifting", False) and shift != 1.0:
            sigma = shift * sigma / (1 + (shift - 1) * sigma)
        return sigma

    def guidance(self, components) -> float:
        spec = components.spec
        if spec.preset and "guidance_scale" in spec.sampling:
            return float(spec.sampling["guidance_scale"])
        return TRAIN_GUIDANCE

    def loss(self, components, latents, cond, noise, timesteps, weight=None):
        transformer = components.denoiser
        dtype = components.dtype  # not transformer.dtype, which walks every parameter (sd.py)
        b, _, h, w = latents.shape
        sigma = self.sigmas(components, timesteps).to(latents.device)
        s = sigma.view(b, 1, 1, 1)
        noisy = (1 - s) * latents.float() + s * noise.float()
        target = pack_latents(noise.float() - latents.float())
        hidden = cond["hidden"]
        guidance = None
        if transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance(components), device=latents.device, dtype=torch.float32)
        pred = transformer(
            hidden_states=pack_latents(noisy).to(dtype), timestep=sigma.to(dtype), guidance=guidance,
            pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=hidden.to(dtype),
            txt_ids=torch.zeros(hidden.shape[1], 3, device=latents.device, dtype=dtype),
            img_ids=latent_image_ids(h // 2, w // 2, latents.device, dtype), return_dict=False)[0]
        if weight is not None:  # the latent grid's weights, packed into 2x2 patches like the latents
            weight = pack_latents(weight.to(latents.device).float().expand(-1, latents.shape[1], -1, -1).contiguous())
        return weighted_mean(F.mse_loss(pred.float(), target, reduction="none"), weight)

    # --- sampling and export ------------------------------------------------------------
    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    def pipeline(self, components, scheduler=None):
        if scheduler is None:
            # A fresh scheduler: sampling sets its timesteps, the training one stays as loaded.
            scheduler = self.scheduler_class().from_config(components.noise_scheduler.config)
        te, te2 = components.text_encoders
        tok, tok2 = components.tokenizers
        pipe = self.pipeline_class()(scheduler=scheduler, vae=components.vae, text_encoder=te, tokenizer=tok,
                                     text_encoder_2=te2, tokenizer_2=tok2, transformer=components.denoiser)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_lora(self, out_dir, denoiser_lora, te_lora, rank, alpha, targets, te_targets, file_name) -> Path:
        te_lora = canonical_text_encoder_keys(te_lora)
        self.pipeline_class().save_lora_weights(
            out_dir,
            transformer_lora_layers=denoiser_lora,
            text_encoder_lora_layers=te_lora or None,
            transformer_lora_adapter_metadata=adapter_metadata(rank, alpha, targets),
            text_encoder_lora_adapter_metadata=adapter_metadata(rank, alpha, te_targets) if te_lora else None,
            weight_name=file_name, safe_serialization=True)
        return Path(out_dir) / file_name

    def to_kohya(self, denoiser_lora, te_lora, alpha):
        """Diffusers-named keys with an ``.alpha`` tensor per module (see the module docstring)."""
        out = {}
        for prefix, lora in (("transformer", denoiser_lora), ("text_encoder", canonical_text_encoder_keys(te_lora))):
            for key, value in lora.items():
                out[f"{prefix}.{key}"] = value.contiguous()
                if key.endswith(".lora_A.weight"):
                    out[f"{prefix}.{key.removesuffix('.lora_A.weight')}.alpha"] = torch.tensor(float(alpha))
        return out
