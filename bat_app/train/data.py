"""What the trainer trains on: examples (image + caption) grouped by role, each group weighted.

Instance images (the user's subject), augmentation examples (backbone images with their own
captions, weight lambda: the hook BAT uses) and prior-preservation class images are all the
same thing to the training step: a group of examples and a loss weight. Every step draws
``batch_size`` examples from each non-empty group.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import pixel_digest
from ..images.subject_mask import backdrop_colours, backdrop_region, new_backdrop
from .config import CAPTION_PLAIN_COPIES


@dataclass
class Example:
    """One training image with its caption. ``key`` identifies the pixels (for caching)."""

    image: Image.Image
    caption: str
    key: str = ""
    name: str = ""

    def __post_init__(self):
        if not self.key:
            self.key = image_key(self.image)


@dataclass
class ExampleGroup:
    role: str                     # "instance", "augment" or "prior"
    examples: list[Example]
    weight: float = 1.0


def image_key(image: Image.Image) -> str:
    """Content hash of an image's pixels (mode and size included)."""
    return pixel_digest(image)[:32]  # the package's one pixel hash; 32 hex digits keep cache keys as they were


def read_caption(image_path: Path) -> str | None:
    """The same-name .txt caption next to an image, if any (e.g. dog01.jpg -> dog01.txt)."""
    txt = image_path.with_suffix(".txt")
    if txt.is_file():
        text = txt.read_text(encoding="utf-8", errors="replace").strip()
        return text or None
    return None


def instance_examples(images, prompt: str, token: str, use_captions: bool = False,
                      caption_mix: str = "half") -> list[Example]:
    """Examples for the user's images. With ``use_captions`` each image's .txt caption is used: one
    with the trigger token as written, one without it continues the instance prompt ("on the
    beach" -> "a photo of sks dog on the beach"), so it still teaches the token. ``caption_mix``
    "half" adds each image a second time with the plain instance prompt, "third" twice more
    (see TrainConfig)."""
    plain_copies = CAPTION_PLAIN_COPIES[caption_mix] if use_captions else 0
    examples = []
    for item in images:
        caption = prompt
        if use_captions:
            if item.source is None:
                raise InputError(f"{item.name}: per-image captions need the image's .txt file next to it.")
            text = read_caption(Path(item.source))
            if text is None:
                raise InputError(
                    f"{item.name}: --captions is on but {Path(item.source).with_suffix('.txt').name} is "
                    f"missing or empty. Add a caption file or drop --captions.")
            caption = text if token in text.split() else f"{prompt} {text}"
        examples.append(Example(item.image, caption, name=item.name))
        examples += [Example(item.image, prompt, name=item.name)] * plain_copies
    return examples


def with_backdrop_swaps(examples: Sequence[Example], swaps: int, prompt: str,
                        seed: int) -> tuple[list[Example], list[str]]:
    """Each instance example ``1 + swaps`` times: an example captioned with the plain instance
    prompt whose photo has a plain backdrop comes as it is plus on ``swaps`` random other plain
    colours (drawn from ``seed``); the others come as they are, repeated, so every example keeps
    its share of the draws. Returns the examples and the names of the photos that got swaps."""
    if swaps <= 0:
        return list(examples), []
    rng = np.random.default_rng(seed)
    out, swapped = [], []
    for example in examples:
        # A caption that states the context ("on a yellow background") would be contradicted.
        region = backdrop_region(example.image) if example.caption == prompt else None
        colours = [] if region is None else backdrop_colours(example.image, swaps, rng, region)
        copies = [Example(new_backdrop(example.image, c, region), example.caption, name=example.name)
                  for c in colours]
        out += [example] * (1 + swaps - len(copies)) + copies
        if copies:
            swapped.append(example.name)
    return out, list(dict.fromkeys(swapped))


def examples_from_pairs(pairs: Sequence[tuple[Image.Image | str | Path | bytes, str]]) -> list[Example]:
    """Augmentation examples from (image, caption) pairs; images may be PIL, paths or bytes."""
    out = []
    for image, caption in pairs:
        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                image = im.convert("RGB")
        elif isinstance(image, bytes):
            with Image.open(io.BytesIO(image)) as im:
                image = im.convert("RGB")
        out.append(Example(image.convert("RGB"), caption))
    return out
