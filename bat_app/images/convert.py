"""Turn any decoded Pillow image into the 8-bit RGB the trainer expects, and crop it square.

    >>> from PIL import Image
    >>> rgb, notes = to_rgb(Image.new("RGBA", (64, 64), (255, 0, 0, 0)))
    >>> rgb.mode, rgb.getpixel((0, 0)), notes
    ('RGB', (255, 255, 255), ['has transparent areas; they were filled with white.'])
    >>> prepare_for_training(Image.new("RGB", (300, 200)), 128).size
    (128, 128)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bat_app.errors import ImageError, InputError

_WHITE = (255, 255, 255)
# Modes that carry an alpha channel (premultiplied "RGBa"/"La" included): Pillow's
# convert("RGBA") un-premultiplies them, so one compositing path handles all of them.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Single-channel modes with more than 8 bits. convert("RGB") clips these to 0..255, which
# turns a normal 16-bit photo almost entirely white, so they are rescaled by hand.
_WIDE_GRAY_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_GRAY_MODES = {"1", "L", "LA", "La"} | _WIDE_GRAY_MODES


def to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Return ``(rgb_image, notes)``; notes are user-facing remarks on what was changed.

    Transparent pixels are composited onto white: product shots are often cut out on a
    transparent background, and black (what a plain convert gives) would teach the LoRA
    a black backdrop. A palette image with a transparent colour is treated the same way.

    Raises:
        ImageError: the mode has no conversion to RGB (the message names the mode).
    """
    mode = image.mode
    notes: list[str] = []
    if mode in _GRAY_MODES:
        notes.append("is grayscale; the LoRA will learn the subject without colour. "
                     "Use a colour photo if you have one.")
    if mode in _WIDE_GRAY_MODES:
        return Image.fromarray(_wide_gray_to_uint8(image), "L").convert("RGB"), notes
    if mode == "RGB" and "transparency" not in image.info:
        return image.copy(), notes
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("has transparent areas; they were filled with white.")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB"), notes
    if mode == "CMYK":
        notes.append("was converted from CMYK to RGB; if the colours look off, export it "
                     "as an sRGB JPEG.")
    try:
        return image.convert("RGB"), notes
    except ValueError as exc:
        raise ImageError(
            f"Colour mode {mode!r} cannot be converted to RGB ({exc}). "
            "Re-save the image as an 8-bit RGB JPEG or PNG.") from exc


def _wide_gray_to_uint8(image: Image.Image) -> np.ndarray:
    """Map a 16/32-bit or float gray image to 0..255 without clipping its highlights."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float32))
    if image.mode.startswith("I;16"):
        scaled = values / 257.0  # 16-bit files are full-scale: 65535 is white
    else:
        # "I" and "F" carry no bit depth, so guess it from the values: 8-bit data stored
        # wide stays as is, 16-bit data (how older Pillow opens 16-bit PNGs) is divided
        # down, float data in 0..1 is stretched up, and anything else is min-max normalised.
        low, high = float(values.min()), float(values.max())
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif low >= 0.0 and high <= 65535.0:
            scaled = values / 257.0
        else:
            scaled = (values - low) * (255.0 / ((high - low) or 1.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def check_resolution(resolution: int) -> int:
    """Return ``resolution`` if it is a usable training size, else raise :class:`InputError`."""
    # The VAE downsamples by 8, so other sizes would be silently cropped by the model.
    if isinstance(resolution, bool) or not isinstance(resolution, int) \
            or resolution < 8 or resolution % 8:
        raise InputError(
            f"resolution must be a whole number of pixels, at least 8 and divisible by 8 "
            f"(got {resolution!r}). Use e.g. 512 for SD 1.5 or 1024 for SDXL.")
    return resolution


def prepare_for_training(image: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop ``image`` to a square and resize it to ``resolution`` x ``resolution`` RGB.

    The centre crop keeps the subject, which users nearly always frame in the middle;
    letterboxing instead would teach the LoRA borders that are not part of the subject.

    Args:
        image: any Pillow image; non-RGB modes go through :func:`to_rgb` (alpha -> white).
        resolution: output side in pixels, a multiple of 8.

    Raises:
        InputError: ``resolution`` is not a multiple of 8 >= 8, or ``image`` is not an image.
    """
    check_resolution(resolution)
    if not isinstance(image, Image.Image):
        raise InputError(f"prepare_for_training needs a PIL image, got {type(image).__name__}. "
                         "Open the file with bat_app.images.open_user_image first.")
    rgb = image if image.mode == "RGB" and "transparency" not in image.info \
        else to_rgb(image)[0]
    width, height = rgb.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    if side == resolution:
        return square
    # reducing_gap lets Pillow shrink big photos by whole factors first: same quality as
    # plain LANCZOS to the eye, several times faster on 12 MP phone photos.
    return square.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
