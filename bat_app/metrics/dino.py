"""DINO ViT-S/16 image similarity (DreamBench's subject-fidelity metric), when its weights exist.

The weights are never downloaded: they must already be in the local Hugging Face cache (timm's
``vit_small_patch16_224.dino``). Without them the DINO column is absent, with a note saying
why, never filled with a stand-in value.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

DINO_REPO = "timm/vit_small_patch16_224.dino"


@lru_cache(maxsize=1)
def load_dino():
    """(model, transform) or (None, reason)."""
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError as exc:
        return None, f"timm is not installed ({exc})"
    from huggingface_hub import try_to_load_from_cache

    # Cache only: a metric must never start a download (or wait on an unreachable hub).
    weights = try_to_load_from_cache(DINO_REPO, "model.safetensors")
    if not isinstance(weights, str):
        return None, f"DINO ViT-S/16 weights ({DINO_REPO}) are not in the local Hugging Face cache"
    try:
        model = timm.create_model("vit_small_patch16_224.dino", pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": weights}).eval()
    except Exception as exc:  # a damaged cache entry
        return None, f"DINO ViT-S/16 weights could not be loaded ({type(exc).__name__}: {exc})"
    transform = create_transform(**resolve_data_config({}, model=model))
    return (model, transform), None


def dino_embed(images) -> np.ndarray | None:
    import torch

    loaded, _ = load_dino()
    if loaded is None:
        return None
    model, transform = loaded
    with torch.no_grad():
        feats = model(torch.stack([transform(im.convert("RGB")) for im in images]))
    feats = torch.nn.functional.normalize(feats, dim=-1)
    return feats.numpy()


def dino_unavailable_reason() -> str | None:
    return load_dino()[1]
