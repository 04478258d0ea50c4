"""Preview prompt sets, kept as data (``prompt_sets/*.json``): the subject alone, in new
contexts, with new properties, plus the bare class prompt.

    >>> ps = load_prompt_set("object")
    >>> ps.prompts("sks", "backpack")[1]
    ('context', 'a sks backpack in the jungle')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import InputError

PROMPT_DIR = Path(__file__).with_name("prompt_sets")
KINDS = ("subject", "context", "property")
# DreamBench's live subjects (animals) get the live-subject prompts; everything else objects.
LIVE_CLASSES = {"dog", "cat", "puppy", "kitten", "animal", "person", "man", "woman", "boy", "girl", "face"}


@dataclass(frozen=True)
class PromptSet:
    name: str
    description: str
    subject: tuple[str, ...]
    context: tuple[str, ...]
    property: tuple[str, ...]
    class_prompt: str

    def prompts(self, token: str, class_noun: str, limit: int | None = None) -> list[tuple[str, str]]:
        """(kind, prompt) pairs, the subject prompts first; ``limit`` keeps a spread of kinds."""
        fill = lambda p: p.replace("{token}", token).replace("{class}", class_noun)
        pairs = [(kind, fill(p)) for kind in KINDS for p in getattr(self, kind)]
        if limit is not None and limit < len(pairs):
            by_kind = {k: [p for p in pairs if p[0] == k] for k in KINDS}
            picked, i = [], 0
            while len(picked) < limit:  # round-robin over kinds so a short run still shows each
                for kind in KINDS:
                    if i < len(by_kind[kind]) and len(picked) < limit:
                        picked.append(by_kind[kind][i])
                i += 1
            pairs = [p for p in pairs if p in picked]
        return pairs

    def class_text(self, class_noun: str) -> str:
        return self.class_prompt.replace("{class}", class_noun)


def available_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def load_prompt_set(name: str) -> PromptSet:
    path = PROMPT_DIR / f"{name}.json"
    if not path.is_file():
        raise InputError(f"Unknown prompt set {name!r}; available: {', '.join(available_prompt_sets())}.")
    data = json.loads(path.read_text())
    return PromptSet(name, data.get("description", ""), tuple(data["subject"]), tuple(data["context"]),
                     tuple(data["property"]), data.get("class", "a photo of {class}"))


def default_prompt_set(model_name: str, class_noun: str) -> str:
    if model_name == "shapes" or str(model_name).rstrip("/").endswith("shapes/backbone"):
        return "shapes"
    return "live" if class_noun.lower() in LIVE_CLASSES else "object"
