"""The one config object of a compare run (and of a job): JSON in, validated, unknown keys refused.

    {"token": "sks", "class_noun": "star", "model": "shapes", "pool": "shapes",
     "methods": ["none", "albat"], "train": {"steps": 300}, "selection": {"m": 50}}
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..albat import METHODS, SelectionParams
from ..errors import InputError
from ..models import default_preset
from ..models.recipe import recipe_for
from ..train import TrainConfig

BASE = "base"  # the column of the untouched backbone in every grid


@dataclass
class CompareConfig:
    token: str = "sks"                 # trigger token
    class_noun: str = "object"         # subject class ("dog", "star")
    model: str | None = None           # preset, folder or hub id (None: sd15 with CUDA, else shapes)
    pool: str | None = None            # pool folder; "shapes" = the shapes pool in the data dir
    clip_model: str | None = None      # CLIP for retrieval and metrics: open_clip name or folder
    clip_pretrained: str | None = None  # (default: the model the pool was built with; shapes CLIP on shapes)
    methods: list[str] = field(default_factory=lambda: ["none", "albat"])
    train: dict = field(default_factory=dict)       # TrainConfig settings (token/class_noun come from above)
    selection: dict = field(default_factory=dict)   # SelectionParams settings
    score_seed: int | None = None      # ALBAT's scoring draws, apart from the training seed (None: 0)
    prompt_set: str | None = None      # preview prompt set (default: chosen from the model/class)
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # preview seeds, same for every column
    num_prompts: int | None = None     # use only the first N prompts of the set (quick runs)
    safety_checker: bool = True        # previews through the model's safety checker, if it has one

    def __post_init__(self):
        if not isinstance(self.methods, list) or not self.methods:
            raise InputError(f"`methods` must be a non-empty list of {', '.join(METHODS)}; got {self.methods!r}.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise InputError(f"Unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"`methods` lists a method twice: {self.methods}.")
        if not isinstance(self.seeds, list) or not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            raise InputError(f"`seeds` must be a non-empty list of integers, got {self.seeds!r}.")
        if self.num_prompts is not None and (not isinstance(self.num_prompts, int) or self.num_prompts < 1):
            raise InputError(f"`num_prompts` must be a positive integer or null, got {self.num_prompts!r}.")
        if not isinstance(self.safety_checker, bool):
            raise InputError(f"`safety_checker` must be true or false, got {self.safety_checker!r}.")
        if not isinstance(self.train, dict) or not isinstance(self.selection, dict):
            raise InputError("`train` and `selection` must be JSON objects of settings.")
        train = self.train_config()  # validates the nested settings now, at the door
        self.selection_params()
        if "prior" in self.methods and train.prior:
            # The method's class images would come on top of the same class images every column
            # already trains on: the column would differ from DreamBooth-LoRA only by their weight.
            raise InputError("The 'prior' method would repeat what every column already does: prior "
                             "preservation is on for all methods (the model's recipe, or `train.prior`). "
                             "Drop 'prior' from the methods, or turn prior preservation off (`train.prior`: "
                             "false; in the app: Advanced settings) to compare with and without it.")
        from ..limits import check_config  # the server's upper bounds (bat_app.limits)

        check_config(self)

    def train_config(self, n_images: int | None = None) -> TrainConfig:
        """The training settings: the model's recipe for ``n_images`` photos, ``train`` on top."""
        for key in ("token", "class_noun"):
            if key in self.train:
                raise InputError(f"Set `{key}` at the top level of the config, not inside `train`.")
        return TrainConfig.for_model(self.preset, n_images,
                                     **{**self.train, "token": self.token, "class_noun": self.class_noun})

    def selection_params(self, n_images: int | None = None) -> SelectionParams:
        known = {f.name for f in dataclasses.fields(SelectionParams)}
        for key in self.selection:
            if key not in known:
                raise InputError(f"Unknown selection setting {key!r}. Known: {', '.join(sorted(known))}.")
        if self.score_seed is not None and self.selection.get("score_seed", self.score_seed) != self.score_seed:
            raise InputError(f"`score_seed` is {self.score_seed} but `selection.score_seed` is {self.selection['score_seed']}.")
        own = {"score_seed": self.score_seed} if self.score_seed is not None else {}
        return SelectionParams(**{"seed": self.train_config().seed, **recipe_for(self.preset).selection_settings(n_images),
                                  **own, **self.selection})

    @property
    def preset(self) -> str:
        """The model whose recipe applies (None means the default preset of this machine)."""
        return self.model or default_preset()

    def pool_methods(self) -> list[str]:
        """The chosen methods that draw from the backbone's pool."""
        from ..albat import needs_pool

        return [m for m in self.methods if needs_pool(m)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CompareConfig":
        if not isinstance(data, dict):
            raise InputError(f"A config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise InputError(f"Unknown config key(s) {unknown}. Known keys: {', '.join(sorted(known))}.")
        try:
            return cls(**data)
        except TypeError as exc:
            raise InputError(f"Bad config: {exc}.") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> "CompareConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"Config {path}: cannot read it as JSON ({exc}).") from exc
        return cls.from_dict(data)
