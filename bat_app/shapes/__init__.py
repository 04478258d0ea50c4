"""The Shapes world: BAT Studio's offline backbone and the data it was pretrained on.

    from bat_app.shapes import ShapesWorld, render, SUBJECTS, shapes_paths
    items = ShapesWorld(seed=0).sample(4)          # .image (PIL), .caption, .attributes
    model, preprocess, tokenizer = load_shapes_clip()
    clf = load_attribute_classifier(); clf.predict([items[0].image])

Build everything (about 40 CPU-minutes): ``python -m bat_app shapes build``; write the
backbone's pretraining data as a pool: ``python -m bat_app shapes pool --out DIR --n N``;
print the target figures: ``python -m bat_app shapes targets``. See docs/shapes.md.
"""

from __future__ import annotations

from pathlib import Path

from bat_app.shapes.paths import ShapesPaths, shapes_paths
from bat_app.shapes.subjects import SUBJECTS, Subject, get_subject, subject_photos
from bat_app.shapes.world import (ATTRIBUTES, COLOURS, PATTERNS, SHAPES, ShapesItem, ShapesWorld,
                                  caption_for, parse_caption, render)

__all__ = ["ATTRIBUTES", "COLOURS", "PATTERNS", "SHAPES", "SUBJECTS", "ShapesItem", "ShapesPaths",
           "ShapesWorld", "Subject", "caption_for", "get_subject", "load_attribute_classifier",
           "load_shapes_clip", "parse_caption", "render", "shapes_paths", "subject_photos"]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        from bat_app.errors import ModelLoadError

        raise ModelLoadError(f"The shapes {what} is missing at {path}. Build it with "
                             "`python -m bat_app shapes build` (about 40 CPU-minutes).")
    return path


def load_shapes_clip(folder: Path | str | None = None):
    """(open_clip model, preprocess, tokenizer) of the shipped shapes CLIP (fp32, eval mode).

    ``tokenizer(list_of_str)`` returns ids (n, 32) like open_clip's tokenizers.
    """
    from bat_app.shapes.clip import load_clip

    return load_clip(_require(Path(folder) if folder else shapes_paths().clip, "CLIP"))


def load_attribute_classifier(folder: Path | str | None = None):
    """The attribute classifier; ``.predict(images) -> list[dict attribute -> value]``."""
    from bat_app.shapes.classifier import load_classifier

    return load_classifier(_require(Path(folder) if folder else shapes_paths().classifier,
                                    "attribute classifier"))
