"""The Shapes world: a seeded, procedural stream of captioned images.

Each item is one object (shape, colour, pattern, size, position, optional marking) on a plain
background, rendered anti-aliased at 32 px (the backbone's resolution; any other resolution on
request), with a caption that states its attributes and the ground truth alongside:

    >>> item = ShapesWorld(seed=0).sample(1)[0]
    >>> item.caption
    'a photo of a large purple solid cross at the top on a teal background'
    >>> item.attributes["shape"], item.image.size
    ('cross', (32, 32))
    >>> render({**item.attributes, "shape": "heart", "colour": "pink"}, resolution=64).size
    (64, 64)

The backbone's pretraining stream (``pretraining=True``, the default) never produces the
traits of the held-out subjects (``subjects.EXCLUDED_*``): those colour+pattern combinations
and every marking are what personalization has to teach. ``pretraining=False`` draws from
the whole attribute space, which the attribute classifier (the judge) is trained on.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from bat_app.errors import InputError

RESOLUTION = 32  # the backbone's native size; the UI shows it upscaled
SUPERSAMPLE = 4  # draw at 4x and box-filter down: clean anti-aliased edges

SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond", "cross", "moon")
# Well separated in RGB so that a tiny VAE keeps them apart and the classifier never hesitates.
COLOURS = {
    "red": (215, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (245, 225, 50),
    "green": (45, 160, 65),
    "teal": (25, 145, 150),
    "blue": (45, 80, 215),
    "purple": (135, 60, 185),
    "pink": (245, 140, 200),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
PATTERNS = ("solid", "striped", "dotted", "checkered")
SIZES = {"small": 0.44, "medium": 0.58, "large": 0.74}  # object diameter / image side
POSITIONS = {  # object centre, as a fraction of the side
    "center": (0.5, 0.5), "left": (0.34, 0.5), "right": (0.66, 0.5),
    "top": (0.5, 0.34), "bottom": (0.5, 0.66),
}
POSITION_PHRASES = {"center": "in the center", "left": "on the left", "right": "on the right",
                    "top": "at the top", "bottom": "at the bottom"}
MARKINGS = ("none", "dot", "outline")  # only held-out subjects carry a marking

ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS,
              "background": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS),
              "marking": MARKINGS}

# The traits of the held-out subjects (see subjects.py): never in the pretraining stream.
EXCLUDED_COLOUR_PATTERNS = frozenset({("pink", "striped"), ("orange", "dotted"),
                                      ("teal", "checkered")})


def mark_colour(colour: str) -> tuple[int, int, int]:
    """Colour of stripes, dots and markings: white on dark objects, black on light ones."""
    r, g, b = COLOURS[colour]
    return (25, 25, 25) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (245, 245, 245)


def is_pretraining(attributes: dict) -> bool:
    """True when the pretraining stream may produce these attributes (no held-out trait)."""
    return (attributes.get("marking", "none") == "none"
            and (attributes["colour"], attributes["pattern"]) not in EXCLUDED_COLOUR_PATTERNS)


def check_attributes(attributes: dict) -> dict:
    """Fill defaults and validate; errors name the bad value and the allowed ones."""
    full = {"pattern": "solid", "size": "medium", "position": "center", "marking": "none",
            **attributes}
    for key, allowed in ATTRIBUTES.items():
        if key not in full:
            raise InputError(f"Shapes attributes need {key!r} (one of {list(allowed)}); got "
                             f"{sorted(attributes)}.")
        if full[key] not in allowed:
            raise InputError(f"Unknown {key} {full[key]!r}; expected one of {list(allowed)}.")
    unknown = set(full) - set(ATTRIBUTES) - {"jitter"}
    if unknown:
        raise InputError(f"Unknown shapes attribute(s) {sorted(unknown)}; known: "
                         f"{sorted(ATTRIBUTES)}.")
    if full["colour"] == full["background"]:
        raise InputError(f"Object and background are both {full['colour']!r}: the object would "
                         "be invisible.")
    return full


# ---------------------------------------------------------------------------- drawing


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon of a shape of radius r around (cx, cy); None for shapes drawn as ellipses."""
    if shape == "square":
        h = r * 0.86
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        cy += r * 0.15
        return [(cx + r * 1.08 * math.cos(a), cy + r * 1.08 * math.sin(a))
                for a in (math.radians(-90), math.radians(30), math.radians(150))]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(math.radians(-90 + 36 * i)),
                 cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(math.radians(-90 + 36 * i)))
                for i in range(10)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
    if shape == "cross":
        a, w = r * 0.95, r * 0.34
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
                (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
                (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w)]
    if shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + x * r / 16.5, cy - (y + 2.5) * r / 16.5))
        return pts
    return None


def _shape_mask(shape: str, side: int, cx: float, cy: float, r: float) -> np.ndarray:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "moon":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = r * 0.55
        draw.ellipse([cx - r + off, cy - r - off * 0.3, cx + r + off, cy + r - off * 0.3], fill=0)
    else:
        draw.polygon(_outline(shape, cx, cy, r), fill=255)
    return np.asarray(mask) > 127


def _pattern_mask(pattern: str, side: int, cx: float, cy: float, unit: float) -> np.ndarray:
    """Where the pattern's marks go, phase-locked to the object's centre; unit = 1 output px."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    x, y = (xx - cx) / unit, (yy - cy) / unit
    if pattern == "striped":  # diagonal bands, period 5 px, 2 px wide
        return np.mod(x + y + 1.0, 5.0) < 2.0
    if pattern == "dotted":  # dots of radius 1.2 px on a 5 px grid
        dx, dy = np.mod(x + 2.5, 5.0) - 2.5, np.mod(y + 2.5, 5.0) - 2.5
        return dx * dx + dy * dy < 1.2 ** 2
    if pattern == "checkered":  # 4 px squares
        return (np.floor(x / 4.0) + np.floor(y / 4.0)) % 2 == 0
    return np.zeros((side, side), bool)


def render(attributes: dict, resolution: int = RESOLUTION) -> Image.Image:
    """Draw one object described by ``attributes`` (see ATTRIBUTES) as an RGB image.

    ``attributes["jitter"]`` = (dx, dy, scale) nudges position and size (fractions of the
    side); the stream sets it, explicit calls may leave it out.
    """
    a = check_attributes(attributes)
    if resolution < 8:
        raise InputError(f"Resolution must be at least 8 px, got {resolution}.")
    side = resolution * SUPERSAMPLE
    unit = side / RESOLUTION  # patterns keep their size in 32-px units at every resolution
    dx, dy, scale = a.get("jitter", (0.0, 0.0, 1.0))
    fx, fy = POSITIONS[a["position"]]
    cx, cy = (fx + dx) * side, (fy + dy) * side
    r = SIZES[a["size"]] * scale * side / 2
    canvas = np.empty((side, side, 3), np.float32)
    canvas[:] = COLOURS[a["background"]]
    inside = _shape_mask(a["shape"], side, cx, cy, r)
    canvas[inside] = COLOURS[a["colour"]]
    mark = np.array(mark_colour(a["colour"]), np.float32)
    if a["pattern"] != "solid":
        canvas[inside & _pattern_mask(a["pattern"], side, cx, cy, unit)] = mark
    if a["marking"] == "dot":
        yy, xx = np.mgrid[:side, :side]
        canvas[(xx - cx) ** 2 + (yy - cy) ** 2 < (2.6 * unit) ** 2] = mark
    elif a["marking"] == "outline":
        grown = _shape_mask(a["shape"], side, cx, cy, r + 1.6 * unit)
        shrunk = _shape_mask(a["shape"], side, cx, cy, max(r - 0.2 * unit, 1.0))
        ring = grown & ~shrunk
        canvas[ring] = mark if a["background"] != "black" else (245, 245, 245)
    small = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean((1, 3))
    return Image.fromarray(np.clip(small + 0.5, 0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(attributes: dict, rng: random.Random | None = None) -> str:
    """A caption stating the attributes. With ``rng``: the stream's paraphrases, which may
    leave out size, position, pattern (only when solid) or, rarely, colour or background; the
    word order of what is stated never changes. Without: the full canonical caption."""
    a = check_attributes(attributes)
    full = rng is None
    say = (lambda p: True) if full else (lambda p: rng.random() < p)
    words = []
    if say(0.4):
        words.append(a["size"])
    if say(0.92):
        words.append(a["colour"])
    if a["pattern"] != "solid" or say(0.5):
        words.append(a["pattern"])
    words.append(a["shape"])
    noun = " ".join(words)
    text = f"{_article(noun)} {noun}"
    if a["marking"] == "dot":
        text += " with a dot in the middle"
    elif a["marking"] == "outline":
        text += " with an outline"
    if say(0.35):
        text += " " + POSITION_PHRASES[a["position"]]
    if say(0.92):
        text += f" on {_article(a['background'])} {a['background']} background"
    if not full:
        prefix = rng.random()
        if prefix < 0.25:
            text = "a photo of " + text
        elif prefix < 0.35:
            text = "a picture of " + text
    return text


def parse_caption(text: str) -> dict:
    """Read back the attributes a caption states (the inverse of ``caption_for``)."""
    words = text.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    if "background" in words:
        found["background"] = words[words.index("background") - 1]
        words = words[:words.index("background") - 1]
    for key in ("shape", "pattern", "size"):
        for w in words:
            if w in ATTRIBUTES[key]:
                found[key] = w
    for w in words:
        if w in COLOURS:
            found["colour"] = w
            break
    for pos, phrase in POSITION_PHRASES.items():
        if phrase in " ".join(words):
            found["position"] = pos
    if "dot in the middle" in text:
        found["marking"] = "dot"
    elif "outline" in text:
        found["marking"] = "outline"
    return found


# ---------------------------------------------------------------------------- the stream


@dataclass
class ShapesItem:
    image: Image.Image
    caption: str
    attributes: dict = field(default_factory=dict)


class ShapesWorld:
    """A seeded stream of captioned Shapes-world images.

    Args:
        seed: the same seed always gives the same items in the same order.
        pretraining: True (default) = the backbone's data, without the held-out traits;
            False = the whole attribute space, markings included (the judge's data).
        resolution: output side in pixels (32 = the backbone's).
        max_objects: kept at 1 for the backbone; the attribute space is per object.
    """

    def __init__(self, seed: int = 0, pretraining: bool = True, resolution: int = RESOLUTION):
        self.seed = seed
        self.pretraining = pretraining
        self.resolution = resolution
        self._rng = random.Random(seed)

    def sample_attributes(self) -> dict:
        rng = self._rng
        while True:
            a = {key: rng.choice(values) for key, values in ATTRIBUTES.items()}
            if self.pretraining:
                a["marking"] = "none"
            elif rng.random() < 0.6:
                a["marking"] = "none"
            if a["colour"] == a["background"]:
                continue
            if self.pretraining and not is_pretraining(a):
                continue
            a["jitter"] = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04),
                           rng.uniform(0.92, 1.08))
            return a

    def sample(self, n: int) -> list[ShapesItem]:
        items = []
        for _ in range(n):
            a = self.sample_attributes()
            caption = caption_for(a, self._rng)
            image = render(a, self.resolution)
            public = {k: v for k, v in a.items() if k != "jitter"}
            items.append(ShapesItem(image=image, caption=caption, attributes=public))
        return items

    def __iter__(self):
        while True:
            yield from self.sample(1)


def sample_arrays(seed: int, n: int, pretraining: bool = True, progress: bool = False):
    """n items as arrays: uint8 images (n, 32, 32, 3), captions, attribute dicts."""
    from tqdm.auto import tqdm

    world = ShapesWorld(seed, pretraining=pretraining)
    images = np.empty((n, RESOLUTION, RESOLUTION, 3), np.uint8)
    captions, attrs = [], []
    for i in tqdm(range(n), desc="render", disable=not progress, mininterval=5):
        item = world.sample(1)[0]
        images[i] = np.asarray(item.image)
        captions.append(item.caption)
        attrs.append(item.attributes)
    return images, captions, attrs
