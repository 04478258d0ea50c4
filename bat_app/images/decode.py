"""Read and decode one image file safely; the internals behind ``open_user_image``.

Decoding untrusted files is where things go wrong, so everything here is defensive: the
byte size is checked before reading, the pixel count from the header before decoding, the
whole first frame is decoded at once so truncation surfaces here, and every failure
becomes an :class:`~bat_app.errors.ImageError` naming the file and what to do.

    >>> image, notes = decode(Path("photo.png").read_bytes(), "photo.png",  # doctest: +SKIP
    ...                       max_pixels=50_000_000, min_side=64)
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from bat_app.errors import ImageError

_HEIF_SUFFIXES = {".heic", ".heif"}
# Pillow raises these (besides UnidentifiedImageError) on damaged files; its own fuzzing
# tests accept the same set. Anything else is a bug and is left to propagate. The one list of
# the package: whatever decodes untrusted images (intake, pool building) catches these.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError,
                 TypeError, ZeroDivisionError)
# A decompression bomb (more pixels than allowed): refused before decoding.
BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# Image.MAX_IMAGE_PIXELS and the warnings filters are process-wide; the lock keeps two
# intakes from restoring each other's values halfway through. (Other code decoding at the
# same moment sees our limit, which by default is stricter than Pillow's: fails safe.)
_DECODER_LOCK = threading.Lock()


def fail(name: str, reason: str) -> ImageError:
    """The error for one unusable file: the message starts with its name."""
    return ImageError(f"{name}: {reason}", problems={name: reason})


@contextlib.contextmanager
def _decoder_guard(max_pixels: int) -> Iterator[None]:
    """Hold the decoder settings for one image: our pixel limit, bomb warnings as errors,
    truncated data refused. Everything is restored on exit.
    """
    with _DECODER_LOCK, warnings.catch_warnings():
        # Pillow only warns between 1x and 2x its limit; a warning must stop decoding too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def read_bytes(path: Path, name: str, max_file_bytes: int) -> bytes:
    """Return the file's bytes, or raise :class:`ImageError` naming ``name`` and the fix."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise fail(name, f"file not found ({path}). Check the path, or upload the image "
                         "again.") from None
    except OSError as exc:
        raise fail(name, f"cannot be read ({exc.strerror}). Check the path and the file's "
                         "permissions.") from exc
    if path.is_dir():
        raise fail(name, f"is a folder ({path}), not an image. Pass folders to "
                         "load_user_images, which reads the images inside.")
    # Checked before reading so an accidental video or disk image never enters memory.
    if size > max_file_bytes:
        raise fail(name, too_many_bytes(size, max_file_bytes))
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(name, f"cannot be read ({exc.strerror}). Check the file's "
                         "permissions.") from exc


def _format_bytes(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MB"
    return f"{count / 1024:.1f} KB" if count >= 1024 else f"{count} bytes"


def too_many_bytes(size: int, max_file_bytes: int) -> str:
    """The reason given for a file over ``max_file_bytes``."""
    return (f"file is {_format_bytes(size)}; the limit is "
            f"{_format_bytes(max_file_bytes)}. Export a smaller JPEG (about 2048 px "
            "on the long side is plenty) or raise max_file_bytes.")


def _looks_like_heif(data: bytes, name: str) -> bool:
    return Path(name).suffix.lower() in _HEIF_SUFFIXES or data[4:12] in (
        b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1")


def decode(data: bytes, name: str, max_pixels: int, min_side: int
           ) -> tuple[Image.Image, list[str]]:
    """Fully decode the first frame of ``data``; return it and notes for the user.

    Raises:
        ImageError: not an image, damaged, truncated, too many pixels or too small.
    """
    notes: list[str] = []
    try:
        with _decoder_guard(max_pixels):
            # open() reads only the header, and Pillow checks its size against our limit
            # there, before any pixel is decoded (and again for frames and sub-images).
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            # Unreachable while Pillow keeps that check; kept so a Pillow change cannot
            # silently let a bomb through.
            if width * height > max_pixels:
                size = f"{width}x{height} = {width * height:,} pixels"
                raise fail(name, _too_many_pixels(size, max_pixels))
            if min(width, height) < min_side:
                raise fail(name, f"is only {width}x{height} pixels; the short side must be "
                                 f"at least {min_side} px. Use a larger photo.")
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                image.seek(0)
                # MPO is a camera JPEG with an embedded preview, not an animation.
                if image.format != "MPO":
                    notes.append(f"has {frames} frames (animated or multi-page); only the "
                                 "first frame is used.")
            image.load()  # decode everything now: truncation must surface here, not later
    except ImageError:
        raise  # ours, already naming the file (and a ValueError, so caught before those)
    except UnidentifiedImageError as exc:
        if _looks_like_heif(data, name):
            raise fail(name, "is a HEIC/HEIF photo, which is not supported. Export it as "
                             "JPEG (iPhone: Settings > Camera > Formats > Most "
                             "Compatible).") from exc
        raise fail(name, "is not an image file Pillow can read (JPEG, PNG, WebP, GIF, BMP, "
                         "TIFF...). If it is a photo, re-save it as JPEG or PNG.") from exc
    except BOMB_ERRORS as exc:
        # Pillow says "Image size (N pixels) exceeds limit ..."; the image itself is gone.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "over the limit"
        raise fail(name, _too_many_pixels(size, max_pixels)) from exc
    except DECODE_ERRORS as exc:
        raise fail(name, f"is damaged or truncated ({exc}). Re-export or upload the "
                         "original photo again.") from exc
    return image, notes


def _too_many_pixels(size: str, max_pixels: int) -> str:
    return (f"is too large to decode safely ({size}; the limit is {max_pixels:,} "
            "pixels, a guard against decompression bombs). Downscale it, e.g. to 4096 px "
            "on the long side, or raise max_pixels.")
