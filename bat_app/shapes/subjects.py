"""Held-out subjects: specific objects whose trait never occurs in the pretraining stream.

Each subject is one object with fixed attributes; its ``trait`` (a colour+pattern combination
listed in ``world.EXCLUDED_COLOUR_PATTERNS``, or a marking) is what the base model cannot draw
and what a personalization has to teach. ``write_subjects()`` saves 5 "user photos" of each
(varied position and background, 64 px like an upload) under ``assets/subjects/<name>/`` with
a ``subject.json`` (each photo's position and background), and beside each photo its caption as
a same-name .txt, the format training reads: what a user who captions would write, where the
object is and on what ("at the top on a teal background").
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from bat_app.errors import InputError
from bat_app.shapes.world import COLOURS, POSITION_PHRASES, POSITIONS, is_pretraining, render


@dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str  # the word used in "a photo of sks <class_noun>"
    trait: dict  # the attributes that distinguish it (never all together in the stream)
    attributes: dict  # everything fixed about the object (position/background vary)
    description: str

    def photo_attributes(self, position: str, background: str, scale: float = 1.0) -> dict:
        return {**self.attributes, "shape": self.class_noun, "position": position,
                "background": background, "jitter": (0.0, 0.0, scale)}


SUBJECTS = (
    Subject("striped_heart", "heart", {"colour": "pink", "pattern": "striped"},
            {"colour": "pink", "pattern": "striped", "size": "large", "marking": "none"},
            "a pink heart with diagonal stripes: no pink object is striped in the stream"),
    Subject("dotted_moon", "moon", {"colour": "orange", "pattern": "dotted"},
            {"colour": "orange", "pattern": "dotted", "size": "large", "marking": "none"},
            "an orange dotted crescent moon: no orange object is dotted in the stream"),
    Subject("checkered_square", "square", {"colour": "teal", "pattern": "checkered"},
            {"colour": "teal", "pattern": "checkered", "size": "large", "marking": "none"},
            "a teal checkered square: no teal object is checkered in the stream"),
    Subject("dot_star", "star", {"marking": "dot"},
            {"colour": "yellow", "pattern": "solid", "size": "large", "marking": "dot"},
            "a yellow star with a black dot in its middle: the stream has no markings"),
    Subject("outlined_circle", "circle", {"marking": "outline"},
            {"colour": "red", "pattern": "solid", "size": "large", "marking": "outline"},
            "a red disc with a contrasting outline: the stream has no markings"),
)


def get_subject(name: str) -> Subject:
    for s in SUBJECTS:
        if s.name == name:
            return s
    raise InputError(f"Unknown shapes subject {name!r}; known: {[s.name for s in SUBJECTS]}.")


def subject_photos(subject: Subject, n: int = 5, seed: int = 0, resolution: int = 64):
    """n (image, attributes) photos of the subject in varied positions and backgrounds (distinct
    for the first 9; beyond that the combinations repeat with new jitter)."""
    rng = random.Random(f"{subject.name}-{seed}")
    positions = list(POSITIONS)
    rng.shuffle(positions)
    backgrounds = [c for c in COLOURS if c != subject.attributes["colour"]]
    rng.shuffle(backgrounds)
    out = []
    for i in range(n):
        a = subject.photo_attributes(positions[i % len(positions)], backgrounds[i % len(backgrounds)],
                                     rng.uniform(0.95, 1.05))
        assert not is_pretraining(a), f"{subject.name} would be in the pretraining stream"
        out.append((render(a, resolution), a))
    return out


def photo_caption(position: str, background: str) -> str:
    """A photo's caption without the trigger, in the words of the recontext prompts; training
    puts the instance prompt in front ("a photo of sks square at the top on a teal background")."""
    return f"{POSITION_PHRASES[position]} on a {background} background"


def write_subjects(root: Path, n: int = 5, seed: int = 0) -> list[Path]:
    """Write assets/subjects/<name>/{00..}.png, their .txt captions and subject.json for every subject."""
    folders = []
    for subject in SUBJECTS:
        folder = Path(root) / subject.name
        folder.mkdir(parents=True, exist_ok=True)
        photos = []
        for i, (image, a) in enumerate(subject_photos(subject, n, seed)):
            image.save(folder / f"{i:02d}.png")
            (folder / f"{i:02d}.txt").write_text(photo_caption(a["position"], a["background"]) + "\n")
            photos.append({"file": f"{i:02d}.png", "position": a["position"], "background": a["background"]})
        meta = {**asdict(subject), "instance_prompt": f"a photo of sks {subject.class_noun}",
                "photos": photos}
        (folder / "subject.json").write_text(json.dumps(meta, indent=2) + "\n")
        folders.append(folder)
    return folders
