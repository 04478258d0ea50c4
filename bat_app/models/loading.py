"""Load the components of a backbone (any family in ``families/``) from a hub id or a folder.

The family (SD 1.x/2.x, ...) comes from the preset or from the folder's ``model_index.json``;
it says which parts to load. A preset's ``vae`` (or ``load_components(..., vae=...)``) names a
VAE loaded in place of the model's own, from a hub id or a folder by the same code as the model
(SDXL's fp16 fix: SDXL base's own VAE overflows in fp16). Every failure becomes a
:class:`ModelLoadError` that says which model, why, and what to do.

    >>> comps = load_components(resolve_model("shapes"))      # doctest: +SKIP
    >>> pipe = build_pipeline(comps)                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from ..errors import ModelLoadError
from .families import Family, family_for_pipeline, get_family, supported_pipelines
from .presets import ModelSpec, resolve_model, resolve_vae
from .tokenizer import offline_clip_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Components:
    """The frozen parts of a backbone, ready to train LoRA adapters on.

    ``denoiser`` is the UNet (SD, SDXL) or the transformer (Flux); ``text_encoders`` and
    ``tokenizers`` are in the family's order, the CLIP one first (the one pivotal tuning and a
    text-encoder LoRA train).
    """

    spec: ModelSpec
    family: Family
    tokenizers: list
    text_encoders: list
    vae: torch.nn.Module
    denoiser: torch.nn.Module
    noise_scheduler: object  # the training scheduler (same config as the sampling one)
    dtype: torch.dtype
    device: torch.device
    # The model's safety checker, loaded on first use by bat_app.preview.safety (None: not yet).
    safety: object = field(default=None, repr=False, compare=False)

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def text_encoder(self):
        return self.text_encoders[0]


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
    quantize: str | None = None,
    vae: str | Path | None = None,
) -> Components:
    """Load tokenizer, text encoder, VAE, UNet and noise scheduler of ``spec``, frozen, in eval mode.

    Args:
        spec: a ModelSpec, or anything :func:`resolve_model` accepts (preset, folder, hub id).
        device: where the weights go (default: CUDA if available, else CPU).
        dtype: weight dtype of the frozen parts ("auto": bf16/fp16 on CUDA, fp32 on CPU). LoRA
            parameters are always kept in fp32 by the trainer.
        quantize: "nf4" loads the denoiser 4-bit through bitsandbytes (CUDA only; a memory
            profile's ``quantize``, ``bat_app.models.memory``), computing in ``dtype``.
        vae: a VAE to load in place of the model's own: a hub id, a VAE folder or a diffusers
            model folder (its ``vae/``). Default: the preset's ``vae``, where it names one.
    """
    spec = spec if isinstance(spec, ModelSpec) else resolve_model(spec)
    if vae is not None:
        spec = dataclasses.replace(spec, vae=resolve_vae(vae))
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    local_only = _local_only(spec)
    family = family_of(spec, local_only)
    if spec.is_local:
        _check_local_folder(spec, family)
    load = _loader(spec, local_only)

    loaded = {}
    for part in family.parts():
        kwargs = dict(part.kwargs)
        if part.weights:  # diffusers models take torch_dtype, transformers models dtype
            kwargs["torch_dtype" if part.cls.__module__.startswith("diffusers") else "dtype"] = dtype
        if quantize and part.attr == "denoiser":
            kwargs["quantization_config"] = _quantization(spec, quantize, device, dtype)
        if part.attr == "vae" and spec.vae is not None:
            loaded[part.attr] = _load_other_vae(spec, part, load, **kwargs)
        else:
            loaded[part.attr] = load(part.cls, part.subfolder, **kwargs)
    noise_scheduler = load(family.scheduler_class(), "scheduler")

    def tokenizer(subfolder: str, text_encoder):
        return _load_tokenizer(spec, subfolder, text_encoder, local_only)

    fields = family.finish_loading(loaded, spec, tokenizer)
    for model in (fields["denoiser"], fields["vae"], *fields["text_encoders"]):
        model.requires_grad_(False)
        model.eval()
        model.to(device)
    return Components(spec, family, fields["tokenizers"], fields["text_encoders"], fields["vae"],
                      fields["denoiser"], noise_scheduler, dtype, device)


def _quantization(spec: ModelSpec, quantize: str, device: torch.device, dtype: torch.dtype):
    if device.type != "cuda":
        raise ModelLoadError(f"Model {spec.name!r}: a {quantize.upper()} (4-bit) base needs a CUDA GPU (bitsandbytes); "
                             f"this load is on {device.type}. Use a memory profile without `quantize`.")
    from .memory import quantization_config

    return quantization_config(quantize, dtype)


def _local_only(spec: ModelSpec, marker: str = "model_index.json") -> bool:
    """Whether ``spec`` loads from local files only: a folder, or a hub repository already in the
    cache (found by its ``marker`` file), which loads without touching the network. Only a cache
    miss goes online, and only after a quick reachability check (the hub client otherwise
    retries for ~30 s on an offline machine before failing)."""
    source = str(spec.source)
    local_only = spec.is_local or _in_hub_cache(source, marker)
    if not local_only and not _hub_reachable():
        raise ModelLoadError(
            f"Could not load model {spec.name!r}: it is not in the local Hugging Face cache and the Hub "
            f"cannot be reached (offline). On a machine with internet run `hf download {source}` (or "
            f"copy its folder here and pass the folder), or use the offline `shapes` preset.")
    return local_only


def _loader(spec: ModelSpec, local_only: bool):
    """``load(cls, subfolder, **kwargs)``: ``cls.from_pretrained`` (or another ``method``, e.g.
    ``load_config``) from ``spec``'s hub id or folder, failures explained (:func:`_explain_failure`)."""
    def load(cls, subfolder, method: str = "from_pretrained", **kwargs):
        try:
            return getattr(cls, method)(str(spec.source), subfolder=subfolder, local_files_only=local_only, **kwargs)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise _explain_failure(spec, subfolder or "vae", exc) from exc

    return load


def _load_other_vae(spec: ModelSpec, part, load_own, **kwargs):
    """The VAE ``spec.vae`` names, loaded like the model: a hub id or a folder, the whole of it
    or, for a diffusers model folder or a cached hub model, its ``vae/``. It must fit the model:
    as many latent channels as the model's own VAE (whose config alone is read)."""
    vae_spec = ModelSpec(str(spec.vae), spec.vae)
    try:
        if vae_spec.is_local:
            local_only, subfolder = True, ("vae" if (Path(spec.vae) / "vae" / "config.json").is_file() else None)
            if subfolder is None and not (Path(spec.vae) / "config.json").is_file():
                raise ModelLoadError(f"{spec.vae} has no config.json (nor vae/config.json): give a diffusers VAE "
                                     f"folder (AutoencoderKL.save_pretrained) or model folder.")
        else:
            whole_model = _in_hub_cache(str(spec.vae))
            local_only, subfolder = whole_model or _local_only(vae_spec, "config.json"), ("vae" if whole_model else None)
        vae = _loader(vae_spec, local_only)(part.cls, subfolder, **kwargs)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc} (This is the VAE that model {spec.name!r} loads in place of its own: the "
                             f"preset's `vae` or --vae.)") from exc
    own = load_own(part.cls, part.subfolder, method="load_config")
    if vae.config.latent_channels != own.get("latent_channels"):
        raise ModelLoadError(
            f"VAE {str(spec.vae)!r} has {vae.config.latent_channels} latent channels but model {spec.name!r}'s own VAE "
            f"has {own.get('latent_channels')}: it does not fit this model. Give a VAE made for it.")
    log.info("%s: VAE %s in place of the model's own", spec.name, spec.vae)
    return vae


def build_pipeline(components: Components, scheduler=None):
    """The family's sampling pipeline over the same modules (LoRA adapters on them take effect)."""
    return components.family.pipeline(components, scheduler)


def family_of(spec: ModelSpec, local_only: bool = True) -> Family:
    """The preset's family, else the one whose pipeline class ``model_index.json`` names
    (SD 1.x/2.x when a folder has no model_index.json or the hub cannot say)."""
    if spec.family:
        return get_family(spec.family)
    cls = _pipeline_class(spec, local_only)
    if cls is None:
        return get_family("sd")
    family = family_for_pipeline(cls)
    if family is None:
        raise ModelLoadError(
            f"Model {spec.name!r} is a {cls}; BAT Studio trains {', '.join(supported_pipelines())} models. "
            f"Pick a checkpoint of one of those families.")
    return family


def _pipeline_class(spec: ModelSpec, local_only: bool) -> str | None:
    index = model_index(spec, local_only)
    return (index or {}).get("_class_name") or None


def model_index(spec: ModelSpec, local_only: bool = True) -> dict | None:
    """The model's ``model_index.json`` (which parts it has), or None when it has none or the hub
    cannot say (not cached / offline: the real load reports it)."""
    if spec.is_local:
        if not Path(spec.source).is_dir():
            raise ModelLoadError(f"Model {spec.name!r}: {spec.source} is not a folder.")
        index = Path(spec.source) / "model_index.json"
        if not index.is_file():
            return None
    else:
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(str(spec.source), "model_index.json", local_files_only=local_only))
        except Exception:  # not cached / offline / no such file: the real load reports it
            return None
    try:
        data = json.loads(index.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"Model {spec.name!r}: {index} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"Model {spec.name!r}: {index} is not a JSON object.")
    return data


def _in_hub_cache(repo_id: str, marker: str = "model_index.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, marker)
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


def _load_tokenizer(spec: ModelSpec, subfolder: str, text_encoder, local_only: bool) -> CLIPTokenizer:
    """A CLIP text encoder's tokenizer: the model's own files if present, else the offline
    CLIP BPE tokenizer (the same ids)."""
    max_len = text_encoder.config.max_position_embeddings
    if spec.is_local and not (Path(spec.source) / subfolder).is_dir():
        log.info("%s has no %s/ folder: using the offline CLIP BPE tokenizer", spec.name, subfolder)
        return offline_clip_tokenizer(model_max_length=max_len)
    try:
        return CLIPTokenizer.from_pretrained(str(spec.source), subfolder=subfolder, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        if spec.is_local:
            raise _explain_failure(spec, subfolder, exc) from exc
        log.info("tokenizer of %s not available (%s): using the offline CLIP BPE tokenizer",
                 spec.name, type(exc).__name__)
        return offline_clip_tokenizer(model_max_length=max_len)


def _check_local_folder(spec: ModelSpec, family: Family) -> None:
    folder = Path(spec.source)
    missing = [s for s in family.required_subfolders() if not (folder / s).is_dir()]
    if missing:
        hint = ""
        if folder.suffix in (".safetensors", ".ckpt") or any(folder.glob("*.safetensors")):
            hint = (" A single-file checkpoint must first be converted: "
                    f"{family.pipeline_class().__name__}.from_single_file(path).save_pretrained(folder).")
        raise ModelLoadError(
            f"Model {spec.name!r}: {folder} is not a diffusers {family.display_name} folder (missing "
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
        todo = "Check that it is a diffusers repository of a family BAT Studio trains."
    return ModelLoadError(f"Could not load {part} of model {spec.name!r}: {why}. {todo}")
