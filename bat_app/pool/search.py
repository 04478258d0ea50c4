"""Look inside a pool: nearest items to a text or an image, and a contact sheet of them.

What ``pool search`` prints and what a pool browser shows, so a user sees what a pool holds
before training on it.

    from bat_app.pool import Pool, embedder_for_pool
    from bat_app.pool.search import search, contact_sheet
    pool = Pool.open("pools/laion")
    emb = embedder_for_pool(pool)                       # the CLIP the pool was built with
    hits = search(pool, emb, "a corgi on a beach", k=20)  # or an image path / PIL image
    hits[0].id, hits[0].score, hits[0].caption
    contact_sheet(pool, hits).save("sheet.png")

Items the pool's content filters flag (unsafe, watermarked: docs/pool.md) are left out unless
``include_flagged=True``; a hit shows its flags either way.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bat_app.errors import PoolError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class SearchHit:
    rank: int               # 1-based
    id: int                 # pool item id
    score: float            # cosine similarity to the query
    caption: str
    source: str             # where the item came from in the pool's source
    url: str | None = None
    flags: list[str] = field(default_factory=list)  # e.g. ["unsafe"]; empty when allowed

    def to_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": round(self.score, 5),
                "caption": self.caption, "source": self.source, "url": self.url,
                "flags": self.flags}


def query_vector(embedder, query) -> tuple[np.ndarray, str]:
    """(1, dim) unit vector for ``query`` and a description of it.

    ``query``: a PIL image, a path to an image file, or text. A string naming an image file
    (by its suffix) that does not exist is an error rather than a text query: searching for
    the words "cat.jpg" is never what was meant.
    """
    if isinstance(query, Image.Image):
        return embedder.encode_images([query]), "an image"
    if isinstance(query, Path) or (isinstance(query, str) and query.lower().endswith(IMAGE_SUFFIXES)):
        path = Path(query)
        if not path.is_file():
            raise PoolError(f"Image query {str(path)!r} does not exist. Give the path of an image "
                            "file, or a text query (without an image file suffix).")
        from bat_app.pool.build import DECODE_ERRORS

        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except DECODE_ERRORS as exc:
            raise PoolError(f"Image query {path} cannot be decoded ({exc}); give a jpg/png/webp "
                            "image or a text query.") from exc
        return embedder.encode_images([image]), f"image {path}"
    if not isinstance(query, str) or not query.strip():
        raise PoolError(f"A search query is text or an image path, got {query!r}.")
    return embedder.encode_texts([query.strip()]), f"text {query.strip()!r}"


def search(pool, embedder, query, k: int = 20, include_flagged: bool = False) -> list[SearchHit]:
    """The k pool items nearest to ``query`` (text, image path or PIL image), best first.

    ``embedder`` must be the pool's own model (checked). Flagged items are left out unless
    ``include_flagged``; fewer than k hits come back when the pool has fewer allowed items.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise PoolError(f"k must be a positive integer, got {k!r}.")
    pool.check_embedder(embedder)
    vector, _ = query_vector(embedder, query)
    scores, ids = pool.search(vector, int(min(k, len(pool))), include_flagged=include_flagged)
    hits = []
    for score, i in zip(scores[0].tolist(), ids[0].tolist()):
        if i < 0:
            break
        item = pool.item(i)
        hits.append(SearchHit(len(hits) + 1, i, float(score), item.caption, item.source, item.url,
                              pool.flags_of(i)))
    return hits


def contact_sheet(pool, hits: list[SearchHit], columns: int = 5, cell: int = 192,
                  caption_lines: int = 3) -> Image.Image:
    """A grid of the hits' images, each with rank, score and caption under it.

    Items whose image is not stored (url-only pools) get a grey cell with their url.
    """
    if not hits:
        raise PoolError("Nothing to put on a contact sheet: the search found no items.")
    if columns < 1 or cell < 32:
        raise PoolError(f"columns must be >= 1 and cell >= 32 px, got {columns} and {cell}.")
    font = ImageFont.load_default()
    line_h = 12
    text_h = line_h * (caption_lines + 1) + 6
    cols = min(columns, len(hits))
    rows = -(-len(hits) // cols)
    sheet = Image.new("RGB", (cols * cell, rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    chars = max(8, cell // 6)  # the default bitmap font is ~6 px wide
    for n, hit in enumerate(hits):
        x, y = (n % cols) * cell, (n // cols) * (cell + text_h)
        thumb = _thumbnail(pool, hit, cell)
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        head = f"#{hit.rank} id {hit.id}  {hit.score:.3f}" + (f" [{','.join(hit.flags)}]" if hit.flags else "")
        lines = [head] + textwrap.wrap(hit.caption, chars)[:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x + 3, y + cell + 3 + j * line_h), line, fill="black", font=font)
    return sheet


def _thumbnail(pool, hit: SearchHit, cell: int) -> Image.Image:
    try:
        image = pool.load_image(hit.id)
    except PoolError:
        # url-only pool (clip-retrieval embeddings): say so in the cell rather than fail
        image = Image.new("RGB", (cell, cell), (200, 200, 200))
        text = "no stored image" + (f"\n{hit.url[:cell // 6 * 3]}" if hit.url else "")
        ImageDraw.Draw(image).multiline_text((4, cell // 2 - 12), "\n".join(
            textwrap.wrap(text, cell // 6)), fill="black", font=ImageFont.load_default())
        return image
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # small images (the shapes world's 32 px) are blown up with crisp pixels, big ones shrunk smoothly
    return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)
