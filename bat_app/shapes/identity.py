"""The identity network: the Shapes world's DINO, a subject-fidelity eye that is not the judge.

DreamBench scores subject fidelity with DINO, a network trained without the benchmark's labels
whose features see fine detail. The shapes world's CLIP barely sees a dot or an outline, and the
judge (``classifier.py``) is what the benchmarks grade with, so a check built on it would grade
itself. This network learns only which renders show the same object:

    identity  shape, colour, pattern and marking: what makes "the user's subject"
    nuisance  background, size, position (and the VAE's softness): what it must ignore

It is trained contrastively (NT-Xent): each batch holds objects and *siblings* that differ from
them in one identity attribute, each drawn twice with its own background, size and position, one
of the two views through the backbone's VAE. It never sees a generated sample, a subject, a
prompt, the judge or its outputs.

    net = load_identity()                       # assets/shapes/identity
    emb = net.encode_images(pil_images)         # (n, 64), unit length
    fidelity = clip_i(net.encode_images(samples), net.encode_images(photos))  # metrics.clip_scores
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bat_app.shapes._train import load_half, save_half, warmup_cosine
from bat_app.shapes.classifier import conv_trunk, soften, through_vae, to_tensor
from bat_app.shapes.world import ATTRIBUTES, RESOLUTION, ShapesWorld, render

IDENTITY = ("shape", "colour", "pattern", "marking")
DIM = 64
TEMPERATURE = 0.1


class IdentityNet(nn.Module):
    """The judge's conv trunk (its own weights) and a projection to a unit-length embedding."""

    def __init__(self, width: int = 16, dim: int = DIM):
        super().__init__()
        self.features = conv_trunk(width)
        self.project = nn.Linear(256, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.project(self.features(x)), dim=-1)


class IdentityEmbedder:
    """``encode_images(PIL images) -> (n, DIM)`` unit vectors: the ``embedder`` interface that
    ``preview.step_pick`` and the metrics use for CLIP and DINO."""

    def __init__(self, net: IdentityNet, meta: dict | None = None):
        self.net = net.eval()
        self.meta = meta or {}

    @torch.no_grad()
    def encode_images(self, images, batch_size: int = 256) -> np.ndarray:
        x = to_tensor(images)
        return torch.cat([self.net(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


# ------------------------------------------------------------------------------ data


def _sibling(identity: dict, rng: random.Random) -> dict:
    """``identity`` with one of its four attributes changed (a near miss the net must tell apart)."""
    key = rng.choice(IDENTITY)
    return {**identity, key: rng.choice([v for v in ATTRIBUTES[key] if v != identity[key]])}


def _view(identity: dict, rng: random.Random) -> dict:
    """One drawing of an object: its own background (never its colour), size, position, jitter."""
    background = rng.choice([c for c in ATTRIBUTES["background"] if c != identity["colour"]])
    return {**identity, "background": background, "size": rng.choice(ATTRIBUTES["size"]),
            "position": rng.choice(ATTRIBUTES["position"]),
            "jitter": (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), rng.uniform(0.92, 1.08))}


def object_views(seed: int, n_pairs: int, progress: bool = False) -> tuple[np.ndarray, list[dict], list[str]]:
    """``n_pairs`` objects of the full attribute space, each followed by a sibling: uint8 views
    (2 * n_pairs, 2, 32, 32, 3), the identities, and which attribute each sibling changed."""
    from tqdm.auto import tqdm

    world = ShapesWorld(seed, pretraining=False)
    rng = random.Random(seed + 1)
    views = np.empty((2 * n_pairs, 2, RESOLUTION, RESOLUTION, 3), np.uint8)
    identities, changed = [], []
    for i in tqdm(range(n_pairs), desc="render objects", disable=not progress, mininterval=5):
        base = {k: v for k, v in world.sample_attributes().items() if k in IDENTITY}
        twin = _sibling(base, rng)
        changed.append(next(k for k in IDENTITY if twin[k] != base[k]))
        for j, identity in enumerate((base, twin)):
            identities.append(identity)
            for v in range(2):
                views[2 * i + j, v] = np.asarray(render(_view(identity, rng)))
    return views, identities, changed


def with_vae_views(vae, views: np.ndarray, device: str = "cpu") -> np.ndarray:
    """The second view of every object replaced by its VAE reconstruction (what samples look like)."""
    out = views.copy()
    out[:, 1] = through_vae(vae, np.ascontiguousarray(views[:, 1]), device=device)
    return out


# ------------------------------------------------------------------------------ training


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss for 2B unit embeddings where row i and row i + B are one object's views."""
    n = z.shape[0] // 2
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def train_identity(views: np.ndarray, steps: int = 2000, pairs_per_batch: int = 64, lr: float = 2e-3,
                   seed: int = 0, progress: bool = True) -> IdentityEmbedder:
    """``views`` from ``object_views`` (objects and siblings interleaved): each step draws
    ``pairs_per_batch`` pairs, so every object meets its sibling as a negative."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_objects = views.shape[0]
    first = to_tensor(np.ascontiguousarray(views[:, 0]))
    second = to_tensor(np.ascontiguousarray(views[:, 1]))
    net = IdentityNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps, int(steps * 0.05))
    net.train()
    bar = tqdm(range(steps), desc="identity", disable=not progress, mininterval=10)
    for step in bar:
        pairs = torch.randint(0, n_objects // 2, (pairs_per_batch,), generator=gen)
        idx = torch.stack([2 * pairs, 2 * pairs + 1], 1).reshape(-1)
        z = net(soften(torch.cat([first[idx], second[idx]]), gen))
        loss = nt_xent(z)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return IdentityEmbedder(net.eval())


def gate(embedder: IdentityEmbedder, views: np.ndarray, changed: list[str], identities: list[dict],
         gallery: int = 512) -> dict:
    """The figures the identity network must reach before it may pick anything (docs/shapes.md):

    identity       share of second (VAE) views whose nearest first view among ``gallery``
                   objects is their own object's (as first stated; an identical object drawn
                   separately counts as a miss)
    same_identity  the same, a hit when the nearest object has the same identity (the revision:
                   two draws of one identity cannot be told apart)
    marking        over objects whose sibling differs only in the marking, share whose second
                   view is closer to the object's first view than to the sibling's first view
    (and likewise shape, colour, pattern)
    """
    a = embedder.encode_images(np.ascontiguousarray(views[:, 0]))
    b = embedder.encode_images(np.ascontiguousarray(views[:, 1]))
    keys = [tuple(identity[k] for k in IDENTITY) for identity in identities]
    hits, same = [], []
    for start in range(0, len(a) - gallery + 1, gallery):
        nearest = (b[start:start + gallery] @ a[start:start + gallery].T).argmax(1) + start
        hits.extend((nearest == np.arange(start, start + gallery)).tolist())
        same.extend(keys[n] == keys[i] for i, n in zip(range(start, start + gallery), nearest))
    out = {"identity_top1": round(float(np.mean(hits)), 4), "same_identity_top1": round(float(np.mean(same)), 4),
           "identity_n": len(hits)}
    for key in IDENTITY:
        wins = [float(b[2 * i + j] @ a[2 * i + j] > b[2 * i + j] @ a[2 * i + 1 - j])
                for i, c in enumerate(changed) if c == key for j in (0, 1)]
        out[key] = round(float(np.mean(wins)), 4) if wins else None
        out[f"{key}_n"] = len(wins)
    return out


def build_identity(folder: Path, vae, seed: int = 0, n_pairs: int = 20000, n_test_pairs: int = 1000,
                   steps: int = 2000, device: str = "cpu") -> dict:
    """Render, train, gate on held-out objects (seed + 303), save."""
    t0 = time.time()
    views, _, _ = object_views(seed + 301, n_pairs, progress=True)
    embedder = train_identity(with_vae_views(vae, views, device), steps=steps, seed=seed)
    test_views, identities, changed = object_views(seed + 303, n_test_pairs)
    meta = {"gate": gate(embedder, with_vae_views(vae, test_views, device), changed, identities),
            "train_objects": 2 * n_pairs, "steps": steps, "seed": seed, "temperature": TEMPERATURE,
            "train_seconds": round(time.time() - t0, 1)}
    save_identity(embedder, folder, meta)
    return meta


def save_identity(embedder: IdentityEmbedder, folder: Path, meta: dict) -> None:
    save_half(embedder.net, folder, "identity.json", meta)


def load_identity(folder: Path | str | None = None) -> IdentityEmbedder:
    """The shipped identity network (``assets/shapes/identity``) or the one in ``folder``."""
    from bat_app.errors import ModelLoadError
    from bat_app.shapes.paths import shapes_paths

    folder = Path(folder) if folder is not None else shapes_paths().root / "identity"
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"No identity network at {folder}: build it with "
                             "`python -m bat_app shapes identity --out FOLDER` (about 10 CPU-minutes).")
    return IdentityEmbedder(load_half(IdentityNet(), folder), json.loads((folder / "identity.json").read_text()))
