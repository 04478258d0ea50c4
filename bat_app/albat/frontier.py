"""A small line/scatter plot drawn with PIL (no plotting library in the runtime pins).

    image = line_panels([Panel("subject loss vs drift", "subject loss", "drift", {"albat": [(x, y), ...]})])
    image.save("docs/albat_frontier.png")

Each series is a polyline through its points in order (the checkpoints), its last point marked
larger, so a frontier over training reads from the small dots to the big one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0)]


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    note: str = ""


def line_panels(panels: list[Panel], size: tuple[int, int] = (560, 440)) -> Image.Image:
    """Panels side by side, one shared legend (series names in the same colour everywhere)."""
    names = list(dict.fromkeys(n for p in panels for n in p.series))
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    legend_h = 18 * ((len(names) + 3) // 4) + 10
    image = Image.new("RGB", (size[0] * len(panels), size[1] + legend_h), "white")
    draw = ImageDraw.Draw(image)
    for i, panel in enumerate(panels):
        _panel(draw, panel, colour, i * size[0], size)
    for j, name in enumerate(names):
        x, y = 12 + (j % 4) * (image.width // 4), size[1] + 6 + 18 * (j // 4)
        draw.rectangle([x, y + 3, x + 10, y + 13], fill=colour[name])
        draw.text((x + 16, y + 2), name, fill="black")
    return image


def _panel(draw: ImageDraw.ImageDraw, panel: Panel, colour: dict, left: int, size: tuple[int, int]) -> None:
    w, h = size
    box = (left + 60, 30, left + w - 15, h - 45)  # plot area
    draw.text((left + 60, 8), f"{panel.title}; y: {panel.y_label}", fill="black")
    draw.rectangle(box, outline="black")
    points = [pt for pts in panel.series.values() for pt in pts]
    if not points:
        draw.text((box[0] + 10, box[1] + 10), panel.note or "no data", fill="gray")
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    (x0, x1), (y0, y1) = _span(min(xs), max(xs)), _span(min(ys), max(ys))
    to_px = lambda x, y: (box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]),
                          box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))
    for k in range(5):  # ticks
        fx, fy = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        px, _ = to_px(fx, y0)
        _, py = to_px(x0, fy)
        draw.line([px, box[3], px, box[3] + 4], fill="black")
        draw.text((px - 18, box[3] + 6), f"{fx:.3g}", fill="black")
        draw.line([box[0] - 4, py, box[0], py], fill="black")
        draw.text((left + 4, py - 6), f"{fy:.3g}", fill="black")
    draw.text(((box[0] + box[2]) // 2 - 40, h - 22), panel.x_label, fill="black")
    for name, pts in panel.series.items():
        px = [to_px(x, y) for x, y in pts]
        if len(px) > 1:
            draw.line(px, fill=colour[name], width=2)
        for j, (x, y) in enumerate(px):
            r = 5 if j == len(px) - 1 else 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour[name])
    if panel.note:
        draw.text((box[0] + 6, box[1] + 4), panel.note, fill="gray")


def _span(lo: float, hi: float) -> tuple[float, float]:
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad
