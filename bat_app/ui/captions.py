"""The Train tab's Captions box: one line per photo, in the gallery's order, checked as the user
edits (a note under the photos) and at Start (the job stores each line as the photo's .txt)."""

from __future__ import annotations

from ..errors import InputError
from ..limits import Limits, check_text


def parse_captions(text, n_images: int) -> list[str] | None:
    """The Captions box: one line per photo, in the gallery's order (an empty line: that photo has
    none), or None when the box is empty. Each line is at most ``prompt_chars`` characters."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise InputError(f"Captions must be text (one line per photo), got {type(text).__name__}.")
    lines = [line.strip() for line in text.splitlines()]  # a leading empty line: the first photo has none
    while len(lines) > n_images and not lines[-1]:  # trailing empty lines past the photos say nothing
        lines.pop()
    if len(lines) != n_images:
        raise InputError(f"{len(lines)} caption line(s) for {n_images} photo(s): write one line per photo, in the "
                         f"gallery's order (an empty line for a photo without one), or clear the captions.")
    limit = Limits.from_env().prompt_chars
    for i, line in enumerate(lines, 1):
        check_text(f"Caption {i}", line, limit, None)
    return lines


def caption_count_note(text, n_images: int) -> list[str]:
    """A line when the Captions box no longer has one line per photo (photos added or removed
    after writing them), so the user fixes it before Start refuses; nothing otherwise."""
    try:
        parse_captions(text, n_images)
    except InputError as exc:
        return [str(exc)] if n_images else []
    return []
