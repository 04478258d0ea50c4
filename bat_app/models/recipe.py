"""One training recipe per preset, kept as data in ``presets.json`` and read by everyone.

The CLI, the library (``TrainConfig.for_model``), the UI's defaults, job configs, the example
job and the scripts all take their defaults from here, so the recipe measured for a preset is
the one that runs (a test checks that they agree). A model that is not a preset (a folder or
a hub id) gets the recipe of the preset named by ``_default_recipe`` (Stable-Diffusion-sized).

    >>> r = recipe_for("sd15")
    >>> r.train_settings(5)["steps"], r.selection_settings(5)["m"]
    (500, 100)
    >>> recipe_for("some/hub-model") == recipe_for(None) == recipe_for(presets_data()["_default_recipe"])
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .presets import PRESETS_FILE, from_known_keys

# The photo counts the image intake accepts; the recipe plans for this range.
MIN_PHOTOS, MAX_PHOTOS = 3, 10
UNKNOWN_PHOTOS = 5  # steps when the photo count is not known yet (a config without images)


@dataclass(frozen=True)
class Recipe:
    """Training and selection defaults as functions of the number of photos."""

    steps_per_photo: int        # DreamBooth-LoRA: steps grow with the photos to see
    min_steps: int
    max_steps: int
    lr: float                   # UNet LoRA learning rate
    rank: int                   # LoRA rank, raised to ``rank_many`` from ``many_photos`` photos on
    rank_many: int
    many_photos: int
    batch_size: int
    pivotal: bool               # pivotal tuning: train the trigger's own embedding vectors
    pivotal_vectors: int
    embedding_lr: float
    prior: bool                 # DreamBooth prior preservation (class images from the base model) in
    class_images: int           # every method's training, with this many class images
    aug_weight: float           # lambda for the backbone examples ...
    aug_weight_few: float       # ... lowered with 3 photos, where they would outweigh the subject
    m_per_photo: int            # backbone items selected (ALBAT, random, CLIP), per photo ...
    min_m: int
    max_m: int
    k_per_m: int                # ... and the retrieval shortlist ALBAT scores: k = max(min_k, k_per_m * m)
    min_k: int
    background_weight: float = 1.0  # masked training's weight on plain backgrounds (1: off)
    backdrop_swaps: int = 0         # other plain backdrops each photo is also shown on (0: off)
    step_choices: int = 0           # earlier steps of the last third kept for the user to choose from
    note: str = ""              # where the numbers come from

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        return from_known_keys(cls, data, "presets.json, a recipe")

    @staticmethod
    def photos(n_images: int | None) -> int:
        # None: not known (a config without its photos); 0-2: still uploading, plan for the minimum.
        return UNKNOWN_PHOTOS if n_images is None else max(MIN_PHOTOS, min(MAX_PHOTOS, int(n_images)))

    def train_settings(self, n_images: int | None = None) -> dict:
        """TrainConfig settings for ``n_images`` photos (clamped to the 3-10 the intake allows)."""
        n = self.photos(n_images)
        return {"steps": max(self.min_steps, min(self.max_steps, self.steps_per_photo * n)),
                "lr": self.lr, "rank": self.rank_many if n >= self.many_photos else self.rank,
                "batch_size": self.batch_size, "pivotal": self.pivotal,
                "pivotal_vectors": self.pivotal_vectors, "embedding_lr": self.embedding_lr,
                "prior": self.prior, "num_class_images": self.class_images,
                "aug_weight": self.aug_weight_few if n <= MIN_PHOTOS else self.aug_weight,
                "background_weight": self.background_weight, "backdrop_swaps": self.backdrop_swaps,
                "step_choices": self.step_choices}

    def selection_settings(self, n_images: int | None = None) -> dict:
        """SelectionParams settings (k, m) for ``n_images`` photos."""
        m = max(self.min_m, min(self.max_m, self.m_per_photo * self.photos(n_images)))
        return {"m": m, "k": max(self.min_k, self.k_per_m * m)}


@lru_cache(maxsize=1)
def presets_data() -> dict:
    return json.loads(PRESETS_FILE.read_text())


def recipe_for(model: str | None) -> Recipe:
    """The recipe of preset ``model``; the default recipe for folders, hub ids and None."""
    data = presets_data()
    entry = data.get(str(model)) if model is not None and not str(model).startswith("_") else None
    if not entry or "recipe" not in entry:
        entry = data[data["_default_recipe"]]
    return Recipe.from_dict(entry["recipe"])
