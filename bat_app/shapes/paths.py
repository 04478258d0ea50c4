"""Where the Shapes-world assets live: ``<assets>/shapes`` and ``<assets>/subjects``, where
``<assets>`` is :func:`bat_app.paths.assets_dir` (``BAT_ASSETS``, else the repository's
``assets/``). Every shapes model (backbone, CLIP, attribute classifier) resolves through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bat_app.paths import assets_dir

# The defaults as they stood at import time, for CLI defaults and help texts; code that opens
# assets calls shapes_paths(), which reads BAT_ASSETS on every call.
ASSETS_DIR = assets_dir()
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
    """Paths of the shapes assets (default: those under the assets folder in use now).

    >>> shapes_paths("/srv/assets/shapes").clip.as_posix()
    '/srv/assets/shapes/clip'
    """
    root = Path(root) if root is not None else assets_dir() / "shapes"
    return ShapesPaths(root=root, backbone=root / "backbone", clip=root / "clip",
                       classifier=root / "classifier",
                       subjects=Path(subjects) if subjects is not None else assets_dir() / "subjects")
