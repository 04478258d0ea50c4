"""Model presets, kept as data in ``presets.json``, and how a ``--model`` value is resolved.

A model spec is a preset name (``shapes``, ``sd15``), a local diffusers folder, or a hub id:

    >>> resolve_model("shapes").source        # doctest: +SKIP
    PosixPath('.../assets/shapes/backbone')
    >>> resolve_model("runwayml/stable-diffusion-v1-5").is_local
    False
"""

from __future__ import annotations

import dataclasses

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..paths import assets_dir

PRESETS_FILE = Path(__file__).with_name("presets.json")


@dataclass(frozen=True)
class ModelSpec:
    """A backbone to load: where from, and the settings it was made for."""

    name: str                 # what the user typed: preset name, folder or hub id
    source: str | Path        # hub id (str) or local folder (Path)
    resolution: int = 512     # native training/sampling resolution
    sampling: dict = field(default_factory=lambda: {"steps": 30, "guidance_scale": 7.5})
    preset: str | None = None
    family: str | None = None  # a preset's model family; None: read from model_index.json
    license: str | None = None  # the base model's licence (Hub license id), when the preset says
    vae: str | Path | None = None  # a VAE loaded in place of the model's own (hub id or folder), e.g. SDXL's fp16 fix
    # images per pipeline call for class images and previews: 8 (what previews always drew) for the
    # large presets; a tiny CPU model draws far more at once for less time per image (shapes: 32)
    sample_batch: int = 8
    # methods a compare run trains side by side on a CPU, each lane on its own copy of the model:
    # a tiny model's step barely uses a second thread (shapes: 20.4 s per 100 steps at 2 threads,
    # 21.6 s at 1), so two 1-thread lanes nearly double the throughput. 1 (one after another) for
    # the large presets, which train on a GPU and would not fit twice.
    method_lanes: int = 1

    def training_sampling(self) -> dict:
        """How images that become training data (class images, a generated pool's items) are
        drawn: ``sampling``, with its ``class_image_steps`` as the steps where a preset sets them.
        Previews and "Try it" use ``sampling["steps"]``: on shapes 15 steps draw the same pictures
        as 25 (same LoRAs judged both ways: equal trait and recontext figures), but class
        images drawn with 15 moved ALBAT's single-seed figures by 20-30 points (docs/shapes.md),
        so the training data stays as measured."""
        sampling = dict(self.sampling)
        steps = sampling.pop("class_image_steps", None)
        return {**sampling, "steps": steps} if steps else sampling

    @property
    def is_local(self) -> bool:
        return isinstance(self.source, Path)


@lru_cache(maxsize=1)
def presets() -> dict[str, dict]:
    data = json.loads(PRESETS_FILE.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def default_preset() -> str:
    """``sd15`` where CUDA is available, else the CPU-sized ``shapes`` backbone."""
    return "sd15" if torch.cuda.is_available() else "shapes"


def resolve_model(spec: str | Path | None = None) -> ModelSpec:
    """Turn a ``--model`` value (preset, folder or hub id; None = default) into a ModelSpec."""
    name = str(spec) if spec is not None else default_preset()
    if name in presets():
        preset = presets()[name]
        source = preset["source"]
        if source.startswith("assets:"):
            source = assets_dir() / source.removeprefix("assets:")
        elif Path(source).is_absolute():
            source = Path(source)
        vae = resolve_vae(preset["vae"]) if preset.get("vae") else None
        return ModelSpec(name, source, preset["resolution"], dict(preset["sampling"]), preset=name,
                         family=preset.get("family"), license=preset.get("license"), vae=vae,
                         sample_batch=preset.get("sample_batch", ModelSpec.sample_batch),
                         method_lanes=preset.get("method_lanes", ModelSpec.method_lanes))

    path = Path(name).expanduser()
    if path.exists():
        return ModelSpec(name, path.resolve(), _native_resolution(path))
    # "org/name" (one slash, no leading ./ or /) is a hub id; anything else was meant as a path.
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return ModelSpec(name, name)
    raise ModelLoadError(
        f"Model {name!r} is neither a preset ({', '.join(presets())}), an existing folder, nor a "
        f"hub id of the form 'org/name'. Check the spelling or the path."
    )


def resolve_vae(vae: str | Path) -> str | Path:
    """A VAE named by a preset's ``vae`` or ``--vae``: an existing folder (a VAE folder, or a
    diffusers model folder whose ``vae/`` is used), ``assets:<path>``, or a hub id.

    >>> resolve_vae("madebyollin/sdxl-vae-fp16-fix")
    'madebyollin/sdxl-vae-fp16-fix'
    """
    name = str(vae)
    if name.startswith("assets:"):
        return assets_dir() / name.removeprefix("assets:")
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name
    raise ModelLoadError(f"VAE {name!r} is neither an existing folder nor a hub id of the form 'org/name'. "
                         f"Check the spelling or the path.")


def _native_resolution(folder: Path) -> int:
    """Guess a local SD model's resolution from its VAE config (sample_size), default 512."""
    try:
        vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
        return int(vae_cfg.get("sample_size", 512))
    except (OSError, ValueError):
        return 512


def license_line(name: str) -> str:
    """What the UI and ``bat-app presets`` say about a preset's licence (empty if unknown)."""
    preset = presets().get(name) or {}
    licence = preset.get("license")
    if not licence:
        return ""
    note = preset.get("license_note")
    return f"licence: {licence}" + (f" ({note})" if note else "")


def model_table() -> str:
    """The README's model table, made from ``presets.json`` (a test keeps the README equal to it):
    family, licence, resolution, the GPU memory of each memory profile and the measured speed."""
    from .memory import profiles

    rows = ["| preset | family | model | licence | resolution | GPU memory (memory profiles) | measured speed |",
            "|---|---|---|---|---|---|---|"]
    for name, preset in presets().items():
        memory = preset.get("memory", {})
        if memory.get("cpu"):
            need = "none: runs on CPU"
        elif profiles(name):
            need = "; ".join(f"`{p.name}` (from {p.min_gpu_gb:g} GB): {p.summary()}" for p in reversed(profiles(name)))
            need += "" if memory.get("measured") else " (typical, not measured here)"
        else:
            need = "not known"
        speed = preset.get("speed") or "not measured yet"
        source = preset["source"]
        model = f"`{source}`" if source.startswith("assets:") else f"[{source}](https://huggingface.co/{source})"
        rows.append(f"| `{name}` | {preset.get('family', 'sd')} | {model} | {preset.get('license', 'not stated')} | "
                    f"{preset['resolution']} px | {need} | {speed} |")
    return "\n".join(rows)


def from_known_keys(cls, data: dict, what: str, error: type[Exception] = ValueError):
    """``cls(**data)`` for a dataclass read from presets.json, refusing keys it does not know
    (a typo there would otherwise be silently ignored): ``what`` names the block in the message."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise error(f"{what}: unknown key(s) {unknown}; known: {sorted(known)}.")
    return cls(**data)
