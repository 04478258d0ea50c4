"""Shared fixtures: a tiny SD model folder, offline hub settings, user images on disk."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never touch the network: a hub id must fail fast with our offline message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One torch thread per process: tests start workers and servers beside the test process, and
# on 2 cores torch's default (a thread per core in every process) runs tiny models ~50x slower.
os.environ.setdefault("BAT_TORCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", os.environ["BAT_TORCH_THREADS"])

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_model import build_tiny_model

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"


def pytest_collection_modifyitems(config, items):
    """Slow tests run only with RUN_SLOW=1 or when selected with -m slow."""
    if os.environ.get("RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path_factory, monkeypatch):
    """Every test gets its own BAT_HOME/cache so caches never leak between tests."""
    home = tmp_path_factory.mktemp("bat-home")
    monkeypatch.setenv("BAT_HOME", str(home))
    monkeypatch.delenv("BAT_CACHE", raising=False)
    torch.set_num_threads(int(os.environ["BAT_TORCH_THREADS"]))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_vpred_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd-v", prediction_type="v_prediction")


def make_subject_images(folder: Path, n: int = 3, size: int = 64, seed: int = 0) -> Path:
    """n distinct synthetic photos of one 'subject': a red disc on varied backgrounds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        bg = rng.integers(0, 255, 3)
        img = np.ones((size, size, 3), np.uint8) * bg.astype(np.uint8)
        cx, cy = rng.integers(size // 3, 2 * size // 3, 2)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size // 4) ** 2
        img[disc] = (220, 30, 30)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def subject_dir(tmp_path) -> Path:
    return make_subject_images(tmp_path / "subject")


@pytest.fixture
def comps(tiny_model_dir):
    """The tiny model's components, loaded fresh for each test (tests add adapters to them)."""
    from bat_app.models import load_components

    return load_components(str(tiny_model_dir))


@pytest.fixture
def images(subject_dir):
    """Three checked user images of the synthetic subject."""
    from bat_app.images import load_user_images

    return load_user_images(subject_dir).images


# --- a tiny CLIP and a small pool (for selection and compare tests) -------------------------

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_clip_dir(folder: Path) -> Path:
    """A random open_clip CLIP (embed 32, 32 px) saved in open_clip's local folder format, so it
    loads through ``load_embedder(folder)`` like any user-supplied model."""
    import json

    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def make_pool_source(folder: Path, n: int = 40, seed: int = 0) -> Path:
    """n captioned 48 px images: discs and squares in a few colours (folder-pool layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 220, 40)}
    yy, xx = np.mgrid[:48, :48]
    for i in range(n):
        name = list(colours)[i % 4]
        shape = "disc" if (i // 4) % 2 == 0 else "square"
        img = np.full((48, 48, 3), rng.integers(0, 255, 3), np.uint8)
        cx, cy = rng.integers(16, 32, 2)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < 144) if shape == "disc" else ((abs(xx - cx) < 11) & (abs(yy - cy) < 11))
        img[mask] = colours[name]
        Image.fromarray(img).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a {name} {shape}")
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_clip_dir):
    from bat_app.pool import load_embedder

    return load_embedder(str(tiny_clip_dir), None, device="cpu")


@pytest.fixture(scope="session")
def tiny_pool_dir(tmp_path_factory, tiny_embedder) -> Path:
    from bat_app.pool import build_pool

    root = tmp_path_factory.mktemp("pool")
    build_pool(make_pool_source(root / "source"), root / "pool", tiny_embedder, batch_size=16)
    return root / "pool"
