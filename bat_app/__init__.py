"""BAT Studio: personalize text-to-image diffusion models from a few images with
Backbone Augmented Training (DreamBooth-LoRA + images pulled from the backbone's own
pre-training data).

Layers (arrows point down): ui -> jobs -> albat / train / preview -> pool / models / images.
Start with ``python -m bat_app --help``.
"""

__version__ = "0.1.0"
