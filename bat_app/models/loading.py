"""Load the components of an SD 1.x/2.x-family backbone from a hub id or a local folder.

Every failure becomes a :class:`ModelLoadError` that says which model, why, and what to do.

    >>> comps = load_components(resolve_model("shapes"))      # doctest: +SKIP
    >>> pipe = build_pipeline(comps)                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import ModelLoadError
from .presets import ModelSpec, resolve_model
from .tokenizer import offline_clip_tokenizer

log = logging.getLogger(__name__)

# Pipelines whose components this loader understands (UNet2DCondition + CLIPTextModel + VAE).
SUPPORTED_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
REQUIRED_SUBFOLDERS = ("unet", "vae", "text_encoder", "scheduler")


@dataclass
class Components:
    """The frozen parts of a backbone, ready to train LoRA adapters on."""

    spec: ModelSpec
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training scheduler (same config as the sampling one)
    dtype: torch.dtype
    device: torch.device

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp32 on CPU (half precision is slow and lossy there); bf16 on CUDA where supported."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of auto, {', '.join(names)}.")
    return names[dtype]


def load_components(
    spec: ModelSpec | str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and noise scheduler of ``spec``, frozen, in eval mode.

    Args:
        spec: a ModelSpec, or anything :func:`resolve_model` accepts (preset, folder, hub id).
        device: where the weights go (default: CUDA if available, else CPU).
        dtype: weight dtype of the frozen parts ("auto": bf16/fp16 on CUDA, fp32 on CPU). LoRA
            parameters are always kept in fp32 by the trainer.
    """
    spec = spec if isinstance(spec, ModelSpec) else resolve_model(spec)
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    source = str(spec.source)
    # A hub model already in the cache loads without touching the network; only a cache miss
    # goes online, and only after a quick reachability check (the hub client otherwise retries
    # for ~30 s on an offline machine before failing).
    local_only = spec.is_local or _in_hub_cache(source)
    if spec.is_local:
        _check_local_folder(spec)
    elif not local_only and not _hub_reachable():
        raise ModelLoadError(
            f"Could not load model {spec.name!r}: it is not in the local Hugging Face cache and the Hub "
            f"cannot be reached (offline). On a machine with internet run `hf download {source}` (or "
            f"copy its folder here and pass the folder), or use the offline `shapes` preset.")

    def load(cls, subfolder, **kw):
        try:
            return cls.from_pretrained(source, subfolder=subfolder, local_files_only=local_only, **kw)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise _explain_failure(spec, subfolder, exc) from exc

    unet = load(UNet2DConditionModel, "unet", torch_dtype=dtype)
    vae = load(AutoencoderKL, "vae", torch_dtype=dtype)
    text_encoder = load(CLIPTextModel, "text_encoder", dtype=dtype)
    noise_scheduler = load(DDPMScheduler, "scheduler")
    tokenizer = _load_tokenizer(spec, text_encoder, local_only)

    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
        model.eval()
        model.to(device)
    return Components(spec, tokenizer, text_encoder, vae, unet, noise_scheduler, dtype, device)


def build_pipeline(components: Components, scheduler=None) -> StableDiffusionPipeline:
    """A sampling pipeline over the same modules (LoRA adapters on them take effect)."""
    if scheduler is None:
        from diffusers import DDIMScheduler

        # DDIM shares the training scheduler's config (v-prediction, zero-SNR, spacing).
        scheduler = DDIMScheduler.from_config(components.noise_scheduler.config)
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "unet/config.json")
        return isinstance(found, str)
    except Exception:  # malformed id etc.: let the real load report it
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tokenizer(spec: ModelSpec, text_encoder: CLIPTextModel, local_only: bool) -> CLIPTokenizer:
    """The model's own tokenizer files if present, else the offline CLIP BPE tokenizer."""
    max_len = text_encoder.config.max_position_embeddings
    if spec.is_local and not (Path(spec.source) / "tokenizer").is_dir():
        log.info("%s has no tokenizer/ folder: using the offline CLIP BPE tokenizer", spec.name)
        return offline_clip_tokenizer(model_max_length=max_len)
    try:
        return CLIPTokenizer.from_pretrained(str(spec.source), subfolder="tokenizer", local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if spec.is_local:
            raise _explain_failure(spec, "tokenizer", exc) from exc
        log.info("tokenizer of %s not available (%s): using the offline CLIP BPE tokenizer",
                 spec.name, type(exc).__name__)
        return offline_clip_tokenizer(model_max_length=max_len)


def _check_local_folder(spec: ModelSpec) -> None:
    folder = Path(spec.source)
    if not folder.is_dir():
        raise ModelLoadError(f"Model {spec.name!r}: {folder} is not a folder.")
    index = folder / "model_index.json"
    if index.is_file():
        try:
            cls = json.loads(index.read_text()).get("_class_name", "")
        except ValueError as exc:
            raise ModelLoadError(f"Model {spec.name!r}: {index} is not valid JSON ({exc}).") from exc
        if cls and cls not in SUPPORTED_PIPELINES:
            raise ModelLoadError(
                f"Model {spec.name!r} is a {cls}; BAT Studio trains SD 1.x/2.x-family models "
                f"({', '.join(sorted(SUPPORTED_PIPELINES))}). Pick an SD 1.x/2.x checkpoint."
            )
    missing = [s for s in REQUIRED_SUBFOLDERS if not (folder / s).is_dir()]
    if missing:
        hint = ""
        if folder.suffix in (".safetensors", ".ckpt") or any(folder.glob("*.safetensors")):
            hint = (" A single-file checkpoint must first be converted: "
                    "StableDiffusionPipeline.from_single_file(path).save_pretrained(folder).")
        raise ModelLoadError(
            f"Model {spec.name!r}: {folder} is not a diffusers SD-family folder (missing "
            f"{', '.join(s + '/' for s in missing)}).{hint}"
        )


def _explain_failure(spec: ModelSpec, part: str, exc: Exception) -> ModelLoadError:
    text = str(exc)
    if spec.is_local:
        why = f"its {part}/ could not be read ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
        todo = "Check that the folder is a complete diffusers export (save_pretrained)."
    elif any(s in text for s in ("offline", "cannot find the requested files", "Connection",
                                 "couldn't connect", "LocalEntryNotFound", "not found in the cache")) \
            or type(exc).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
        why = "it is not in the local Hugging Face cache and the Hub cannot be reached (offline)"
        todo = (f"On a machine with internet run `hf download {spec.source}` (or copy its "
                f"folder here and pass the folder), or use the offline `shapes` preset.")
    elif any(s in text for s in ("401", "403", "gated", "Unauthorized", "restricted")):
        why = "the Hub refused access (gated or private model)"
        todo = "Accept the model's licence on its Hub page and log in with `hf auth login`."
    elif any(s in text for s in ("404", "Repository Not Found", "is not a valid model identifier")):
        why = "no such repository on the Hub"
        todo = "Check the hub id's spelling."
    else:
        why = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        todo = "Check that it is an SD 1.x/2.x diffusers repository."
    return ModelLoadError(f"Could not load {part} of model {spec.name!r}: {why}. {todo}")
