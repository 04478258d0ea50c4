"""The attribute classifier: a small CNN that reads Shapes-world attributes back from an image.

It is the judge of generated samples (prompt following, personalization traits), so it is
trained on the *whole* attribute space (``ShapesWorld(pretraining=False)``: held-out
colour+pattern combinations and markings included) with mild blur and noise, because samples
from a tiny latent model are softer than renders.

    clf = load_attribute_classifier()
    clf.predict([pil_image])  # [{'shape': 'star', 'colour': 'red', ...}]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from PIL import Image
from torch import nn

from bat_app.shapes._train import load_half, save_half, warmup_cosine
from bat_app.shapes.world import ATTRIBUTES, RESOLUTION

HEADS = {key: list(values) for key, values in ATTRIBUTES.items()}


def conv_trunk(width: int = 16) -> nn.Sequential:
    """Three conv stages (32 -> 16 -> 8 -> 4 px), flattened to 256 features: the judge's eye,
    also the identity network's (``identity.py``)."""
    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                             nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                             nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width),
                         nn.Flatten(), nn.Linear(4 * width * 16, 256), nn.ReLU())


class AttributeNet(nn.Module):
    """The conv trunk and one linear head per attribute."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.features = conv_trunk(width)
        self.heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {k: head(h) for k, head in self.heads.items()}


def to_tensor(images) -> torch.Tensor:
    """PIL images or a uint8 array (n, h, w, 3) -> float tensor (n, 3, 32, 32) in [-1, 1]."""
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB").resize((RESOLUTION, RESOLUTION),
                                                             Image.BOX)
                                   if im.size != (RESOLUTION, RESOLUTION) else im.convert("RGB"))
                        for im in images])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def soften(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Soften like a decoded latent: random blur on half the batch, light noise on all."""
    n = x.shape[0]
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    w = (torch.rand(n, 1, 1, 1, generator=gen) * 0.6) * (torch.rand(n, 1, 1, 1, generator=gen) < 0.5)
    x = x * (1 - w.to(x.device)) + blurred * w.to(x.device)
    return x + 0.04 * torch.randn(x.shape, generator=gen).to(x.device)


class AttributeClassifier:
    """Wraps the net with its label names; ``predict`` takes PIL images or uint8 arrays."""

    def __init__(self, net: AttributeNet, heads: dict[str, list[str]], meta: dict | None = None):
        self.net = net.eval()
        self.heads = heads
        self.meta = meta or {}

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> list[dict[str, str]]:
        x = to_tensor(images)
        out: list[dict[str, str]] = []
        for i in range(0, len(x), batch_size):
            logits = self.net(x[i:i + batch_size])
            idx = {k: v.argmax(1).tolist() for k, v in logits.items()}
            for j in range(len(next(iter(idx.values())))):
                out.append({k: self.heads[k][idx[k][j]] for k in self.heads})
        return out


def accuracy(clf: AttributeClassifier, images, attributes: list[dict]) -> dict[str, float]:
    pred = clf.predict(images)
    return {k: float(np.mean([p[k] == a[k] for p, a in zip(pred, attributes)]))
            for k in clf.heads}


def train_classifier(images: np.ndarray, attributes: list[dict], steps: int = 1500,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True, device: str = "cpu") -> AttributeClassifier:
    """Returns the classifier on the CPU; random draws come from one CPU generator."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = AttributeNet().to(device)
    labels = {k: torch.tensor([HEADS[k].index(a[k]) for a in attributes], device=device)
              for k in HEADS}
    x_all = to_tensor(images).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps, int(steps * 0.1))
    net.train()
    bar = tqdm(range(steps), desc="classifier", disable=not progress, mininterval=10)
    for step in bar:
        idx = torch.randint(0, len(x_all), (batch_size,), generator=gen).to(device)
        logits = net(soften(x_all[idx], gen))
        loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return AttributeClassifier(net.cpu(), HEADS)


def save_classifier(clf: AttributeClassifier, folder: Path, meta: dict) -> None:
    save_half(clf.net, folder, "classifier.json", {"heads": clf.heads, **meta})


def load_classifier(folder: Path) -> AttributeClassifier:
    meta = json.loads((Path(folder) / "classifier.json").read_text())
    return AttributeClassifier(load_half(AttributeNet(), folder), meta["heads"], meta)


@torch.no_grad()
def through_vae(vae, images: np.ndarray, batch_size: int = 500, device: str = "cpu") -> np.ndarray:
    """Encode and decode with the backbone's VAE: what its samples look like at best."""
    vae = vae.to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = vae.decode(vae.encode(x.to(device)).latent_dist.mean).sample.cpu()
        out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    vae.cpu()
    return np.concatenate(out)


def _render_full_space(seed: int, n: int):
    from bat_app.shapes.world import sample_arrays

    return sample_arrays(seed, n, pretraining=False, progress=True)


def build_classifier(folder: Path, seed: int, n_train: int = 40000, n_test: int = 4000,
                     steps: int = 1500, vae=None, batch_size: int = 128, device: str = "cpu",
                     render=_render_full_space) -> dict:
    """Train on the full attribute space, measure held-out per-attribute accuracy, save.

    With ``vae``, half the training images are replaced by their VAE reconstructions, so
    that the judge reads decoded samples (softer patterns, shifted colours) as well as renders.
    ``render(seed, n) -> (images, captions, attributes)`` draws the judge's stream (a build
    passes a cached one: rendering is the slow part on a GPU machine).
    """
    t0 = time.time()
    images, _, attrs = render(seed + 101, n_train)
    if vae is not None:
        half = n_train // 2
        images = np.concatenate([images[:half], through_vae(vae, images[half:], device=device)])
    clf = train_classifier(images, attrs, steps=steps, seed=seed, batch_size=batch_size,
                           device=device)
    test_images, _, test_attrs = render(seed + 202, n_test)
    acc = accuracy(clf, test_images, test_attrs)
    meta = {"held_out_accuracy": acc, "held_out_n": n_test, "train_n": n_train,
            "steps": steps, "batch_size": batch_size, "seed": seed, "device": str(device),
            "train_seconds": round(time.time() - t0, 1)}
    if vae is not None:
        meta["held_out_accuracy_through_vae"] = accuracy(
            clf, through_vae(vae, test_images, device=device), test_attrs)
        meta["vae_reconstructions"] = "half of the training images"
    save_classifier(clf, folder, meta)
    return meta
