"""How closely the subject of a generated image matches the user's photos, pixel for pixel: the
check that sees what a small CLIP misses (a dot, a checker, an outline).

DreamBench scores subject fidelity with DINO rather than CLIP-I because DINO sees fine detail.
On the shapes backbone's 32-pixel samples no feature network sees more than the pixels do, so
the subject itself is compared:

    patch    the image's subject, found on its plain background (``images.subject_mask``), cut to
             its bounding box and scaled to PATCH x PATCH (position and size no longer matter)
    match    1 - the mean RGB difference (0-1) over the pixels that are subject in both patches
    score    a sample's best match among the photos (they show one subject in several places and
             sizes); none where no subject is found
    appearance  the mean score of the samples where a subject is found (0 if it is in none): a
             sample whose subject runs off every edge has no plain border to find it on, and
             counting it as 0 would punish size, not a lost detail (twenty-first session)

    >>> from PIL import Image, ImageDraw
    >>> def square(fill, dot=None, at=(8, 8)):
    ...     im = Image.new("RGB", (32, 32), "white")
    ...     ImageDraw.Draw(im).rectangle((at[0], at[1], at[0] + 11, at[1] + 11), fill=fill)
    ...     if dot:
    ...         ImageDraw.Draw(im).rectangle((at[0] + 4, at[1] + 4, at[0] + 7, at[1] + 7), fill=dot)
    ...     return im
    >>> photos = [square("red", dot="blue")]
    >>> same_elsewhere, without_dot = square("red", dot="blue", at=(16, 2)), square("red")
    >>> round(appearance([same_elsewhere], photos), 3), round(appearance([without_dot], photos), 3)
    (1.0, 0.928)
    >>> sample_matches([Image.effect_noise((32, 32), 60), same_elsewhere], photos)
    [None, 1.0]
    >>> appearance([Image.effect_noise((32, 32), 60)], photos)
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..images.subject_mask import subject_mask

PATCH = 16  # the shapes subjects span ~10-20 pixels of a 32-pixel image: no detail is lost


def subject_patch(image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(RGB patch in 0-1, boolean subject map), both PATCH x PATCH, or None when the image has
    no plain background or no subject on it."""
    mask = subject_mask(image)
    if mask is None:
        return None
    box = mask.getbbox()
    if box is None:
        return None
    rgb = image.convert("RGB").crop(box).resize((PATCH, PATCH), Image.Resampling.BILINEAR)
    # NEAREST keeps the map boolean; BILINEAR on it would smear the outline into half-subject pixels
    inside = mask.crop(box).resize((PATCH, PATCH), Image.Resampling.NEAREST)
    return np.asarray(rgb, dtype=np.float32) / 255.0, np.asarray(inside) > 127


def match(sample: tuple[np.ndarray, np.ndarray], photo: tuple[np.ndarray, np.ndarray]) -> float:
    """1 - the mean colour difference over the pixels that are subject in both patches (0 when
    the two subjects share no pixel)."""
    both = sample[1] & photo[1]
    if not both.any():
        return 0.0
    return 1.0 - float(np.abs(sample[0][both] - photo[0][both]).mean())


def sample_matches(samples: Sequence[Image.Image], photos: Sequence[Image.Image]) -> list[float | None]:
    """Each sample's best match among ``photos``; None where no subject is found in it."""
    references = [p for p in map(subject_patch, photos) if p is not None]
    if not references:
        raise ValueError("none of the photos has a plain background, so no subject can be cut "
                         "from them: the pixel match needs product-shot style photos")
    patches = map(subject_patch, samples)
    return [None if patch is None else max(match(patch, ref) for ref in references) for patch in patches]


def appearance(samples: Sequence[Image.Image], photos: Sequence[Image.Image]) -> float:
    """The mean best match of the samples where a subject is found (see module doc)."""
    return mean_found(sample_matches(samples, photos))


def mean_found(matches: Sequence[float | None]) -> float:
    """The mean of the matches that are not None; 0 when all are.

    >>> mean_found([0.9, None, 0.7]), mean_found([None])
    (0.8, 0.0)
    """
    found = [m for m in matches if m is not None]
    return float(np.mean(found)) if found else 0.0
