"""Write the shapes backbone's own pretraining data as a pool folder.

``write_pool(out, n, seed)`` renders the first n items of ``ShapesWorld(seed)`` - with the
build's seed (0) these are exactly the images the backbone was pretrained on - as
``000000.png`` + ``000000.txt`` (caption), the folder-pool layout, plus
``shapes_attributes.jsonl`` with the ground truth of each file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from bat_app.errors import InputError
from bat_app.shapes.world import RESOLUTION, ShapesWorld


def write_pool(out: Path | str, n: int, seed: int = 0, resolution: int = RESOLUTION,
               progress: bool | Callable[[int, int], None] = True) -> Path:
    """``progress``: a tqdm bar (True), none (False), or ``progress(done, n)`` every 250 items."""
    from tqdm.auto import tqdm

    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.png")):
        raise InputError(f"{out} already holds images; choose an empty folder for the pool.")
    world = ShapesWorld(seed, resolution=resolution)
    width = max(6, len(str(n - 1)))
    with open(out / "shapes_attributes.jsonl", "w") as meta:
        for i in tqdm(range(n), desc="pool", disable=progress is not True, mininterval=5):
            if callable(progress) and i % 250 == 0:
                progress(i, n)
            item = world.sample(1)[0]
            name = f"{i:0{width}d}"
            item.image.save(out / f"{name}.png")
            (out / f"{name}.txt").write_text(item.caption + "\n")
            meta.write(json.dumps({"file": f"{name}.png", "caption": item.caption,
                                   **item.attributes}) + "\n")
    return out
