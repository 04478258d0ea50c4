"""Memory profiles: how a preset trains on a GPU of a given size, kept as data in ``presets.json``.

Each GPU preset's ``memory.profiles`` lists ways to train it, each with the GPU memory it needs
(``min_gpu_gb``, in GiB as ``torch.cuda`` reports them: a "24 GB" card shows 22-24) and the
settings that get it there: weight dtype, gradient checkpointing, 8-bit AdamW, a 4-bit (NF4)
base, batch, resolution, ``torch.compile``. The largest profile that fits the GPU is the one
used; the UI says which and why, the CLI takes ``--memory-profile NAME|auto``.

    >>> pick_profile("flux-dev", 24).profile.name
    '24 GB'
    >>> pick_profile("flux-dev", 12).reason
    "this GPU has 12 GB; the smallest profile of 'flux-dev', '24 GB', needs 22 GB"
    >>> config = apply_profile(TrainConfig(), pick_profile("flux-dev", 24).profile)  # doctest: +SKIP
    >>> config.quantize, config.optimizer                                           # doctest: +SKIP
    ('nf4', 'adamw8bit')

SDPA attention is what diffusers uses by default on torch 2 (``AttnProcessor2_0``); profiles
record it (``attention``) and nothing switches it. 8-bit AdamW and the NF4 base need
``bitsandbytes`` (not a dependency) and a CUDA GPU: :func:`check_environment` says so before
anything loads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..train.config import TrainConfig

DTYPES = {"auto": "auto", "bf16": "bf16", "fp16": "fp16", "fp32": "no"}  # profile dtype -> mixed_precision
OPTIMIZERS = ("adamw", "adamw8bit")
QUANTIZATIONS = ("nf4",)
ATTENTIONS = ("sdpa",)
AUTO = "auto"
BNB_MIN_VERSION = (0, 43, 3)  # diffusers' 4-bit loading refuses older bitsandbytes


@dataclass(frozen=True)
class MemoryProfile:
    """One way to train a preset, and the GPU memory it needs (typical figures, not measured here)."""

    name: str                      # what the UI shows and ``--memory-profile`` takes, e.g. "24 GB"
    min_gpu_gb: float              # the smallest GPU (GiB, as torch reports it) it is meant for
    dtype: str = "auto"            # frozen weights: auto (bf16, else fp16, on CUDA), bf16, fp16, fp32
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~20-30% slower
    optimizer: str = "adamw"       # adamw8bit: bitsandbytes' 8-bit AdamW (smaller optimizer state)
    batch_size: int = 1
    resolution: int | None = None  # None: the preset's own resolution
    compile: bool = False          # torch.compile the denoiser: pays back only on long runs
    quantize: str | None = None    # nf4: the denoiser loaded 4-bit (bitsandbytes), LoRA on top (QLoRA)
    attention: str = "sdpa"        # recorded: diffusers' default attention on torch 2
    note: str = ""                 # where the figures come from

    def __post_init__(self):
        where = f"memory profile {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"A memory profile needs a name, got {self.name!r}.")
        if not isinstance(self.min_gpu_gb, (int, float)) or isinstance(self.min_gpu_gb, bool) or self.min_gpu_gb <= 0:
            raise InputError(f"{where}: `min_gpu_gb` must be a positive number, got {self.min_gpu_gb!r}.")
        choices = {"dtype": (self.dtype, tuple(DTYPES)), "optimizer": (self.optimizer, OPTIMIZERS),
                   "quantize": (self.quantize, (None, *QUANTIZATIONS)), "attention": (self.attention, ATTENTIONS)}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise InputError(f"{where}: `{key}` must be one of {allowed}, got {value!r}.")
        for key in ("gradient_checkpointing", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"{where}: `{key}` must be true or false, got {getattr(self, key)!r}.")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise InputError(f"{where}: `batch_size` must be a positive integer, got {self.batch_size!r}.")
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 8
                                            or self.resolution % 8):
            raise InputError(f"{where}: `resolution` must be a multiple of 8 or null, got {self.resolution!r}.")

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryProfile":
        from .presets import from_known_keys

        return from_known_keys(cls, data, f"Memory profile {data.get('name')!r}", InputError)

    @property
    def needs_bitsandbytes(self) -> bool:
        return self.optimizer == "adamw8bit" or self.quantize is not None

    def train_settings(self) -> dict:
        """The TrainConfig settings this profile sets (``memory_profile`` records which it was)."""
        settings = {"memory_profile": self.name, "mixed_precision": DTYPES[self.dtype],
                    "gradient_checkpointing": self.gradient_checkpointing, "optimizer": self.optimizer,
                    "batch_size": self.batch_size, "compile": self.compile, "quantize": self.quantize}
        if self.resolution is not None:
            settings["resolution"] = self.resolution
        return settings

    def summary(self) -> str:
        """What it does, in a few words: "NF4 base + 8-bit Adam + gradient checkpointing, bf16, 512 px"."""
        parts = []
        if self.quantize:
            parts.append(f"{self.quantize.upper()} base")
        if self.optimizer == "adamw8bit":
            parts.append("8-bit Adam")
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        if self.compile:
            parts.append("torch.compile")
        text = " + ".join(parts) or "no gradient checkpointing (faster steps)"
        extras = [self.dtype if self.dtype != "auto" else "bf16/fp16"]
        if self.resolution:
            extras.append(f"{self.resolution} px")
        if self.batch_size != 1:
            extras.append(f"batch {self.batch_size}")
        return f"{text}, {', '.join(extras)}"


@dataclass(frozen=True)
class Choice:
    """The profile picked for a GPU (None: none fits) and why, in words for the user."""

    profile: MemoryProfile | None
    reason: str


def profiles(model: str | None) -> list[MemoryProfile]:
    """A preset's memory profiles, largest first (none for CPU presets, folders and hub ids)."""
    from .presets import presets

    return parse_profiles((presets().get(str(model)) or {}).get("memory", {}) if model is not None else {})


def parse_profiles(memory: dict) -> list[MemoryProfile]:
    """The profiles of a preset's ``memory`` block, largest first."""
    found = [MemoryProfile.from_dict(p) for p in memory.get("profiles", [])]
    return sorted(found, key=lambda p: p.min_gpu_gb, reverse=True)


def get_profile(model: str | None, name: str) -> MemoryProfile:
    for profile in profiles(model):
        if profile.name == name:
            return profile
    names = [p.name for p in profiles(model)]
    raise InputError(f"Model {model!r} has no memory profile {name!r}; "
                     + (f"its profiles are {', '.join(repr(n) for n in names)}, or 'auto' (the largest that fits "
                        f"this GPU)." if names else "it has none (a CPU preset, a folder or a hub id): drop the "
                                                      "memory profile."))


def pick_profile(model: str | None, gpu_gb: float) -> Choice:
    """The largest profile of ``model`` that fits ``gpu_gb`` (0: no CUDA GPU), and why."""
    return choose(profiles(model), gpu_gb, repr(model))


def choose(options: list[MemoryProfile], gpu_gb: float, owner: str = "this model") -> Choice:
    """The largest of ``options`` (largest first) that fits ``gpu_gb``, and why; ``owner`` names
    the model in the reason."""
    if not options:
        return Choice(None, f"{owner} has no memory profiles")
    smallest = f"the smallest profile of {owner}, {options[-1].name!r}, needs {options[-1].min_gpu_gb:g} GB"
    if not gpu_gb:
        return Choice(None, f"no CUDA GPU was found; {smallest}")
    for i, profile in enumerate(options):
        if gpu_gb >= profile.min_gpu_gb:
            bigger = f" (the {options[i - 1].name!r} profile needs {options[i - 1].min_gpu_gb:g} GB)" if i else ""
            return Choice(profile, f"this GPU has {gpu_gb:.0f} GB{bigger}")
    return Choice(None, f"this GPU has {gpu_gb:.0f} GB; {smallest}")


def profile_settings(model: str | None, name: str) -> dict:
    """TrainConfig settings for ``--memory-profile name`` ("auto": the largest that fits this GPU;
    nothing for a model without profiles)."""
    if name != AUTO:
        return get_profile(model, name).train_settings()
    if not profiles(model):
        return {}
    choice = pick_profile(model, gpu_memory_gb())
    if choice.profile is None:
        raise InputError(f"No memory profile of {model!r} fits here: {choice.reason}. Pick a smaller model "
                         f"(`bat-app presets`), or name a profile to try anyway.")
    return choice.profile.train_settings()


def apply_profile(config: "TrainConfig", profile: MemoryProfile) -> "TrainConfig":
    """``config`` with the profile's memory and speed settings (every other setting kept)."""
    return dataclasses.replace(config, **profile.train_settings())


def gpu_memory_gb() -> float:
    """The first CUDA GPU's memory in GiB (0: none)."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 0.0


def bitsandbytes_version() -> tuple[int, ...] | None:
    """The installed bitsandbytes version (None: not installed)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    from importlib.metadata import version

    return tuple(int(p) for p in version("bitsandbytes").split(".")[:3] if p.isdigit())


def check_environment(config: "TrainConfig", model: str | None = None, cuda: bool | None = None) -> None:
    """Refuse 8-bit AdamW or an NF4 base where they cannot run (no bitsandbytes, no CUDA GPU),
    before anything loads; the message names the fix and a profile of ``model`` that needs neither."""
    wants = [w for w, on in (("8-bit AdamW", config.optimizer == "adamw8bit"),
                             (f"a {str(config.quantize).upper()} (4-bit) base", config.quantize is not None)) if on]
    if not wants:
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    version = bitsandbytes_version()
    problem = None
    if not cuda:
        problem = "bitsandbytes needs a CUDA GPU and none was found"
    elif version is None:
        problem = "bitsandbytes is not installed: `pip install bitsandbytes`"
    elif config.quantize is not None and version < BNB_MIN_VERSION:
        problem = (f"bitsandbytes {'.'.join(map(str, version))} is too old for 4-bit loading: "
                   f"`pip install -U bitsandbytes` (>= {'.'.join(map(str, BNB_MIN_VERSION))})")
    if problem is None:
        return
    source = f"The memory profile {config.memory_profile!r}" if config.memory_profile else "This training config"
    others = [p for p in profiles(model) if not p.needs_bitsandbytes]
    instead = (f"or use the {others[-1].name!r} memory profile (it needs {others[-1].min_gpu_gb:g} GB of GPU memory)"
               if others and cuda else "or train with optimizer 'adamw' and no `quantize`")
    raise InputError(f"{source} uses {' and '.join(wants)}, but {problem}; {instead}.")


def load_settings(config: "TrainConfig") -> dict:
    """What ``load_components`` takes from a TrainConfig: the weight dtype and the quantised base."""
    dtype = {"auto": None, "no": "fp32", "fp16": "fp16", "bf16": "bf16"}[config.mixed_precision]
    return {"dtype": dtype, "quantize": config.quantize}


def quantization_config(quantize: str, dtype):
    """diffusers' ``BitsAndBytesConfig`` for ``quantize`` (nf4), computing in ``dtype`` (as diffusers'
    ``flux_lora_quantization`` example: 4-bit NF4 weights, LoRA adapters trained on top)."""
    from diffusers import BitsAndBytesConfig

    if quantize != "nf4":
        raise InputError(f"`quantize` must be one of {QUANTIZATIONS} or null, got {quantize!r}.")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def adamw_class(optimizer: str):
    """The AdamW to train with: torch's, or bitsandbytes' 8-bit one (``check_environment`` first)."""
    import torch

    if optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit
    return torch.optim.AdamW
