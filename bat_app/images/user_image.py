"""What intake produces and duplicate detection reads: one accepted image, and the pixel hash.

Both ``intake`` and ``duplicates`` import this module and neither imports the other's
internals: intake calls duplicate detection, so this is where their shared types live.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image


@dataclass
class UserImage:
    """One accepted user image, decoded and ready for cropping."""

    name: str  # file name as the user knows it (basename)
    image: Image.Image  # RGB, EXIF orientation applied
    sha256: str  # of the file bytes, to spot byte-identical uploads
    source: Path | None  # None when the image came as bytes (e.g. an upload)
    original_mode: str  # Pillow mode before conversion, e.g. "RGBA", "CMYK"
    original_size: tuple[int, int]  # as stored in the file, before EXIF rotation
    warnings: list[str] = field(default_factory=list)  # "<name>: ..." remarks for the user


def pixel_digest(image: Image.Image) -> str:
    """SHA-256 (hex) of an image's pixels, mode and size: equal for the same picture however
    it was encoded, different for any changed pixel. The one pixel hash of the package
    (duplicate uploads, the trainer's latent cache).

    >>> a, b = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "red")
    >>> pixel_digest(a) == pixel_digest(b), pixel_digest(a) == pixel_digest(a.convert("RGBA"))
    (True, False)
    """
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
