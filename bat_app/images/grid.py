"""Labelled image grids (contact sheets, comparison grids) drawn with Pillow alone."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def image_grid(images: Sequence[Image.Image], columns: int, cell: int | tuple[int, int] = 128,
               labels: Sequence[str] | None = None, column_titles: Sequence[str] | None = None,
               row_titles: Sequence[str] | None = None, label_height: int = 16, pad: int = 4,
               title_width: int = 0) -> Image.Image:
    """Lay ``images`` out row by row, each scaled to ``cell`` px (or a (w, h) cell; nearest-neighbour when
    upscaling, so small Shapes-world images stay crisp), with optional per-image labels,
    column titles on top and row titles on the left."""
    cell_w, cell_h_img = (cell, cell) if isinstance(cell, int) else cell
    rows = max(1, -(-len(images) // columns))
    top = label_height + pad if column_titles else 0
    left = title_width if row_titles else 0
    cell_h = cell_h_img + (label_height if labels else 0) + pad
    sheet = Image.new("RGB", (left + columns * (cell_w + pad) + pad, top + rows * cell_h + pad), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for c, title in enumerate(column_titles or []):
        draw.text((left + pad + c * (cell_w + pad), 2), _fit(draw, title, cell_w, font), fill=INK, font=font)
    for r, title in enumerate(row_titles or []):
        y = top + pad + r * cell_h + cell_h_img // 2 - 6
        draw.text((4, y), _fit(draw, title, title_width - 8, font), fill=INK, font=font)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        x, y = left + pad + c * (cell_w + pad), top + pad + r * cell_h
        if image.size != (cell_w, cell_h_img):
            resample = Image.NEAREST if image.width < cell_w else Image.LANCZOS
            image = image.resize((cell_w, cell_h_img), resample)
        sheet.paste(image.convert("RGB"), (x, y))
        if labels:
            draw.text((x, y + cell_h_img + 1), _fit(draw, labels[i], cell_w, font), fill=INK, font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if width <= 0 or draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
