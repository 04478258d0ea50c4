"""Find exact and near-duplicate user images (reported as warnings, never as errors).

A duplicate is not fatal, but it wastes one of the few training views and makes the LoRA
overfit that pose, so the user is told which files look alike.

    >>> from bat_app.images import load_user_images
    >>> report = load_user_images("photos/")            # doctest: +SKIP
    >>> [(g.kind, g.names) for g in report.duplicates]    # doctest: +SKIP
    [('exact', ['01 copy.jpg', '01.jpg']), ('near', ['02.jpg', '02_small.jpg'])]

Near duplicates use a 64-bit perceptual hash (pHash: low frequencies of a 32x32 DCT)
plus a coarse colour check. On the DreamBench photos a half-size re-encoded JPEG copy is
within 2 bits of its original while different photos of one subject are 18 or more bits
apart, so the default threshold of 6 sits well clear of both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from bat_app.errors import InputError
from bat_app.images.user_image import UserImage, pixel_digest

HASH_BITS = 64
_DCT_SIZE = 32
# pHash sees only luminance structure, so a blue and a white flat image hash alike. Near
# duplicates must also match in colour: mean absolute difference of 4x4 RGB thumbnails,
# in 0..255 levels. A third-size JPEG copy of a DreamBench photo differs by under 0.5; a
# recoloured or differently lit photo by far more.
_MAX_COLOUR_DIFFERENCE = 12.0


@dataclass
class DuplicateGroup:
    """Images that look alike. ``kind`` is "exact" (same file or same pixels) or "near"."""

    kind: str
    names: list[str]


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_matrix(_DCT_SIZE)


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """Return the 64-bit pHash of ``image`` as a boolean array (compare with Hamming distance).

    >>> bool((perceptual_hash(Image.new("L", (50, 40))) == 0).all())
    True
    """
    # BOX averages whole source pixels, which removes JPEG noise and is fast on big photos.
    small = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX)
    coefficients = _DCT @ np.asarray(small, dtype=np.float64) @ _DCT.T
    # Rounding drops float noise (~1e-12), so flat areas give stable bits, not random ones.
    low = np.round(coefficients[:8, :8].ravel(), 3)
    # The DC term (overall brightness) is left out of the median: it would dominate it.
    return low > np.median(low[1:])


def _colour_thumbnail(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BOX), np.float64)


def _groups(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (in input order) of the graph on range(count) with ``pairs``."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[max(root(a), root(b))] = min(root(a), root(b))
    components: dict[int, list[int]] = {}
    for i in range(count):
        components.setdefault(root(i), []).append(i)
    return [members for members in components.values() if len(members) > 1]


def find_duplicates(images: Sequence[UserImage], near_threshold: int = 6) -> list[DuplicateGroup]:
    """Group ``images`` that are identical ("exact") or look nearly identical ("near").

    Args:
        images: opened user images (see :func:`bat_app.images.open_user_image`).
        near_threshold: the largest Hamming distance, out of 64 bits, between perceptual
            hashes that still counts as a near duplicate; 0 finds only re-encodes.

    Returns:
        Exact groups first, then near groups, each listing names in input order. An exact
        group takes part in near matching through its first image only, so a file is
        never reported twice for the same likeness.
    """
    if isinstance(near_threshold, bool) or not isinstance(near_threshold, int) \
            or not 0 <= near_threshold < HASH_BITS:
        raise InputError(f"near_threshold must be a whole number from 0 to {HASH_BITS - 1} "
                         f"(got {near_threshold!r}); the default 6 suits photos.")
    count = len(images)
    keys = [(item.sha256, pixel_digest(item.image)) for item in images]
    exact_pairs = [(a, b) for a in range(count) for b in range(a + 1, count)
                   if keys[a][0] == keys[b][0] or keys[a][1] == keys[b][1]]
    exact = _groups(count, exact_pairs)

    repeated = {i for members in exact for i in members[1:]}
    kept = [i for i in range(count) if i not in repeated]
    hashes = {i: perceptual_hash(images[i].image) for i in kept}
    colours = {i: _colour_thumbnail(images[i].image) for i in kept}
    near_pairs = [(a, b) for ai, a in enumerate(kept) for b in kept[ai + 1:]
                  if int(np.count_nonzero(hashes[a] != hashes[b])) <= near_threshold
                  and np.abs(colours[a] - colours[b]).mean() <= _MAX_COLOUR_DIFFERENCE]
    near = _groups(count, near_pairs)

    return ([DuplicateGroup("exact", [images[i].name for i in members]) for members in exact]
            + [DuplicateGroup("near", [images[i].name for i in members]) for members in near])


def describe(group: DuplicateGroup) -> str:
    """One user-facing warning line for ``group``, with what to do about it."""
    names = ", ".join(group.names)
    if group.kind == "exact":
        return (f"{names} are the same image (exact duplicates). Keep one: copies add no "
                "new view and make the LoRA overfit it.")
    return (f"{names} look almost the same (near duplicates). Consider replacing all but "
            "one with photos from other angles or backgrounds.")
