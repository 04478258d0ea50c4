"""Shapes-world scores read off generated images by the attribute classifier.

- subject fidelity: share of subject/context samples that show the subject's trait;
- prompt fidelity: share of context/property samples that show what the prompt asked for
  (background, position, size);
- class-prior preservation: share of bare class-prompt samples ("a photo of star") that do
  NOT show the trait (the class has not collapsed onto the subject);
- class variety: distinct (colour, pattern) pairs among those samples / their number.
"""

from __future__ import annotations

import re

from ..shapes.world import COLOURS, POSITION_PHRASES, SIZES


def asked_attributes(prompt: str) -> dict:
    """What a shapes prompt asks for beyond the subject: background, position, size."""
    asked = {}
    m = re.search(r"on an? (\w+) background", prompt)
    if m and m.group(1) in COLOURS:
        asked["background"] = m.group(1)
    for position, phrase in POSITION_PHRASES.items():
        if phrase in prompt and position != "center":
            asked["position"] = position
    for size in SIZES:
        if re.search(rf"\b{size}\b", prompt):
            asked["size"] = size
    return asked


def shows(prediction: dict, wanted: dict) -> bool:
    return all(prediction.get(k) == v for k, v in wanted.items())


def shapes_scores(predictions: dict[str, list[dict]], kinds: dict[str, str], trait: dict,
                  class_noun: str) -> dict[str, float]:
    """``predictions[prompt]`` = classifier outputs for that prompt's samples; ``kinds[prompt]``
    is subject/context/property/class."""
    subject = [p for prompt, preds in predictions.items() if kinds[prompt] in ("subject", "context") for p in preds]
    with_shape = dict(trait, shape=class_noun)
    asked = [(p, asked_attributes(prompt)) for prompt, preds in predictions.items()
             if kinds[prompt] in ("context", "property") for p in preds]
    asked = [(p, a) for p, a in asked if a]
    cls = [p for prompt, preds in predictions.items() if kinds[prompt] == "class" for p in preds]
    out = {}
    if subject:
        out["subject_fidelity"] = sum(shows(p, with_shape) for p in subject) / len(subject)
    if asked:
        out["prompt_fidelity"] = sum(shows(p, a) for p, a in asked) / len(asked)
    if cls:
        out["class_prior"] = sum(not shows(p, trait) for p in cls) / len(cls)
        out["class_variety"] = len({(p.get("colour"), p.get("pattern")) for p in cls}) / len(cls)
    return out
