"""Image intake: open, check and prepare the user's subject photos.

    >>> from bat_app.images import load_user_images, prepare_for_training
    >>> report = load_user_images("photos/dog", resolution=512)            # doctest: +SKIP
    >>> for line in report.warnings:                                         # doctest: +SKIP
    ...     print(line)
    >>> batch = [prepare_for_training(u.image, 512) for u in report.images]  # doctest: +SKIP

Modules:
    intake      reading files, limits, decoding, batch checks (``load_user_images``)
    convert     any Pillow mode -> 8-bit RGB, square crop to the training size
    duplicates  exact and perceptual-hash near-duplicate detection
    user_image  the accepted image both of those share, and the one pixel hash
    decode      safe decoding; ``DECODE_ERRORS``/``BOMB_ERRORS``, what Pillow raises on bad files

Unusable files raise :class:`bat_app.errors.ImageError` naming each file and what to do;
duplicates and conversions only produce warnings. The user's files are never modified.
"""

from bat_app.images.convert import prepare_for_training, to_rgb
from bat_app.images.decode import BOMB_ERRORS, DECODE_ERRORS
from bat_app.images.duplicates import DuplicateGroup, find_duplicates, perceptual_hash
from bat_app.images.intake import IntakeLimits, IntakeReport, load_user_images, open_user_image
from bat_app.images.user_image import UserImage, pixel_digest

__all__ = [
    "BOMB_ERRORS",
    "DECODE_ERRORS",
    "DuplicateGroup",
    "IntakeLimits",
    "IntakeReport",
    "UserImage",
    "find_duplicates",
    "load_user_images",
    "open_user_image",
    "perceptual_hash",
    "pixel_digest",
    "prepare_for_training",
    "to_rgb",
]
