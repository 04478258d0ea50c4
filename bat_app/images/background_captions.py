"""Background captions the model's CLIP suggests: each photo's background named zero-shot among a
preset's phrases, for the Train tab's Captions box (the user checks them before Start).

    phrases = background_phrases("shapes")             # "on a red background", ...
    suggest_backgrounds(embedder, photos, "heart", phrases)
    # ["on a black background", "on a blue background", ...]

Why: a LoRA's trigger takes on its photos' backgrounds (on shapes, "a photo of sks heart" comes out
on one photo's background in 16 of 16 samples), and then fights prompts that ask for another one.
Captions that say the background let the trigger mean the subject alone. On the shapes backbone
these suggestions name 24 of the 25 example photos' backgrounds right, and ALBAT trained with them
(the "half" mix) follows recontext prompts +6.3 [+1.1, +11.6] points better with its trait kept on
average (-0.2 [-4.0, +3.5]); the one wrong name cost its subject what it named (docs/shapes.md,
twenty-third session). So they are a suggestion to check, not a default.
"""

from __future__ import annotations

from collections.abc import Sequence

# Settings a product or pet photo is commonly taken in (CLIP ViT-B/32 reads these reliably).
GENERIC_PHRASES = ("on a white background", "on a black background", "on a grey background", "on a wooden table",
                   "on a kitchen counter", "on a bed", "on a sofa", "on a carpet", "on grass", "on the beach",
                   "in the snow", "on a city street", "in a forest", "in a living room", "outdoors")


def background_phrases(preset: str | None) -> list[str]:
    """The phrases a preset's photos are named with: on shapes the world's ten plain colours, in
    the words of its recontext prompts; else common settings of product and pet photos."""
    if preset == "shapes":
        from ..shapes.world import COLOURS

        return [f"on a {colour} background" for colour in COLOURS]
    return list(GENERIC_PHRASES)


def suggest_backgrounds(embedder, images: Sequence, class_noun: str, phrases: Sequence[str]) -> list[str]:
    """For each image (PIL), the phrase whose "a photo of a <class> <phrase>" is nearest to it in
    ``embedder``'s space (``encode_images`` / ``encode_texts``, unit rows)."""
    if not images:
        return []
    texts = embedder.encode_texts([f"a photo of a {class_noun} {phrase}" for phrase in phrases])
    return [phrases[i] for i in (embedder.encode_images(list(images)) @ texts.T).argmax(1)]
