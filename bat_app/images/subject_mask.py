"""Where the subject is in a photo on a plain background: the mask that masked training weights,
and the same photo on other plain backdrops (backdrop swaps).

Product shots and cut-outs sit on one plain colour (a transparent PNG is flattened onto white
at intake, so it is one of them). Such a photo's border is almost all that colour, and the
subject is what differs from it. A photo whose border is not plain (a dog on a lawn) gets no
mask and is trained whole: finding the subject there takes a segmentation model, which the app
does not ship.

    >>> from PIL import Image, ImageDraw
    >>> photo = Image.new("RGB", (32, 32), "white")
    >>> ImageDraw.Draw(photo).rectangle((8, 8, 15, 15), fill="red")
    >>> mask = subject_mask(photo)
    >>> mask.getpixel((10, 10)), mask.getpixel((0, 0)), subject_mask(Image.effect_noise((32, 32), 60))
    (255, 0, None)
    >>> copy = new_backdrop(photo, (0, 0, 255))
    >>> copy.getpixel((0, 0)), copy.getpixel((10, 10))
    ((0, 0, 255), (255, 0, 0))
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# A border pixel counts as the background colour within this channel difference (JPEG noise,
# soft shadows). The border has to be this plain for the photo to count as a plain background:
# not all of it, since a large subject may run off one edge (the shapes subjects' photos at
# "bottom" or "right" leave 82-87% of their border plain).
TOLERANCE = 24
PLAIN_BORDER = 0.75
MIN_SUBJECT = 0.005  # a "subject" under half a percent of the pixels is noise: no mask
SHARED_COLOUR = 0.02  # a subject with more of its pixels in the backdrop's colour gets no swaps


def _plain_background(image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(the background colour, a boolean map of every pixel of that colour), or None when the
    border is not plain or the subject would be too small to be one."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    colour = np.median(border, axis=0)
    plain = np.abs(border - colour).max(axis=-1) <= TOLERANCE
    if plain.mean() < PLAIN_BORDER:
        return None
    background = np.abs(rgb - colour).max(axis=-1) <= TOLERANCE
    if (~background).mean() < MIN_SUBJECT:
        return None
    return colour, background


def subject_mask(image: Image.Image) -> Image.Image | None:
    """An "L" mask of ``image`` (255 on the subject, 0 on the background), or None when the
    background is not plain. Background-coloured pixels inside the subject (a white stripe on a
    product shot on white) count as background: the trainer's mask is coarser than they are
    (one latent cell holds 8x8 pixels, and a cell that holds any subject pixel is subject)."""
    found = _plain_background(image)
    if found is None:
        return None
    return Image.fromarray((~found[1]).astype(np.uint8) * 255, "L")


def backdrop_region(image: Image.Image) -> np.ndarray | None:
    """A boolean map of the backdrop: the background-coloured pixels joined to the border; None
    when the background is not plain, or when the subject wears the backdrop's colour itself
    (white checks on white): where those parts touch the edge, no colour test can tell subject
    from backdrop, and a swap would repaint a piece of the subject."""
    found = _plain_background(image)
    if found is None:
        return None
    plain = Image.fromarray(found[1].astype(np.uint8) * 255, "L").copy()  # a copy: fromarray shares a read-only buffer
    h, w = found[1].shape
    border = [(x, y) for x in range(w) for y in (0, h - 1)] + [(x, y) for y in range(h) for x in (0, w - 1)]
    for xy in border:  # one fill per untouched plain stretch of the border (most fills cover all of it)
        if plain.getpixel(xy) == 255:
            ImageDraw.floodfill(plain, xy, 128, thresh=0)
    region = np.asarray(plain) == 128
    if (found[1] & ~region).sum() > SHARED_COLOUR * (~region).sum():
        return None
    return region


def new_backdrop(image: Image.Image, colour: tuple[int, int, int],
                 region: np.ndarray | None = None) -> Image.Image:
    """``image`` with its backdrop (``backdrop_region``, or the given ``region``) painted ``colour``."""
    region = backdrop_region(image) if region is None else region
    rgb = np.array(image.convert("RGB"))
    rgb[region] = colour
    return Image.fromarray(rgb, "RGB")


def backdrop_colours(image: Image.Image, n: int, rng: np.random.Generator,
                     region: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """``n`` random plain colours for ``image``'s backdrop, each far (more than twice the
    tolerance) from its old one and from all but a twentieth of the subject's pixels, so no
    copy hides the subject in its own colour."""
    region = backdrop_region(image) if region is None else region
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    old, subject = rgb[region][:1], rgb[~region]
    colours = []
    for _ in range(64 * n):  # a subject of every colour could refuse all; stop somewhere
        if len(colours) == n:
            break
        colour = rng.integers(0, 256, 3)
        near = lambda pixels: np.abs(pixels - colour).max(axis=-1) <= 2 * TOLERANCE
        if near(old).any() or near(subject).mean() > 0.05:
            continue
        colours.append(tuple(int(c) for c in colour))
    return colours
