"""The note under the model picker: what a preset is, its licence, and whether and how it
trains on this server's GPU (which memory profile a job here uses, and why).

    model_note("flux-dev")      # "... Trains with the **24 GB** memory profile: ..., because ..."
    memory_profile("flux-dev")  # the profile's name a submitted job carries (None: none fits)
"""

from __future__ import annotations

from ..models import memory as gpu
from ..models.memory import choose, parse_profiles
from ..models.presets import presets


def model_note(model: str | None) -> str:
    """One line under the model picker: what a preset is and its licence (nothing for others:
    a folder or hub id the operator allowed speaks for itself)."""
    from ..models.presets import license_line

    preset = presets().get(model or "")
    if not preset:
        return ""
    licence = license_line(model)
    return (f"{preset['description']}" + (f" **{licence[0].upper()}{licence[1:]}.**" if licence else "")
            + fit_note(preset.get("memory", {})))


def fit_note(memory: dict, gpu_gb: float | None = None) -> str:
    """Whether a preset fits this machine and, for a preset with memory profiles, which profile a
    job here uses and why, from its ``memory`` block and the GPU found (``gpu_gb``: None = detect;
    0 = no CUDA GPU)."""
    if memory.get("cpu"):
        return " Runs on the CPU."
    options = parse_profiles(memory)
    need = options[-1].min_gpu_gb if options else memory.get("min_gpu_gb")
    if not need:
        return ""
    if gpu_gb is None:
        gpu_gb = gpu.gpu_memory_gb()
    if not gpu_gb:
        return f" Needs a CUDA GPU with ~{need:g} GB; none was found here, so it will not train on this server."
    if not options:
        verdict = "fits" if gpu_gb >= need else "does not fit: pick a smaller model"
        return f" Needs ~{need:g} GB of GPU memory; this GPU has {gpu_gb:.0f} GB: {verdict}."
    choice = choose(options, gpu_gb)
    if choice.profile is None:
        return (f" Needs ~{need:g} GB of GPU memory (its smallest memory profile, '{options[-1].name}'); "
                f"this GPU has {gpu_gb:.0f} GB: does not fit: pick a smaller model.")
    profile = choice.profile
    missing = (" It needs bitsandbytes, which this server does not have installed."
               if profile.needs_bitsandbytes and gpu.bitsandbytes_version() is None else "")
    return f" Trains with the **{profile.name}** memory profile: {profile.summary()}, because {choice.reason}.{missing}"


def memory_profile(model: str | None) -> str | None:
    """The memory profile a job for preset ``model`` uses on this machine's GPU (None: the
    preset has none, or none fits; the model note says why)."""
    if model not in presets():
        return None
    profile = gpu.pick_profile(model, gpu.gpu_memory_gb()).profile
    return profile.name if profile else None
