"""Open and check the user's subject photos before anything expensive runs.

    >>> from bat_app.images import IntakeLimits, load_user_images
    >>> report = load_user_images("photos/dog", resolution=512)   # doctest: +SKIP
    >>> [u.name for u in report.images], report.warnings           # doctest: +SKIP
    (['00.jpg', '01.jpg', '02.jpg'], ['02.jpg: is 400x380; ... will be upscaled ...'])

Every problem with a batch is collected and raised together as one
:class:`~bat_app.errors.ImageError` (``problems`` maps file name -> reason), so a user with
three bad files fixes them in one go. The user's files are only ever read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from PIL import ImageOps

from bat_app.errors import ImageError, InputError
from bat_app.images.convert import check_resolution, to_rgb
from bat_app.images.decode import DECODE_ERRORS, decode, fail, read_bytes, too_many_bytes
from bat_app.images.duplicates import DuplicateGroup, describe, find_duplicates
from bat_app.images.user_image import UserImage

# Next to photos, folders often hold captions and metadata written by other tools, and
# files the OS drops there; none of them are meant as training images.
_SIDECAR_SUFFIXES = {".txt", ".json"}
_OS_FILES = {"thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class IntakeLimits:
    """What the intake accepts. Defaults suit a phone-photo DreamBooth-LoRA run."""

    # DreamBooth-LoRA needs a few views to separate the subject from one pose/background;
    # more than ~10 adds little and lengthens training.
    min_images: int = 3
    max_images: int = 10
    # A 12 MP phone JPEG is 3-8 MB; 25 MB admits high-quality PNGs but not raw scans.
    max_file_bytes: int = 25 * 1024 * 1024
    # Checked from the header before decoding: a 50 kB PNG can claim 100k x 100k pixels.
    max_pixels: int = 50_000_000
    # Below this there is too little detail to learn a subject from; smaller is rejected.
    # 32 admits the Shapes world's 32 px photos; photos below the training resolution are
    # accepted with an upscaling warning.
    min_side: int = 32

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"IntakeLimits.{spec.name} must be a positive whole number "
                                 f"(got {value!r}).")
        if self.min_images > self.max_images:
            raise InputError(f"IntakeLimits.min_images ({self.min_images}) is larger than "
                             f"max_images ({self.max_images}); raise max_images or lower "
                             "min_images.")


@dataclass
class IntakeReport:
    """The outcome of :func:`load_user_images`: usable images plus what the user should know."""

    images: list[UserImage]
    duplicates: list[DuplicateGroup]
    warnings: list[str]  # human readable: conversions, upscaling, duplicates...


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def open_user_image(source: str | Path | bytes, name: str | None = None,
                    limits: IntakeLimits = IntakeLimits()) -> UserImage:
    """Read, check and decode one image into RGB with its EXIF orientation applied.

    Args:
        source: a file path, or the file's bytes (e.g. from an upload widget).
        name: the name to show the user; defaults to the file's basename ("upload" for bytes).
        limits: byte, pixel and size limits.

    Raises:
        ImageError: the file is missing, empty, too big, too small, not an image, damaged,
            or a decompression bomb. The message starts with the file name and says what
            to do; ``problems`` holds ``{name: reason}``.
        InputError: ``source`` is not a path or bytes.

    >>> user = open_user_image("photos/dog/00.jpg")   # doctest: +SKIP
    >>> user.name, user.image.mode                     # doctest: +SKIP
    ('00.jpg', 'RGB')
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        path, data = None, bytes(source)
        name = name or "upload"
        if len(data) > limits.max_file_bytes:
            raise fail(name, too_many_bytes(len(data), limits.max_file_bytes))
    elif isinstance(source, (str, Path)):
        path = Path(source)
        name = name or path.name or str(path)
        data = read_bytes(path, name, limits.max_file_bytes)
    else:
        raise InputError(f"open_user_image needs a file path or bytes, got "
                         f"{type(source).__name__}.")
    if not data:
        raise fail(name, "file is empty (0 bytes); the upload or copy probably failed. "
                         "Add the image again.")

    decoded, notes = decode(data, name, limits.max_pixels, limits.min_side)
    original_mode, original_size = decoded.mode, decoded.size
    try:
        upright = ImageOps.exif_transpose(decoded)
    except DECODE_ERRORS as exc:
        # A broken EXIF block does not spoil the pixels; keep them and say so.
        upright = decoded
        notes.append(f"has unreadable EXIF data ({exc}); its orientation was not applied. "
                     "Check that it is upright.")
    try:
        rgb, conversion_notes = to_rgb(upright)
    except ImageError as exc:
        raise fail(name, str(exc)) from exc
    return UserImage(name=name, image=rgb, sha256=hashlib.sha256(data).hexdigest(),
                     source=path, original_mode=original_mode, original_size=original_size,
                     warnings=[f"{name}: {note}" for note in notes + conversion_notes])


def _expand(sources: Sequence[str | Path] | str | Path,
            warnings_out: list[str]) -> list[Path]:
    """Replace each folder in ``sources`` by its candidate image files, sorted by name."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    elif not isinstance(sources, Sequence) or not all(
            isinstance(item, (str, Path)) for item in sources):
        raise InputError(f"load_user_images needs a path or a list of paths, got "
                         f"{sources!r:.80}.")
    files: list[Path] = []
    for source in map(Path, sources):
        if not source.is_dir():
            files.append(source)  # a missing path is reported when it is opened
            continue
        try:
            entries = sorted(source.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            reason = f"folder cannot be read ({exc.strerror}). Check its permissions."
            raise ImageError(f"{source}: {reason}", problems={str(source): reason}) from exc
        for entry in entries:
            lowered = entry.name.lower()
            if lowered.startswith(".") or lowered in _OS_FILES \
                    or entry.suffix.lower() in _SIDECAR_SUFFIXES:
                continue
            if entry.is_dir():
                warnings_out.append(f"{entry.name}: is a folder inside {source}; its "
                                    "images are not read. Move them up to use them.")
                continue
            files.append(entry)
    return files


def _display_names(files: list[Path]) -> list[str]:
    """Basenames, or the whole path for basenames that clash (``a/01.jpg`` and ``b/01.jpg``)."""
    basenames = [path.name or str(path) for path in files]
    return [str(path) if basenames.count(base) > 1 else base
            for path, base in zip(files, basenames)]


def _count_problem(count: int, limits: IntakeLimits) -> str | None:
    if count < limits.min_images:
        missing = limits.min_images - count
        more = "more " if count else ""
        return (f"Got {_plural(count, 'image')}; at least {limits.min_images} are needed for "
                f"a reliable subject LoRA. Add {missing} {more}"
                f"{'image' if missing == 1 else 'images'}.")
    if count > limits.max_images:
        return (f"Got {_plural(count, 'image')}; at most {limits.max_images} are used. Remove "
                f"{_plural(count - limits.max_images, 'image')} or raise the limit "
                "(--max-images).")
    return None


def load_user_images(sources: Sequence[str | Path] | str | Path,
                     limits: IntakeLimits = IntakeLimits(),
                     resolution: int | None = None) -> IntakeReport:
    """Open every image in ``sources`` (files and/or folders) and check the batch.

    A folder contributes its files sorted by name; hidden files, OS files and ``.txt`` /
    ``.json`` caption sidecars are skipped, any other non-image file is a problem.

    Args:
        sources: a path or a list of paths to images or folders of images.
        limits: per-file and count limits.
        resolution: the training resolution, if known; smaller images get a warning
            because they will be upscaled.

    Returns:
        The images in order, duplicate groups, and warnings for the user.

    Raises:
        ImageError: one or more files are unusable, or the count is out of limits. All
            problems are listed in the one message and in ``problems``.
        InputError: ``sources`` or ``resolution`` is malformed.
    """
    if resolution is not None:
        check_resolution(resolution)
    report_warnings: list[str] = []
    files = _expand(sources, report_warnings)
    # Checked before decoding so pointing at a whole photo library fails fast; a stray
    # non-image file counts here, but it would be reported as a problem anyway.
    if len(files) > limits.max_images:
        raise ImageError(_count_problem(len(files), limits))

    images: list[UserImage] = []
    problems: dict[str, str] = {}
    for path, name in zip(files, _display_names(files)):
        try:
            images.append(open_user_image(path, name=name, limits=limits))
        except ImageError as exc:
            problems.update(exc.problems or {name: str(exc)})

    count_problem = _count_problem(len(images), limits)
    if problems:
        lines = [f"{_plural(len(problems), 'file')} of {len(files)} cannot be used:"]
        lines += [f"  - {name}: {reason}" for name, reason in problems.items()]
        lines.append(f"Fix or remove these files and try again; the other {len(images)} are "
                     "fine." if images else "Fix or replace these files and try again.")
        if count_problem:
            lines.append(f"Without them, {count_problem[0].lower()}{count_problem[1:]}")
        raise ImageError("\n".join(lines), problems=problems)
    if count_problem:
        raise ImageError(count_problem)

    for user in images:
        report_warnings.extend(user.warnings)
        width, height = user.image.size
        if resolution is not None and min(width, height) < resolution:
            report_warnings.append(
                f"{user.name}: is {width}x{height}; its short side is below the training "
                f"resolution {resolution} px, so it will be upscaled and may look soft. Use "
                "a larger photo if you have one.")
    duplicates = find_duplicates(images)
    report_warnings.extend(describe(group) for group in duplicates)
    return IntakeReport(images=images, duplicates=duplicates, warnings=report_warnings)
