"""Where the subject is in a photo on a plain background: the mask that masked training weights.

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
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# A border pixel counts as the background colour within this channel difference (JPEG noise,
# soft shadows). The border has to be this plain for the photo to count as a plain background:
# not all of it, since a large subject may run off one edge (the shapes subjects' photos at
# "bottom" or "right" leave 82-87% of their border plain).
TOLERANCE = 24
PLAIN_BORDER = 0.75
MIN_SUBJECT = 0.005  # a "subject" under half a percent of the pixels is noise: no mask


def subject_mask(image: Image.Image) -> Image.Image | None:
    """An "L" mask of ``image`` (255 on the subject, 0 on the background), or None when the
    background is not plain. Background-coloured pixels inside the subject (a white stripe on a
    product shot on white) count as background: the trainer's mask is coarser than they are
    (one latent cell holds 8x8 pixels, and a cell that holds any subject pixel is subject)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    colour = np.median(border, axis=0)
    plain = np.abs(border - colour).max(axis=-1) <= TOLERANCE
    if plain.mean() < PLAIN_BORDER:
        return None
    subject = np.abs(rgb - colour).max(axis=-1) > TOLERANCE
    if subject.mean() < MIN_SUBJECT:
        return None
    return Image.fromarray(subject.astype(np.uint8) * 255, "L")
