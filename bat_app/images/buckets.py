"""Aspect-ratio buckets: train on a photo at the shape closest to its own instead of a square crop.

SDXL was trained on a fixed list of shapes ("buckets") of about 1024² pixels, from 1:2 to 2:1,
and told by its ``time_ids`` what size the photo was and where it was cropped. Cropping a
3:4 portrait to a square throws away a quarter of it (often the subject's head or feet) and
describes the result wrongly; a bucket keeps nearly all of it. The recipe is kohya-ss's
bucketing and diffusers' ``train_dreambooth_lora_sdxl.py`` time ids:

    >>> buckets = bucket_sizes(1024, step=64)
    >>> buckets[0], buckets[len(buckets) // 2], buckets[-1]
    ((1408, 704), (1024, 1024), (704, 1408))
    >>> p = place(3000, 4000, buckets)          # a 4:3 landscape phone photo, (h, w)
    >>> p.bucket, p.resized, p.crop
    ((896, 1152), (896, 1195), (0, 21))
    >>> p.time_ids                              # original (h, w), crop (top, left), target (h, w)
    (3000, 4000, 0, 21, 896, 1152)

Every step of the trainer then sends each bucket through the denoiser as its own batch
(:func:`split_by_bucket`): a batch holds images of one shape only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

from PIL import Image

from bat_app.errors import InputError

MAX_RATIO = 2.0   # the widest bucket: 2:1 (and 1:2)
MIN_AREA = 0.9    # a bucket keeps at least this share of resolution² pixels


@dataclass(frozen=True)
class Placement:
    """Where a photo of ``original`` size (h, w) goes: resized to cover ``bucket`` (``resized``),
    then cropped centrally at ``crop`` (top, left) to the bucket's (h, w)."""

    original: tuple[int, int]
    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int]

    @property
    def time_ids(self) -> tuple[int, int, int, int, int, int]:
        """SDXL's micro-conditioning: original_h, original_w, crop_top, crop_left, target_h, target_w."""
        return (*self.original, *self.crop, *self.bucket)


def bucket_sizes(resolution: int, step: int = 64, max_ratio: float = MAX_RATIO,
                 min_area: float = MIN_AREA) -> list[tuple[int, int]]:
    """The (h, w) buckets for a model trained at ``resolution``², tallest first.

    Each side is a multiple of ``step`` (the VAE's factor times 8 latent pixels: 64 px for
    SDXL); for each short side the long side is the largest one that keeps the bucket within
    ``resolution²`` pixels and ``max_ratio``; buckets under ``min_area`` of it are left out.

    >>> bucket_sizes(512)
    [(640, 384), (576, 448), (512, 512), (448, 576), (384, 640)]

    Raises:
        InputError: ``resolution`` is smaller than ``step``.
    """
    if resolution < step:
        raise InputError(f"resolution {resolution} px is smaller than the bucket step {step} px; "
                         f"train at {step} px or more.")
    area = resolution * resolution
    found = set()
    for short in range(step, resolution + 1, step):
        long = min(area // short // step * step, int(max_ratio * short) // step * step)
        if long >= short and long * short >= min_area * area:
            found |= {(long, short), (short, long)}
    return sorted(found, key=lambda hw: (-hw[0] / hw[1], hw))


def choose_bucket(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the photo's (in log ratio, so 2:1 and 1:2 are
    equally far from 1:1); on a tie the larger bucket.

    >>> choose_bucket(4000, 3000, bucket_sizes(1024))   # a 3:4 portrait
    (1152, 896)
    >>> choose_bucket(500, 5000, bucket_sizes(1024))    # a 1:10 panorama: the widest bucket
    (704, 1408)
    """
    ratio = math.log(height / width)
    return min(buckets, key=lambda hw: (abs(math.log(hw[0] / hw[1]) - ratio), -hw[0] * hw[1]))


def place(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> Placement:
    """Where a ``height`` x ``width`` photo goes: its bucket, the size that covers it, the central crop."""
    bh, bw = choose_bucket(height, width, buckets)
    scale = max(bh / height, bw / width)
    rh, rw = max(bh, round(height * scale)), max(bw, round(width * scale))
    return Placement((height, width), (bh, bw), (rh, rw), ((rh - bh) // 2, (rw - bw) // 2))


def fit_to_bucket(image: Image.Image, placement: Placement) -> Image.Image:
    """``image`` resized to cover its bucket and cropped centrally: ``placement.bucket`` (h, w), RGB."""
    from bat_app.images.convert import to_rgb

    rgb = image if image.mode == "RGB" and "transparency" not in image.info else to_rgb(image)[0]
    if (rgb.height, rgb.width) != placement.original:
        raise InputError(f"fit_to_bucket: the image is {rgb.height}x{rgb.width} (h x w) but the placement "
                         f"was made for {placement.original[0]}x{placement.original[1]}.")
    (bh, bw), (rh, rw), (top, left) = placement.bucket, placement.resized, placement.crop
    if (rh, rw) == (bh, bw) == placement.original:
        return rgb.copy()
    # Resize and crop in one pass: the crop box in the photo's own pixels.
    sy, sx = placement.original[0] / rh, placement.original[1] / rw
    box = (left * sx, top * sy, (left + bw) * sx, (top + bh) * sy)
    return rgb.resize((bw, bh), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def split_by_bucket(shapes: Sequence[Hashable]) -> list[list[int]]:
    """Positions of a step's examples grouped by shape, in order of first appearance: one
    denoiser batch per group, so a batch never mixes buckets.

    >>> split_by_bucket([(4, 8, 8), (4, 6, 10), (4, 8, 8)])
    [[0, 2], [1]]
    """
    groups: dict[Hashable, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    return list(groups.values())
