"""Where the shipped Shapes-world assets live (inside the repository)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS_DIR = REPO_ROOT / "assets"
SHAPES_DIR = ASSETS_DIR / "shapes"
SUBJECTS_DIR = ASSETS_DIR / "subjects"


@dataclass(frozen=True)
class ShapesPaths:
    root: Path
    backbone: Path  # diffusers StableDiffusionPipeline folder (+ bat_shapes.json)
    clip: Path  # open_clip_config.json + open_clip_model.safetensors
    classifier: Path  # classifier.json + model.safetensors
    subjects: Path  # <name>/subject.json + example uploads


def shapes_paths(root: Path | str | None = None, subjects: Path | str | None = None) -> ShapesPaths:
    """Paths of the shapes assets (default: the ones shipped in assets/)."""
    root = Path(root) if root is not None else SHAPES_DIR
    return ShapesPaths(root=root, backbone=root / "backbone", clip=root / "clip",
                       classifier=root / "classifier",
                       subjects=Path(subjects) if subjects is not None else SUBJECTS_DIR)
