"""Small pictures drawn with Pillow alone (no plotting library): the loss curve."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, debiased like TensorBoard's smoothing."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def loss_curve(losses: list[float], size: tuple[int, int] = (480, 240), title: str = "training loss") -> Image.Image:
    """Raw loss (light) and its smoothed trend (dark) against the step, on a log-free linear axis."""
    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, w - 10, 22, h - 24
    draw.rectangle([left, top, right, bottom], outline=(180, 180, 180))
    draw.text((left, 4), title, fill=(40, 40, 40))
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) < 2:
        draw.text((left + 8, (top + bottom) // 2), "not enough steps yet", fill=(120, 120, 120))
        return image
    lo, hi = min(finite), max(finite)
    hi = hi if hi > lo else lo + 1e-6

    def xy(i, v):
        return (left + (right - left) * i / (len(losses) - 1), bottom - (bottom - top) * (v - lo) / (hi - lo))

    for series, colour in ((losses, (170, 200, 235)), (smooth(losses), (20, 80, 170))):
        points = [xy(i, v) for i, v in enumerate(series) if math.isfinite(v)]
        draw.line(points, fill=colour, width=2 if colour[0] < 100 else 1)
    draw.text((4, top - 4), f"{hi:.3g}", fill=(80, 80, 80))
    draw.text((4, bottom - 8), f"{lo:.3g}", fill=(80, 80, 80))
    draw.text((left, bottom + 6), "step 1", fill=(80, 80, 80))
    draw.text((right - 60, bottom + 6), f"step {len(losses)}", fill=(80, 80, 80))
    return image
