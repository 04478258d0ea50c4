"""CLIP embedders: images and texts -> L2-normalized float32 vectors, named by ``model_id``.

A pool records the ``model_id`` of the embedder that built it and refuses queries from any
other, because vectors of two CLIP models live in unrelated spaces.

    emb = load_embedder("ViT-B-32", "laion2b_s34b_b79k")   # open_clip name + pretrained tag
    emb = load_embedder("shapes")                          # the offline Shapes-world CLIP
    emb = load_embedder("path/to/open_clip_dir")           # open_clip_config.json + weights
    emb = load_embedder("assets/shapes/clip")              # the same as "shapes" (pruned tokens)
    emb = OpenClipEmbedder(model, preprocess, tokenizer, model_id="tiny-test")
    vecs = emb.encode_images([pil_image])                  # (1, emb.dim) float32, unit norm
    emb.model_id                                           # "open_clip:ViT-B-32/laion2b_s34b_b79k"
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from bat_app.errors import BatError
from bat_app.errors import PoolError

SHAPES_NAME = "shapes"
# Names the shipped CLIP's version: a pool embedded with an earlier shapes CLIP is refused
# (Pool.check_embedder) and the app's own shapes pool is rebuilt, never silently mixed.
SHAPES_MODEL_ID = "shapes-clip-v2"
PRUNED_TOKEN_KEY = "token_embedding.kept_ids"  # bat_app.shapes.clip.save_clip's token table
_SHAPES_DIGESTS: dict = {}  # shapes CLIP folder -> its digest (the folder is read once)


@runtime_checkable
class Embedder(Protocol):
    """What pools and selectors need from a CLIP model."""

    model_id: str   # recorded in the pool manifest, e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k"
    dim: int

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, each row L2-normalized."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, each row L2-normalized."""


class OpenClipEmbedder:
    """An :class:`Embedder` over any open_clip-style (model, preprocess, tokenizer) triple.

    ``model`` needs ``encode_image(x, normalize=True)`` and ``encode_text(ids, normalize=True)``;
    ``preprocess`` maps a PIL image to a (3, H, W) tensor; ``tokenizer`` maps a list of str to
    ids. Tests build a tiny random open_clip model and wrap it here.
    """

    def __init__(self, model, preprocess, tokenizer, model_id: str, device=None):
        import torch

        if not model_id:
            raise PoolError("OpenClipEmbedder needs a non-empty model_id: it is what the pool "
                            "manifest records to refuse queries from another model.")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.dim = _output_dim(model) or int(self.encode_texts(["a"]).shape[1])

    def __repr__(self) -> str:
        return f"OpenClipEmbedder({self.model_id!r}, dim={self.dim}, device={self.device})"

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        import torch

        x = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        with torch.inference_mode(), self._autocast():
            return _unit_rows(self.model.encode_image(x, normalize=True))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        import torch

        ids = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            return _unit_rows(self.model.encode_text(ids, normalize=True))

    def _autocast(self):
        import contextlib

        import torch

        # fp16 matmuls on a GPU change the vectors by ~1e-3, far below neighbour gaps.
        return torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()


def load_embedder(name: str = "ViT-B-32", pretrained: str | None = "laion2b_s34b_b79k",
                  device=None) -> OpenClipEmbedder:
    """Load a CLIP embedder.

    Args:
        name: an open_clip model name ("ViT-B-32", "ViT-L-14", "hf-hub:org/repo"), "shapes"
            for the shipped Shapes-world CLIP, or a local folder in open_clip's hub format
            (``open_clip_config.json`` + ``open_clip_model.safetensors`` or another weights file).
            Folders written by ``bat_app.shapes.clip.save_clip``, whose token table keeps only
            the rows the Shapes world uses, load through ``bat_app.shapes.clip.load_clip``.
        pretrained: open_clip pretrained tag or weights file; ignored for "shapes", hub ids and
            folders. ``None`` means random weights (only useful in tests).
        device: "cpu", "cuda", ...; default cuda when available.

    Raises PoolError when the model cannot be loaded (unknown name, weights not downloadable
    offline, shapes assets not built), saying what to do.
    """
    model_id = embedder_id(name, pretrained)
    if name == SHAPES_NAME:
        model, preprocess, tokenizer = _load_shapes()
        return OpenClipEmbedder(model, preprocess, tokenizer, model_id, device)
    if Path(name).is_dir() and has_pruned_tokens(Path(name)):
        model, preprocess, tokenizer = _load_pruned(Path(name))
        return OpenClipEmbedder(model, preprocess, tokenizer, model_id, device)
    import open_clip

    spec = f"local-dir:{name}" if Path(name).is_dir() else name
    weights = None if spec.startswith(("local-dir:", "hf-hub:")) else pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=weights)
        tokenizer = open_clip.get_tokenizer(spec)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise PoolError(_load_failure(name, pretrained, exc)) from exc
    return OpenClipEmbedder(model, preprocess, tokenizer, model_id, device)


def embedder_for_pool(pool, clip_model: str | None = None, clip_pretrained: str | None = None,
                      device=None) -> OpenClipEmbedder:
    """The CLIP a pool was built with, loaded from its manifest's ``model_id`` (or the model
    given, which must be that same one). Pools built with a local folder or weights file
    need it named again: the manifest records its content hash, not where it lives."""
    model_id = pool.model_id
    if clip_model is not None:
        embedder = load_embedder(clip_model, clip_pretrained, device=device)
    elif model_id == SHAPES_MODEL_ID:
        embedder = load_embedder(SHAPES_NAME, device=device)
    elif model_id.startswith("open_clip:hf-hub:"):
        embedder = load_embedder(model_id.removeprefix("open_clip:"), device=device)
    elif model_id.startswith("open_clip:") and "/" in model_id and "/file:" not in model_id \
            and not model_id.startswith("open_clip:local-dir:"):
        name, pretrained = model_id.removeprefix("open_clip:").split("/", 1)
        embedder = load_embedder(name, None if pretrained == "random" else pretrained, device=device)
    else:
        raise PoolError(f"Pool {pool.folder} was built with a local CLIP model ({model_id}); "
                        "pass the same model with --clip-model FOLDER [--clip-pretrained FILE].")
    pool.check_embedder(embedder)
    return embedder


def embedder_id(name: str, pretrained: str | None = None) -> str:
    """The ``model_id`` that ``load_embedder(name, pretrained)`` will have, without loading it.

    Folders and weight files are named by content (a hash of the config and the weights'
    size, head and tail), so moving them does not change the id but retraining does.
    """
    if name == SHAPES_NAME:
        return SHAPES_MODEL_ID
    if Path(name).is_dir():
        folder = Path(name)
        digest = _folder_digest(folder)
        if digest == _shipped_shapes_digest():
            return SHAPES_MODEL_ID  # the shipped shapes CLIP by path: the same model as "shapes"
        return f"open_clip:local-dir:{folder.resolve().name}@{digest}"
    if name.startswith("hf-hub:"):
        return f"open_clip:{name}"
    if pretrained and Path(pretrained).is_file():
        return f"open_clip:{name}/file:{Path(pretrained).name}@{_file_digest(Path(pretrained))}"
    return f"open_clip:{name}/{pretrained or 'random'}"


def known_dim(name: str) -> int | None:
    """Embedding width of an open_clip model config, without weights (None when unknown)."""
    if name == SHAPES_NAME:
        return None
    try:
        import open_clip

        cfg = open_clip.get_model_config(f"local-dir:{name}" if Path(name).is_dir() else name)
    except (OSError, RuntimeError, ValueError):
        return None
    return int(cfg["embed_dim"]) if cfg and "embed_dim" in cfg else None


def _load_shapes():
    try:
        from bat_app.shapes import load_shapes_clip
    except ImportError as exc:
        raise PoolError(f"The shapes CLIP is not available ({exc}): the shapes assets are "
                        "missing from this install. Build them with `python -m bat_app shapes "
                        "build`, or pass an open_clip model with --clip-model.") from exc
    try:
        return load_shapes_clip()
    except (BatError, OSError, RuntimeError) as exc:  # assets not built, or a damaged asset
        raise PoolError(f"The shapes CLIP could not be loaded: {exc}") from exc


def has_pruned_tokens(folder: Path) -> bool:
    """True for a folder in ``bat_app.shapes.clip.save_clip``'s format: open_clip's layout, but
    the token table stored as the kept rows and their ids, which open_clip cannot load."""
    weights = folder / "open_clip_model.safetensors"
    if not weights.is_file():
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            return PRUNED_TOKEN_KEY in f.keys()
    except (SafetensorError, OSError) as exc:
        raise PoolError(f"{weights} is not a readable safetensors file ({exc}); restore it or "
                        "pass another --clip-model.") from exc


def _load_pruned(folder: Path):
    # One loader for this format (the shapes package's), so the way the rows that were not
    # kept are filled in stays in one place.
    from bat_app.shapes.clip import load_clip

    try:
        return load_clip(folder)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise PoolError(f"The CLIP folder {folder} (pruned token table, written by "
                        f"bat_app.shapes.clip.save_clip) could not be loaded: {exc}") from exc


def _shipped_shapes_digest() -> str | None:
    """Digest of the shapes CLIP folder in use (BAT_ASSETS can move it), cached per folder."""
    try:
        from bat_app.shapes.paths import shapes_paths

        folder = shapes_paths().clip
    except ImportError:
        return None
    if folder not in _SHAPES_DIGESTS:
        try:
            _SHAPES_DIGESTS[folder] = _folder_digest(folder) if folder.is_dir() else None
        except (OSError, ValueError):
            return None
    return _SHAPES_DIGESTS[folder]


def _load_failure(name: str, pretrained: str | None, exc: Exception) -> str:
    text = str(exc)
    what = f"open_clip model {name!r}" + (f" with pretrained {pretrained!r}" if pretrained else "")
    if "not found" in text and "Model config" in text:
        return (f"Unknown {what}. Use a name from `open_clip.list_models()` (e.g. ViT-B-32, "
                "ViT-L-14), 'shapes', or a local open_clip model folder.")
    if "not a known tag" in text or "Pretrained tag" in text:
        return (f"Unknown pretrained tag {pretrained!r} for {name!r}. Use one of "
                f"`open_clip.list_pretrained_tags_by_model({name!r})` or a weights file path.")
    if "download" in text.lower() or "offline" in text.lower() or "cache" in text.lower():
        return (f"Could not load the weights of {what}: they are not in the local cache and "
                "cannot be downloaded here (offline?). Run once with network access to cache "
                "them, or pass a local open_clip model folder (open_clip_config.json + weights) "
                f"as --clip-model. Details: {text[:300]}")
    return f"Could not load {what}: {text[:500]}"


def _output_dim(model) -> int | None:
    visual = getattr(model, "visual", None)
    dim = getattr(visual, "output_dim", None)
    return int(dim) if isinstance(dim, int) else None


def _unit_rows(t) -> np.ndarray:
    x = t.float().cpu().numpy().astype(np.float32, copy=False)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if path.stat().st_size > 2 * chunk:
            f.seek(-chunk, 2)
            h.update(f.read(chunk))
    return h.hexdigest()[:12]


def _folder_digest(folder: Path) -> str:
    config = folder / "open_clip_config.json"
    h = hashlib.sha256(json.dumps(json.loads(config.read_text()), sort_keys=True).encode()
                       if config.is_file() else b"")
    for weights in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt")):
        h.update(weights.name.encode() + _file_digest(weights).encode())
    return h.hexdigest()[:12]
