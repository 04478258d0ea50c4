"""The Train tab's Captions box: one line per photo, in the gallery's order, checked as the user
edits (a note under the photos) and at Start (the job stores each line as the photo's .txt); and
its *Suggest backgrounds* button (``suggest_captions``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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


def suggest_captions(paths: list[str], preset: str | None, class_noun: str | None) -> str:
    """The Captions box filled in: each photo's background as the model's CLIP names it
    (``images.background_captions``), one line per photo in the gallery's order, for the user
    to check (on the shapes examples it names 24 of 25 right)."""
    from ..images import load_user_images
    from ..images.background_captions import background_phrases, suggest_backgrounds

    if not paths:
        raise InputError("Add your photos first: the suggestion names each photo's background.")
    noun = (class_noun or "").strip()
    if not noun:
        raise InputError("Write the class noun first (what the subject is): each photo is read as "
                         "'a photo of a <class> on ...'.")
    images = [u.image for u in load_user_images([Path(p) for p in paths]).images]
    return "\n".join(suggest_backgrounds(_embedder(preset), images, noun, background_phrases(preset)))


@lru_cache(maxsize=2)
def _embedder(preset: str | None):
    from ..compare.pools import preset_embedder

    return preset_embedder(preset)
