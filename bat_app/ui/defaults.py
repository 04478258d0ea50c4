"""Training defaults chosen from the number of uploaded images (pure: no I/O, no torch).

    >>> suggested_settings(5, "sd15")["steps"]
    500
    >>> suggested_settings(5, "shapes")["steps"]
    200

The UI fills the folded "Advanced settings" with these whenever the number of images changes;
the user may still change any of them before pressing Start.
"""

from __future__ import annotations

# Backbones sized for a CPU: training cost has to stay within minutes there.
CPU_PRESETS = ("shapes",)


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


def suggested_settings(n_images: int, preset: str | None = None) -> dict:
    """steps, rank, lr, resolution (0 = the model's native size), seed, k, m, aug_weight.

    Why these numbers:
      - steps: DreamBooth-LoRA needs roughly 100 steps per image on SD 1.5 (400-1000 in
        practice); the CPU-sized shapes backbone learns a subject in about 40 per image.
      - rank: 4 is enough for one subject; more images carry more detail, so 8 from 7 images on.
      - lr: diffusers' DreamBooth-LoRA default (1e-4); shapes' tiny UNet takes a larger step.
      - m: backbone images added by ALBAT (and, for a fair comparison, by random/CLIP):
        about 20 per user image, 100-200 on a real pool (DESIGN.md), fewer on shapes.
      - k: the retrieval prefilter must leave ALBAT enough candidates to reject: 5-10 x m.
      - aug_weight (lambda): 1.0 as in prior preservation; with only 3 images the backbone part
        would outweigh the subject, so it is lowered to 0.5.
    """
    n = int(_clamp(int(n_images or 0), 3, 10))  # 0-2 (still uploading) -> plan for the minimum
    cpu = preset in CPU_PRESETS
    if cpu:
        steps = int(_clamp(40 * n, 120, 400))
        lr, m = 5e-4, int(_clamp(10 * n, 30, 100))
        k = 10 * m
    else:
        steps = int(_clamp(100 * n, 400, 1000))
        lr, m = 1e-4, int(_clamp(20 * n, 100, 200))
        k = max(1000, 5 * m)
    return {"steps": steps, "rank": 8 if n >= 7 else 4, "lr": lr, "resolution": 0, "seed": 0,
            "k": k, "m": m, "aug_weight": 0.5 if n <= 3 else 1.0}
