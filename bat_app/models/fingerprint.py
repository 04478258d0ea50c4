"""Which weights a loaded backbone has: a short key for caches of what the model draws.

A cache of the backbone's own outputs (a generated pool, the base column of the previews) is
only valid for the weights that drew it. The preset name or hub id is not enough: a folder can
be retrained in place, a hub id moves to a new commit. So the key names

- a local folder by its files (relative path, size, modification time): editing any of them
  gives a new key, without reading gigabytes to hash them;
- a hub model by the commit of the snapshot it was loaded from (the hub cache's folder name);
- the VAE loaded in place of the model's own, the same way;
- the dtype and the device type (fp16 on a GPU does not draw the same pixels as fp32 on a CPU).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".json", ".txt", ".model")


def source_fingerprint(source: str | Path) -> str:
    """The weights at ``source`` (a folder or a hub id), as a short hex key."""
    folder = Path(source)
    if folder.is_dir():
        entries = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        identity = {"folder": str(folder.resolve()), "files": entries}
    else:
        identity = {"hub": str(source), "commit": _hub_commit(str(source))}
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def model_fingerprint(components) -> str:
    """The loaded backbone: its weights, its VAE's, the dtype and the device type."""
    spec = components.spec
    parts = {"model": source_fingerprint(spec.source), "dtype": str(components.dtype),
             "device": components.device.type}
    if spec.vae is not None:
        parts["vae"] = source_fingerprint(spec.vae)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _hub_commit(repo_id: str) -> str | None:
    """The commit of the cached snapshot the loader uses (offline lookup); None if not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # noqa: BLE001 - a malformed id or cache: no commit to name
        return None
    return Path(index).parent.name if isinstance(index, str) else None
